//! The auth state is part of the replicated state machine: applied from
//! `Command::Auth`, deterministic errors, no KV revision bump, durable
//! across reopen, carried by snapshots, cache dropped on change.

use auth::{AuthCommand, AuthError, Perm, PermKind};
use mvcc::{ApplyResponse, Command, EtcdError, Store};

fn apply(s: &Store, cmd: AuthCommand) -> ApplyResponse {
    let out = s
        .apply_batch(&[Some(Command::Auth(cmd))], b"m", true)
        .unwrap();
    out[0].clone().unwrap().response
}

#[test]
fn auth_commands_apply_persist_and_travel_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("a.redb")).unwrap();
    let rev = s.current_revision();
    assert_eq!(
        apply(&s, AuthCommand::Enable),
        ApplyResponse::Error(EtcdError::Auth(AuthError::RootUserNotExist))
    );
    assert!(matches!(
        apply(
            &s,
            AuthCommand::UserAdd {
                name: "root".into(),
                password_hash: "h".into(),
                no_password: false
            }
        ),
        ApplyResponse::Auth { auth_revision: 1 }
    ));
    // Cached state is dropped on change.
    assert!(s.auth_state().unwrap().users.contains_key("root"));
    apply(
        &s,
        AuthCommand::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        },
    );
    apply(&s, AuthCommand::RoleAdd { name: "r".into() });
    apply(
        &s,
        AuthCommand::RoleGrantPermission {
            role: "r".into(),
            perm: Perm {
                kind: PermKind::Read,
                key: b"/a/".to_vec(),
                range_end: b"/a0".to_vec(),
            },
        },
    );
    assert!(matches!(
        apply(&s, AuthCommand::Enable),
        ApplyResponse::Auth { .. }
    ));
    let state = s.auth_state().unwrap();
    assert!(state.enabled && state.is_admin("root"));
    assert_eq!(
        s.current_revision(),
        rev,
        "auth changes do not bump the KV revision"
    );
    // Error tags and messages round-trip through the encoded response.
    let e = ApplyResponse::Error(EtcdError::Auth(AuthError::UserAlreadyExist));
    assert_eq!(ApplyResponse::decode(&e.encode()).unwrap(), e);
    assert_eq!(
        EtcdError::Auth(AuthError::PermissionDenied).message(),
        "etcdserver: permission denied"
    );

    // Snapshot into a fresh store.
    let mut snap = Vec::new();
    s.write_snapshot(&mut snap).unwrap();
    let t = Store::open(&dir.path().join("b.redb")).unwrap();
    assert!(!t.auth_state().unwrap().enabled);
    t.install_snapshot(&mut snap.as_slice()).unwrap();
    assert_eq!(*t.auth_state().unwrap(), *state);

    // Reopen.
    drop(s);
    let s = Store::open(&dir.path().join("a.redb")).unwrap();
    assert_eq!(*s.auth_state().unwrap(), *state);
}
