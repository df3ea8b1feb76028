//! Snapshot streaming (see crate docs for the format).
