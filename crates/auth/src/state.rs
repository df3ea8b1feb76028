//! The replicated auth state and the commands that change it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The user that must exist, with the [`ROOT_ROLE`], before auth can be enabled.
pub const ROOT_USER: &str = "root";
/// The role that grants everything, including auth management, maintenance
/// and membership changes.
pub const ROOT_ROLE: &str = "root";

/// Bounds on the replicated state (etcd has none; a member must not be made
/// to hold an unbounded auth state in memory on every request).
#[derive(Clone, Copy, Debug)]
pub struct AuthLimits;

impl AuthLimits {
    pub const MAX_USERS: usize = 10_000;
    pub const MAX_ROLES: usize = 10_000;
    pub const MAX_ROLES_PER_USER: usize = 1_000;
    pub const MAX_PERMS_PER_ROLE: usize = 1_000;
    /// Longest user or role name, in bytes.
    pub const MAX_NAME_BYTES: usize = 1_024;
    /// Longest key or range end of a permission, in bytes.
    pub const MAX_PERM_KEY_BYTES: usize = 64 * 1024;
}

/// etcd's `authpb.Permission.Type`: READ = 0, WRITE = 1, READWRITE = 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    pub fn from_i32(v: i32) -> Option<PermKind> {
        match v {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }
    pub fn to_i32(self) -> i32 {
        match self {
            PermKind::Read => 0,
            PermKind::Write => 1,
            PermKind::ReadWrite => 2,
        }
    }
    /// Whether a permission of this kind allows an access of kind `want`
    /// (`Read` or `Write`).
    fn allows(self, want: PermKind) -> bool {
        self == PermKind::ReadWrite || self == want
    }
}

/// A permission on a key (`range_end` empty) or on `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    pub kind: PermKind,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// bcrypt hash (empty for a user created with `no_password`).
    pub password_hash: String,
    pub roles: BTreeSet<String>,
    /// Created with `--no-password`: cannot authenticate with a password.
    pub no_password: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Sorted by `(key, range_end)`; at most one entry per `(key, range_end)`.
    pub perms: Vec<Perm>,
}

/// Everything auth that is replicated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// etcd's auth revision: bumped by every change that succeeds.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

/// A change to the auth state, proposed through Raft. Passwords travel only
/// as bcrypt hashes, computed by the member that received the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Enable,
    Disable,
    UserAdd {
        name: String,
        password_hash: String,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        perm: Perm,
    },
    RoleRevokePermission {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
    /// etcd's `InternalAuthenticateRequest`: a member checked `name`'s
    /// password at auth revision `checked_revision` and issued a simple
    /// token; every member installs it on apply (in memory, see
    /// `token::Tokens::install`). Only the token's SHA-256 travels, so the
    /// Raft log never holds a usable token. Changes nothing in the
    /// replicated state and bumps no revision ([`AuthCommand::changes_state`]).
    /// Last in the enum so entries written before it existed still decode.
    Authenticate {
        name: String,
        #[serde(with = "serde_bytes")]
        token_hash: Vec<u8>,
        checked_revision: u64,
        /// The issuer's wall clock at issue (Unix ms): a member applying the
        /// entry more than a TTL later (it lagged) does not install a token
        /// that has expired everywhere else (`token::Tokens::install`).
        issued_unix_ms: u64,
    },
}

impl AuthCommand {
    /// Whether applying this command (when it succeeds) changes the
    /// replicated state, which must then be stored and its revision bumped.
    /// `Authenticate` only validates.
    pub fn changes_state(&self) -> bool {
        !matches!(self, AuthCommand::Authenticate { .. })
    }
}

/// etcd's auth errors (`rpctypes`), with their exact messages. The gRPC
/// code of each is given by [`AuthError::grpc_code`] (tonic's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// Not etcd's (etcd has no bounds): a bound of [`AuthLimits`] was hit.
    #[error("etcdserver: too many users, roles or permissions, or a name or key too long")]
    LimitExceeded,
}

