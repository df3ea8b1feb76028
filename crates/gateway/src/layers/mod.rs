//! The request path is a stack of small layers, applied in this order:
//!
//! ```text
//! client ─▶ ratelimit ─▶ admission ─▶ breaker ─▶ retry ─┬─▶ balance ─▶ timeout ─▶ endpoint
//!                                                       └── outlier (records each try)
//! ```
//!
//! Each module documents its state machine. They are plain synchronous
//! state holders driven by [`crate::proxy`], which keeps the hot path free of
//! boxing and dynamic dispatch.

pub mod admission;
pub mod breaker;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod timeout;
