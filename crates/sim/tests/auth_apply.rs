//! The apply-time permission check of client writes (`mvcc::Command::AsUser`),
//! on a real `mvcc::Store` (in memory), case by case: the simulator's auth
//! seeds rely on exactly these outcomes being decided by the applied state
//! alone.

use auth::{AuthCommand as A, AuthError, Perm, PermKind};
use mvcc::{
    consts, ApplyResponse, Command, EtcdError, PbCompare, PbPutRequest, PbTxnOpRequest,
    PbTxnRequest, PbTxnRequestOp, Store,
};
use std::path::Path;

fn store() -> Store {
    Store::open_backend(
        redb::backends::InMemoryBackend::new(),
        Path::new("mem:auth-apply"),
    )
    .expect("in-memory store")
}

/// Applies one command; returns its response.
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

fn put(key: &str) -> Command {
    Command::put(&PbPutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

fn as_user(user: &str, rev: u64, cmd: Command) -> Command {
    Command::AsUser {
        user: user.into(),
        auth_revision: rev,
        cmd: Box::new(cmd),
    }
}

fn refused(r: &ApplyResponse) -> Option<AuthError> {
    match r {
        ApplyResponse::Error(EtcdError::Auth(e)) => Some(*e),
        _ => None,
    }
}

/// root, a user `w` with READWRITE on `[a, b)` and `r` with READ there.
fn set_up(s: &Store) {
    let hash = auth::password::hash_with_salt("pw", auth::password::MIN_COST, [1; 16]).unwrap();
    for name in ["root", "w", "r"] {
        auth(
            s,
            A::UserAdd {
                name: name.into(),
                password_hash: hash.clone(),
                no_password: false,
            },
        );
    }
    for (role, kind) in [
        ("root", None),
        ("rw", Some(PermKind::ReadWrite)),
        ("ro", Some(PermKind::Read)),
    ] {
        auth(s, A::RoleAdd { name: role.into() });
        if let Some(kind) = kind {
            auth(
                s,
                A::RoleGrantPermission {
                    role: role.into(),
                    perm: Perm {
                        kind,
                        key: b"a".to_vec(),
                        range_end: b"b".to_vec(),
                    },
                },
            );
        }
    }
    for (user, role) in [("root", "root"), ("w", "rw"), ("r", "ro")] {
        auth(
            s,
            A::UserGrantRole {
                user: user.into(),
                role: role.into(),
            },
        );
    }
}

#[test]
fn writes_are_judged_by_the_applied_auth_state() {
    let s = store();
    set_up(&s);
    // Auth disabled: any wrapped write applies, even with no user.
    assert!(matches!(
        apply(&s, as_user("", 0, put("a1"))),
        ApplyResponse::Put(_)
    ));
    auth(&s, A::Enable);
    let rev = s.auth_state().unwrap().revision;

    assert!(matches!(
        apply(&s, as_user("w", rev, put("a1"))),
        ApplyResponse::Put(_)
    ));
    assert!(matches!(
        apply(&s, as_user("root", rev, put("zz"))),
        ApplyResponse::Put(_)
    ));
    assert_eq!(
        refused(&apply(&s, as_user("r", rev, put("a1")))),
        Some(AuthError::PermissionDenied)
    );
    assert_eq!(
        refused(&apply(&s, as_user("w", rev, put("c")))),
        Some(AuthError::PermissionDenied),
        "outside the permitted range"
    );
    assert_eq!(
        refused(&apply(&s, as_user("nobody", rev, put("a1")))),
        Some(AuthError::PermissionDenied)
    );
    // Judged where auth looked disabled (not applied there yet): no user.
    assert_eq!(
        refused(&apply(&s, as_user("", rev, put("a1")))),
        Some(AuthError::UserEmpty)
    );
    // Judged before the last auth change: stale, whoever the user.
    assert_eq!(
        refused(&apply(&s, as_user("w", rev - 1, put("a1")))),
        Some(AuthError::AuthOldRevision)
    );
    // A txn: a compare outside READ, or a put in the failure branch outside
    // WRITE, refuses the whole txn.
    let txn = |cmp_key: &str, else_put: &str| {
        Command::txn(&PbTxnRequest {
            compare: vec![PbCompare {
                result: consts::CMP_EQUAL,
                target: consts::TARGET_VERSION,
                key: cmp_key.into(),
                ..Default::default()
            }],
            success: vec![],
            failure: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                    key: else_put.into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
        })
    };
    assert!(matches!(
        apply(&s, as_user("w", rev, txn("a2", "a3"))),
        ApplyResponse::Txn(_)
    ));
    assert_eq!(
        refused(&apply(&s, as_user("w", rev, txn("q", "a3")))),
        Some(AuthError::PermissionDenied)
    );
    assert_eq!(
        refused(&apply(&s, as_user("r", rev, txn("a2", "a3")))),
        Some(AuthError::PermissionDenied)
    );
    // A refusal changes nothing: the revision is where the applied writes left it.
    let before = s.current_revision();
    assert!(refused(&apply(&s, as_user("r", rev, put("a9")))).is_some());
    assert_eq!(s.current_revision(), before);
    // Revoking the permission takes effect at apply, whatever the proposer saw.
    auth(
        &s,
        A::RoleRevokePermission {
            role: "rw".into(),
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        },
    );
    let now = s.auth_state().unwrap().revision;
    assert_eq!(
        refused(&apply(&s, as_user("w", now, put("a1")))),
        Some(AuthError::PermissionDenied)
    );
    // Auth disabled again: open.
    auth(&s, A::Disable);
    assert!(matches!(
        apply(&s, as_user("r", 0, put("a1"))),
        ApplyResponse::Put(_)
    ));
}

/// An auth change and a write in one applied batch (one Raft entry, or
/// entries applied together): the write is judged by the state after the
/// change, not by the state the batch started with.
#[test]
fn a_revoke_earlier_in_the_same_batch_refuses_the_write() {
    let s = store();
    set_up(&s);
    auth(&s, A::Enable);
    let rev = s.auth_state().unwrap().revision;
    let revoke = Command::Auth(A::RoleRevokePermission {
        role: "rw".into(),
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
    });
    // Judged before the revoke (at `rev`): stale once it is applied.
    let out = s
        .apply_batch(
            &[Some(revoke), Some(as_user("w", rev, put("a1")))],
            b"m",
            false,
        )
        .unwrap();
    let put_response = &out[1].as_ref().unwrap().response;
    assert_eq!(refused(put_response), Some(AuthError::AuthOldRevision));
    // At the new revision it is judged by the permissions: none left.
    let now = s.auth_state().unwrap().revision;
    assert_eq!(now, rev + 1);
    assert_eq!(
        refused(&apply(&s, as_user("w", now, put("a1")))),
        Some(AuthError::PermissionDenied)
    );
}

#[test]
fn an_as_user_entry_wraps_only_a_client_write() {
    let s = store();
    let bad = Command::AsUser {
        user: "w".into(),
        auth_revision: 1,
        cmd: Box::new(Command::Compact { revision: 1 }),
    };
    let err = s.apply_batch(&[Some(bad)], b"m", false).unwrap_err();
    assert!(
        err.to_string().contains("AsUser"),
        "the error names the malformed entry: {err}"
    );
}
