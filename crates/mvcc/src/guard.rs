//! Panics of the storage engine at the boundary.
//!
//! redb panics (`internal error: entered unreachable code`, index out of
//! bounds) on some malformed pages instead of returning an error. Opening
//! and verifying a file runs under [`catch_panics`], so a damaged file is
//! reported as an error naming it. Anywhere else a panic stops the member:
//! the binary's panic hook exits the process unless [`in_guarded_section`]
//! says the panic is about to be caught here.

use std::cell::Cell;

thread_local! {
    static GUARDED: Cell<u32> = const { Cell::new(0) };
}

/// Whether the current thread is inside [`catch_panics`].
pub fn in_guarded_section() -> bool {
    GUARDED.with(|g| g.get() > 0)
}

/// Run `f`, turning a panic into `Err(message)`.
pub fn catch_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    GUARDED.with(|g| g.set(g.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    r.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}
