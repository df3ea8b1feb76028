//! etcd's `checkLeasePuts` at apply time (`Command::AsUser`): a user may
//! revoke a lease, or attach it to a key (by a put, or a put inside a
//! transaction), only with WRITE on every key attached to the lease when
//! the entry is applied — revoking deletes those keys. Decided by the
//! replicated state alone, so every member refuses alike.

use auth::{AuthCommand as A, AuthError, Perm, PermKind};
use mvcc::{
    ApplyResponse, Command, EtcdError, PbPutRequest, PbRangeRequest, PbTxnOpRequest, PbTxnRequest,
    PbTxnRequestOp, Store,
};
use std::path::Path;

fn store() -> Store {
    Store::open_backend(
        redb::backends::InMemoryBackend::new(),
        Path::new("mem:auth-lease-puts"),
    )
    .expect("in-memory store")
}

fn apply(s: &Store, cmd: Command) -> ApplyResponse {
    let out = s.apply_batch(&[Some(cmd)], b"m", false).expect("apply");
    out.into_iter()
        .next()
        .flatten()
        .expect("one result")
        .response
}

fn auth(s: &Store, cmd: A) {
    match apply(s, Command::Auth(cmd.clone())) {
        ApplyResponse::Auth { .. } => {}
        other => panic!("{cmd:?}: {other:?}"),
    }
}

fn put_req(key: &str, lease: i64) -> PbPutRequest {
    PbPutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    }
}

fn as_user(s: &Store, user: &str, cmd: Command) -> Command {
    Command::AsUser {
        user: user.into(),
        auth_revision: s.auth_state().unwrap().revision,
        cmd: Box::new(cmd),
    }
}

fn refused(r: &ApplyResponse) -> Option<AuthError> {
    match r {
        ApplyResponse::Error(EtcdError::Auth(e)) => Some(*e),
        _ => None,
    }
}

fn exists(s: &Store, key: &str) -> bool {
    let r = s
        .range(&PbRangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .unwrap();
    r.count == 1
}

/// root, and `w` with READWRITE on `[a, b)` only; auth enabled.
fn set_up(s: &Store) {
    for name in ["root", "w"] {
        auth(
            s,
            A::UserAdd {
                name: name.into(),
                password_hash: "h".into(),
                no_password: false,
            },
        );
    }
    auth(
        s,
        A::RoleAdd {
            name: "root".into(),
        },
    );
    auth(s, A::RoleAdd { name: "rw".into() });
    auth(
        s,
        A::RoleGrantPermission {
            role: "rw".into(),
            perm: Perm {
                kind: PermKind::ReadWrite,
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            },
        },
    );
    for (user, role) in [("root", "root"), ("w", "rw")] {
        auth(
            s,
            A::UserGrantRole {
                user: user.into(),
                role: role.into(),
            },
        );
    }
    auth(s, A::Enable);
}

fn grant(s: &Store, id: i64) {
    assert!(matches!(
        apply(
            s,
            Command::LeaseGrant {
                id,
                ttl_seconds: 600
            }
        ),
        ApplyResponse::LeaseGrant(_)
    ));
}

#[test]
fn revoking_or_reusing_a_lease_needs_write_on_every_attached_key() {
    let s = store();
    set_up(&s);
    // Lease 1 holds `a1` (w may write it) and `z` (w may not); lease 2
    // holds only `a2`.
    // (w attaches first: once `z` is on lease 1, w may no longer.)
    grant(&s, 1);
    grant(&s, 2);
    for (key, lease) in [("a1", 1), ("a2", 2)] {
        let put = Command::put(&put_req(key, lease));
        assert!(matches!(
            apply(&s, as_user(&s, "w", put)),
            ApplyResponse::Put(_)
        ));
    }
    let put = Command::put(&put_req("z", 1));
    assert!(matches!(
        apply(&s, as_user(&s, "root", put)),
        ApplyResponse::Put(_)
    ));

    // w cannot revoke lease 1: it would delete `z`.
    let revoke = as_user(&s, "w", Command::LeaseRevoke { id: 1 });
    assert_eq!(
        refused(&apply(&s, revoke)),
        Some(AuthError::PermissionDenied)
    );
    assert!(s.lease(1).is_some() && exists(&s, "z") && exists(&s, "a1"));

    // Nor attach lease 1 to a key it may write, by a put or inside a txn:
    // whoever could then revoke it would delete that key too.
    let put = Command::put(&put_req("a3", 1));
    assert_eq!(
        refused(&apply(&s, as_user(&s, "w", put))),
        Some(AuthError::PermissionDenied)
    );
    let nested = PbTxnRequest {
        success: vec![PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestPut(put_req("a3", 1))),
        }],
        ..Default::default()
    };
    let txn = Command::txn(&PbTxnRequest {
        failure: vec![PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestTxn(nested)),
        }],
        ..Default::default()
    });
    assert_eq!(
        refused(&apply(&s, as_user(&s, "w", txn))),
        Some(AuthError::PermissionDenied)
    );
    assert!(!exists(&s, "a3"));

    // Lease 2 holds only keys w may write: w attaches to it and revokes it.
    let put = Command::put(&put_req("a3", 2));
    assert!(matches!(
        apply(&s, as_user(&s, "w", put)),
        ApplyResponse::Put(_)
    ));
    assert!(matches!(
        apply(&s, as_user(&s, "w", Command::LeaseRevoke { id: 2 })),
        ApplyResponse::LeaseRevoke(_)
    ));
    assert!(s.lease(2).is_none() && !exists(&s, "a2") && !exists(&s, "a3"));

    // An unknown lease is etcd's "lease not found", not a permission error.
    assert_eq!(
        apply(&s, as_user(&s, "w", Command::LeaseRevoke { id: 99 })),
        ApplyResponse::Error(EtcdError::LeaseNotFound)
    );
    // No user (auth enabled since the proposal was judged): refused.
    let anonymous = Command::AsUser {
        user: String::new(),
        auth_revision: s.auth_state().unwrap().revision,
        cmd: Box::new(Command::LeaseRevoke { id: 1 }),
    };
    assert_eq!(refused(&apply(&s, anonymous)), Some(AuthError::UserEmpty));
    // root may revoke anything.
    assert!(matches!(
        apply(&s, as_user(&s, "root", Command::LeaseRevoke { id: 1 })),
        ApplyResponse::LeaseRevoke(_)
    ));
    assert!(s.lease(1).is_none() && !exists(&s, "z") && !exists(&s, "a1"));
}

#[test]
fn with_auth_disabled_a_wrapped_revoke_applies() {
    let s = store();
    grant(&s, 7);
    assert!(matches!(
        apply(&s, Command::put(&put_req("k", 7))),
        ApplyResponse::Put(_)
    ));
    let revoke = Command::AsUser {
        user: String::new(),
        auth_revision: 0,
        cmd: Box::new(Command::LeaseRevoke { id: 7 }),
    };
    assert!(matches!(apply(&s, revoke), ApplyResponse::LeaseRevoke(_)));
    assert!(!exists(&s, "k"));
}
