//! Simple tokens (`--auth-token simple`, the default) work across members,
//! as etcd's do: Authenticate on one member goes through Raft and every
//! member installs the token on apply. Checked with gRPC calls carrying the
//! token to each member in turn, and with Debian's etcdctl spreading its
//! requests over all three endpoints. Expiry is per member, from its own
//! install or last use; a password change, a user's deletion and
//! `auth disable` end tokens everywhere; a restarted member holds none.

mod support;

use std::time::{Duration, Instant};

use etcd_client::proto::{
    PbAuthenticateRequest, PbAuthenticateResponse, PbPutRequest, PbPutResponse, PbRangeResponse,
};
use support::grpc::*;
use support::*;
use tonic::Code;

/// `--auth-token-ttl` of the test clusters, seconds: short, so expiry is
/// seen quickly, long enough for a few calls in between.
const TTL_S: u64 = 4;

async fn login(url: &str, user: &str, password: &str) -> String {
    let r: PbAuthenticateResponse = call(
        url,
        AUTHENTICATE,
        PbAuthenticateRequest {
            name: user.into(),
            password: password.into(),
        },
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("Authenticate {user} on {url}: {e}"));
    // etcd's simple token shape: `<random>.<n>`.
    assert_eq!(r.token.split('.').count(), 2, "a simple token: {}", r.token);
    r.token
}

async fn get(url: &str, token: &str) -> Result<PbRangeResponse, tonic::Status> {
    call(url, RANGE, range("k"), Some(token)).await
}

/// A token works on any member at once: one that has not applied its entry
/// yet catches up (a read barrier) before judging it.
async fn accepted_soon(url: &str, token: &str) -> PbRangeResponse {
    get(url, token)
        .await
        .unwrap_or_else(|e| panic!("token refused on {url}: {e}"))
}

