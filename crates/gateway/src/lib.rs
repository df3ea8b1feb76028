//! gateway (skeleton; see ARCHITECTURE.md)
