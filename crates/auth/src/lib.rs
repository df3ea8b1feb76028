//! # auth — etcd v3's authentication and role-based access control
//!
//! Three independent pieces, none of which does I/O on its own:
//!
//! * [`AuthState`] and [`AuthCommand`] — the replicated part: whether auth is
//!   enabled, users (bcrypt password hashes, granted roles) and roles (READ,
//!   WRITE or READWRITE permissions on a key or on a `[key, range_end)`
//!   range). `mvcc` stores the state and applies the commands, which arrive
//!   through Raft, so every member holds the same state and it survives
//!   restarts and snapshots. [`AuthState::apply`] is deterministic and its
//!   errors ([`AuthError`]) carry etcd's exact messages.
//! * [`password`] — bcrypt hashing with a configurable cost (etcd's
//!   `--bcrypt-cost`). Hashing happens on the member that receives the
//!   request, before proposing: the log carries hashes, never passwords.
//! * [`token`] — what `Authenticate` hands out: etcd's "simple" tokens
//!   (random, installed on every member through Raft by their hash
//!   ([`AuthCommand::Authenticate`]), kept in memory with a per-member TTL
//!   refreshed on use, bounded in number) or JWTs (signed with RS*/PS*/ES* keys; any member holding the public
//!   key verifies them, and they expire on their own).
//!
//! ## Permission model (etcd's)
//! A user with the `root` role may do anything. Any other user may read
//! (write) `[key, range_end)` when the union of the READ or READWRITE
//! (WRITE or READWRITE) permissions of its roles covers the whole range. An
//! empty `range_end` means the single key; `range_end == "\0"` means every
//! key from `key` on (with an empty `key` too: the whole key space).

mod eksblowfish;
pub mod password;
mod state;
pub mod token;

pub use state::{
    AuthCommand, AuthError, AuthLimits, AuthState, Perm, PermKind, Role, User, ROOT_ROLE, ROOT_USER,
};