impl AuthError {
    /// The gRPC status code etcd answers with (numbering of `google.rpc.Code`).
    pub fn grpc_code(&self) -> i32 {
        const INVALID_ARGUMENT: i32 = 3;
        const PERMISSION_DENIED: i32 = 7;
        const RESOURCE_EXHAUSTED: i32 = 8;
        const FAILED_PRECONDITION: i32 = 9;
        const UNAUTHENTICATED: i32 = 16;
        match self {
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::InvalidAuthMgmt
            | AuthError::AuthOldRevision => INVALID_ARGUMENT,
            AuthError::PermissionDenied => PERMISSION_DENIED,
            AuthError::InvalidAuthToken => UNAUTHENTICATED,
            AuthError::LimitExceeded => RESOURCE_EXHAUSTED,
            AuthError::RootUserNotExist
            | AuthError::RootRoleNotExist
            | AuthError::UserAlreadyExist
            | AuthError::UserNotFound
            | AuthError::RoleAlreadyExist
            | AuthError::RoleNotFound
            | AuthError::RoleNotGranted
            | AuthError::PermissionNotGranted
            | AuthError::AuthNotEnabled => FAILED_PRECONDITION,
        }
    }
}

/// An end of an interval of keys: `None` is "past every key".
type End = Option<Vec<u8>>;

/// `[key, range_end)` in etcd's conventions, as a half-open interval.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, End) {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        (key.to_vec(), Some(end))
    } else if range_end == [0] {
        (key.to_vec(), None)
    } else if range_end <= key {
        // An empty range: etcd treats it as the single key for checks.
        interval(key, &[])
    } else {
        (key.to_vec(), Some(range_end.to_vec()))
    }
}

fn end_ge(a: &End, b: &End) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    }
}

