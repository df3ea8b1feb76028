//! mvcc (skeleton; see ARCHITECTURE.md)
