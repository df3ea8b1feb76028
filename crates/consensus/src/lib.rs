//! consensus (skeleton; see ARCHITECTURE.md)