impl AuthState {
    /// Whether `user` exists and has the root role.
    pub fn is_admin(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.contains(ROOT_ROLE))
    }

    /// Whether `user` may access `[key, range_end)` for `want` (`Read` or
    /// `Write`): the union of its matching permissions must cover the range.
    pub fn permitted(&self, user: &str, key: &[u8], range_end: &[u8], want: PermKind) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.contains(ROOT_ROLE) {
            return true;
        }
        let mut ivs: Vec<(Vec<u8>, End)> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter())
            .filter(|p| p.kind.allows(want))
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        ivs.sort();
        let (start, end) = interval(key, range_end);
        let mut covered: Vec<u8> = start; // everything below this is covered
        for (s, e) in ivs {
            if s > covered {
                break;
            }
            match e {
                None => return true,
                Some(e) => {
                    if e > covered {
                        covered = e;
                    }
                }
            }
        }
        end_ge(&Some(covered), &end)
    }

    /// [`AuthState::permitted`] as etcd's error.
    pub fn check(
        &self,
        user: &str,
        key: &[u8],
        range_end: &[u8],
        want: PermKind,
    ) -> Result<(), AuthError> {
        if self.permitted(user, key, range_end, want) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Apply one command. Deterministic; on error nothing changes. Every
    /// success bumps the auth revision.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Result<(), AuthError> {
        fn name_ok(n: &str) -> Result<(), AuthError> {
            if n.len() > AuthLimits::MAX_NAME_BYTES {
                Err(AuthError::LimitExceeded)
            } else {
                Ok(())
            }
        }
        match cmd {
            AuthCommand::Authenticate {
                name,
                token_hash,
                checked_revision,
                ..
            } => {
                // etcd's apply-time checks: auth still on, the user still
                // exists and may log in with a password. The password was
                // checked at `checked_revision`; any auth change since (a
                // new password, a deleted user) makes that check stale, so
                // the proposer checks again (etcd's retry on a stale
                // revision).
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                if token_hash.len() != crate::token::TOKEN_HASH_BYTES {
                    return Err(AuthError::InvalidAuthToken);
                }
                match self.users.get(name) {
                    Some(u) if !u.no_password => {}
                    _ => return Err(AuthError::AuthFailed),
                }
                if *checked_revision != self.revision {
                    return Err(AuthError::AuthOldRevision);
                }
                // Validation only: no change, no revision bump.
                return Ok(());
            }
            AuthCommand::Enable => {
                if self.enabled {
                    return Ok(()); // etcd: enabling twice is a no-op
                }
                let root = self
                    .users
                    .get(ROOT_USER)
                    .ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT_ROLE) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
            AuthCommand::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                name_ok(name)?;
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                if self.users.len() >= AuthLimits::MAX_USERS {
                    return Err(AuthError::LimitExceeded);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        roles: BTreeSet::new(),
                        no_password: *no_password,
                    },
                );
            }
            AuthCommand::UserDelete { name } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                let u = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                u.password_hash = password_hash.clone();
                u.no_password = false;
            }
            AuthCommand::UserGrantRole { user, role } => {
                if user.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if u.roles.contains(role) {
                    return Ok(()); // etcd: granting twice succeeds
                }
                if u.roles.len() >= AuthLimits::MAX_ROLES_PER_USER {
                    return Err(AuthError::LimitExceeded);
                }
                u.roles.insert(role.clone());
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if user.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                name_ok(name)?;
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                if self.roles.len() >= AuthLimits::MAX_ROLES {
                    return Err(AuthError::LimitExceeded);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleDelete { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.enabled && name == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                // etcd removes the role from every user that had it.
                for u in self.users.values_mut() {
                    u.roles.remove(name);
                }
            }
            AuthCommand::RoleGrantPermission { role, perm } => {
                if role.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if perm.key.len() > AuthLimits::MAX_PERM_KEY_BYTES
                    || perm.range_end.len() > AuthLimits::MAX_PERM_KEY_BYTES
                {
                    return Err(AuthError::LimitExceeded);
                }
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                match r
                    .perms
                    .binary_search_by(|p| (&p.key, &p.range_end).cmp(&(&perm.key, &perm.range_end)))
                {
                    Ok(i) => r.perms[i].kind = perm.kind,
                    Err(i) => {
                        if r.perms.len() >= AuthLimits::MAX_PERMS_PER_ROLE {
                            return Err(AuthError::LimitExceeded);
                        }
                        r.perms.insert(i, perm.clone());
                    }
                }
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                if role.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.perms.len();
                r.perms
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        self.revision += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(perms: &[(PermKind, &[u8], &[u8])]) -> AuthState {
        let mut s = AuthState::default();
        s.apply(&AuthCommand::RoleAdd { name: "r".into() }).unwrap();
        for (k, key, end) in perms {
            s.apply(&AuthCommand::RoleGrantPermission {
                role: "r".into(),
                perm: Perm {
                    kind: *k,
                    key: key.to_vec(),
                    range_end: end.to_vec(),
                },
            })
            .unwrap();
        }
        s.apply(&AuthCommand::UserAdd {
            name: "u".into(),
            password_hash: String::new(),
            no_password: true,
        })
        .unwrap();
        s.apply(&AuthCommand::UserGrantRole {
            user: "u".into(),
            role: "r".into(),
        })
        .unwrap();
        s
    }

    #[test]
    fn prefix_read_permission() {
        let s = state_with(&[(PermKind::Read, b"/app/", b"/app0")]);
        assert!(s.permitted("u", b"/app/x", b"", PermKind::Read));
        assert!(s.permitted("u", b"/app/", b"/app0", PermKind::Read));
        assert!(!s.permitted("u", b"/app/", b"/app1", PermKind::Read));
        assert!(!s.permitted("u", b"/app/x", b"", PermKind::Write));
        assert!(!s.permitted("u", b"/other", b"", PermKind::Read));
        assert!(!s.permitted("u", b"", b"\0", PermKind::Read));
        assert!(!s.permitted("nobody", b"/app/x", b"", PermKind::Read));
    }

    #[test]
    fn union_of_ranges_covers() {
        let s = state_with(&[
            (PermKind::ReadWrite, b"a", b"c"),
            (PermKind::Read, b"c", b"e"),
            (PermKind::Write, b"k", b""),
            (PermKind::Read, b"x", b"\0"),
        ]);
        assert!(s.permitted("u", b"a", b"e", PermKind::Read));
        assert!(!s.permitted("u", b"a", b"e", PermKind::Write));
        assert!(s.permitted("u", b"k", b"", PermKind::Write));
        assert!(!s.permitted("u", b"k", b"l", PermKind::Write));
        assert!(s.permitted("u", b"y", b"\0", PermKind::Read));
        assert!(s.permitted("u", b"zzzz", b"", PermKind::Read));
    }

    #[test]
    fn enable_needs_root_with_root_role() {
        let mut s = AuthState::default();
        assert_eq!(
            s.apply(&AuthCommand::Enable),
            Err(AuthError::RootUserNotExist)
        );
        s.apply(&AuthCommand::UserAdd {
            name: "root".into(),
            password_hash: "h".into(),
            no_password: false,
        })
        .unwrap();
        assert_eq!(
            s.apply(&AuthCommand::Enable),
            Err(AuthError::RootRoleNotExist)
        );
        s.apply(&AuthCommand::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        })
        .unwrap();
        let rev = s.revision;
        s.apply(&AuthCommand::Enable).unwrap();
        assert!(s.enabled && s.revision == rev + 1);
        assert!(s.is_admin("root"));
        assert_eq!(
            s.apply(&AuthCommand::UserDelete {
                name: "root".into()
            }),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserAdd {
                name: "root".into(),
                password_hash: String::new(),
                no_password: false
            }),
            Err(AuthError::UserAlreadyExist)
        );
        assert_eq!(
            AuthError::UserAlreadyExist.to_string(),
            "etcdserver: user name already exists"
        );
    }

    #[test]
    fn revoke_permission_needs_exact_match() {
        let mut s = state_with(&[(PermKind::Read, b"/a/", b"/a0")]);
        assert_eq!(
            s.apply(&AuthCommand::RoleRevokePermission {
                role: "r".into(),
                key: b"/a/".to_vec(),
                range_end: vec![]
            }),
            Err(AuthError::PermissionNotGranted)
        );
        s.apply(&AuthCommand::RoleRevokePermission {
            role: "r".into(),
            key: b"/a/".to_vec(),
            range_end: b"/a0".to_vec(),
        })
        .unwrap();
        assert!(!s.permitted("u", b"/a/x", b"", PermKind::Read));
        s.apply(&AuthCommand::RoleDelete { name: "r".into() })
            .unwrap();
        assert!(s.users["u"].roles.is_empty());
    }

    #[test]
    fn authenticate_validates_without_changing_anything() {
        let mut s = AuthState::default();
        let login = |name: &str, rev: u64| AuthCommand::Authenticate {
            name: name.into(),
            token_hash: vec![7; crate::token::TOKEN_HASH_BYTES],
            checked_revision: rev,
            issued_unix_ms: 0,
        };
        assert_eq!(s.apply(&login("root", 0)), Err(AuthError::AuthNotEnabled));
        s.apply(&AuthCommand::UserAdd {
            name: "root".into(),
            password_hash: "h".into(),
            no_password: false,
        })
        .unwrap();
        s.apply(&AuthCommand::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        })
        .unwrap();
        s.apply(&AuthCommand::UserAdd {
            name: "cert-only".into(),
            password_hash: String::new(),
            no_password: true,
        })
        .unwrap();
        s.apply(&AuthCommand::Enable).unwrap();
        let before = s.clone();
        assert!(!login("root", s.revision).changes_state());
        s.apply(&login("root", s.revision)).unwrap();
        assert_eq!(s, before, "no change, no revision bump");
        // Stale check (auth changed since the password was checked), a
        // missing or password-less user, a malformed hash: refused.
        assert_eq!(
            s.apply(&login("root", s.revision - 1)),
            Err(AuthError::AuthOldRevision)
        );
        assert_eq!(
            s.apply(&login("nobody", s.revision)),
            Err(AuthError::AuthFailed)
        );
        assert_eq!(
            s.apply(&login("cert-only", s.revision)),
            Err(AuthError::AuthFailed)
        );
        assert_eq!(
            s.apply(&AuthCommand::Authenticate {
                name: "root".into(),
                token_hash: vec![1, 2, 3],
                checked_revision: s.revision,
                issued_unix_ms: 0,
            }),
            Err(AuthError::InvalidAuthToken)
        );
        assert_eq!(s, before);
    }
}