fn assert_invalid(r: Result<PbRangeResponse, tonic::Status>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token"),
        "{what}"
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn auth_cluster() -> Cluster {
    let ttl = TTL_S.to_string();
    let c = Cluster::start(3, &["--bcrypt-cost", "4", "--auth-token-ttl", &ttl]);
    c.ctl(&["user", "add", "root:rootpw"]);
    c.ctl(&["user", "add", "alice:alicepw"]);
    c.ctl(&["role", "add", "k-rw"]);
    c.ctl(&["role", "grant-permission", "k-rw", "readwrite", "k"]);
    c.ctl(&["user", "grant-role", "alice", "k-rw"]);
    c.ctl(&["put", "k", "v"]);
    c.ctl(&["auth", "enable"]);
    c
}

#[test]
fn a_simple_token_from_one_member_works_on_the_others_and_expires_per_member() {
    let c = auth_cluster();
    let urls = c.endpoint_list();
    rt().block_on(async {
        let token = login(&urls[0], "alice", "alicepw").await;
        // Issued by member 1, used on members 2 and 3: reads and writes.
        for url in &urls[1..] {
            assert_eq!(accepted_soon(url, &token).await.kvs[0].value, b"v");
        }
        let _: PbPutResponse = call(
            &urls[2],
            PUT,
            PbPutRequest {
                key: b"k".to_vec(),
                value: b"w".to_vec(),
                ..Default::default()
            },
            Some(&token),
        )
        .await
        .unwrap();
        // Permissions still apply on every member.
        let e = call::<_, PbRangeResponse>(&urls[1], RANGE, range("other"), Some(&token))
            .await
            .unwrap_err();
        assert_eq!(e.message(), "etcdserver: permission denied");
        // A token never issued is refused everywhere.
        for url in &urls {
            assert_invalid(get(url, "AAAAAAAAAAAAAAAA.7").await, "an unknown token");
        }

        // Per member expiry, refreshed by use on that member: keep using the
        // token on member 2 only for longer than the TTL.
        let ttl = Duration::from_secs(TTL_S);
        let last_use_elsewhere = Instant::now();
        while last_use_elsewhere.elapsed() < ttl + Duration::from_secs(1) {
            get(&urls[1], &token)
                .await
                .expect("in use on member 2: refreshed there");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Members 1 and 3 last saw it more than a TTL ago.
        assert_invalid(get(&urls[0], &token).await, "expired on member 1");
        assert_invalid(get(&urls[2], &token).await, "expired on member 3");
        get(&urls[1], &token)
            .await
            .expect("still alive on member 2");
        // Left alone for a TTL, it expires there too. Time is what is
        // tested here: any probe before then would refresh it.
        tokio::time::sleep(ttl + Duration::from_millis(500)).await;
        assert_invalid(get(&urls[1], &token).await, "expired on member 2");
    });
}

#[test]
fn password_change_deletion_disable_and_restart_end_simple_tokens() {
    let mut c = auth_cluster();
    let urls = c.endpoint_list();
    let rt = rt();
    rt.block_on(async {
        // A password change through member 1 ends a token issued by member 3
        // on every member.
        let token = login(&urls[2], "alice", "alicepw").await;
        for url in &urls {
            accepted_soon(url, &token).await;
        }
        let root = login(&urls[0], "root", "rootpw").await;
        let _: etcd_client::proto::PbAuthUserChangePasswordResponse = call(
            &urls[0],
            "/etcdserverpb.Auth/UserChangePassword",
            etcd_client::proto::PbAuthUserChangePasswordRequest {
                name: "alice".into(),
                password: "newpw".into(),
                ..Default::default()
            },
            Some(&root),
        )
        .await
        .unwrap();
        for url in &urls {
            let deadline = Instant::now() + Duration::from_secs(5);
            while get(url, &token).await.is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "{url} still accepts alice's token after her password changed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_invalid(get(url, &token).await, "after the password change");
        }
        // The old password no longer logs in; the new one does.
        let e = call::<_, PbAuthenticateResponse>(
            &urls[1],
            AUTHENTICATE,
            PbAuthenticateRequest {
                name: "alice".into(),
                password: "alicepw".into(),
            },
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.message(),
            "etcdserver: authentication failed, invalid user ID or password"
        );
        let token = login(&urls[1], "alice", "newpw").await;
        for url in &urls {
            accepted_soon(url, &token).await;
        }
    });

    // A restarted member holds no simple tokens (as etcd): the root token
    // issued before still works on the others, not on it.
    let root = rt.block_on(login(&urls[0], "root", "rootpw"));
    rt.block_on(async {
        for url in &urls {
            accepted_soon(url, &root).await;
        }
    });
    let token = c.token.clone();
    c.members[1].kill9();
    c.members[1].spawn(&token);
    c.wait_healthy(&[1]);
    rt.block_on(async {
        assert_invalid(get(&urls[1], &root).await, "restarted member 2");
        get(&urls[0], &root).await.expect("member 1 still knows it");
        get(&urls[2], &root).await.expect("member 3 still knows it");
        // A token issued after the restart reaches the restarted member.
        let fresh = login(&urls[2], "root", "rootpw").await;
        accepted_soon(&urls[1], &fresh).await;

        // AuthDisable clears every member's tokens: after re-enabling, the
        // old ones are unknown everywhere.
        let _: etcd_client::proto::PbAuthDisableResponse = call(
            &urls[0],
            "/etcdserverpb.Auth/AuthDisable",
            etcd_client::proto::PbAuthDisableRequest {},
            Some(&fresh),
        )
        .await
        .unwrap();
    });
    c.ctl(&["auth", "enable"]);
    rt.block_on(async {
        for url in &urls {
            assert_invalid(get(url, &root).await, "after auth disable and enable");
        }
        // A deleted user's tokens die on every member.
        let alice = login(&urls[0], "alice", "newpw").await;
        let root = login(&urls[0], "root", "rootpw").await;
        for url in &urls {
            accepted_soon(url, &alice).await;
        }
        let _: etcd_client::proto::PbAuthUserDeleteResponse = call(
            &urls[2],
            "/etcdserverpb.Auth/UserDelete",
            etcd_client::proto::PbAuthUserDeleteRequest {
                name: "alice".into(),
            },
            Some(&root),
        )
        .await
        .unwrap();
        for url in &urls {
            let deadline = Instant::now() + Duration::from_secs(5);
            while get(url, &alice).await.is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "{url} accepts a deleted user's token"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
}

#[test]
fn etcdctl_over_three_endpoints_with_simple_tokens() {
    let c = auth_cluster();
    // etcdctl (clientv3) authenticates on one endpoint, then spreads its
    // requests over all three with that token: before tokens went through
    // Raft this failed with `etcdserver: invalid auth token` whenever a
    // request reached another member.
    let all = c.endpoints();
    for i in 0..12 {
        let v = format!("v{i}");
        let out = c.etcdctl_at(&all, &["--user=alice:alicepw", "put", "k", &v]);
        assert!(
            out.status.success(),
            "put #{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = c.etcdctl_at(
            &all,
            &[
                "--user=alice:alicepw",
                "get",
                "k",
                "--print-value-only",
                "--consistency=l",
            ],
        );
        assert!(
            out.status.success(),
            "get #{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), v);
    }
    // One member at a time, too.
    for url in c.endpoint_list() {
        let out = c.etcdctl_at(&url, &["--user=alice:alicepw", "get", "k"]);
        assert!(out.status.success(), "{url}: {:?}", out);
    }
}
