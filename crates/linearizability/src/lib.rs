//! linearizability (skeleton; see ARCHITECTURE.md)
