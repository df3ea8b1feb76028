//! bench (skeleton; see ARCHITECTURE.md)
