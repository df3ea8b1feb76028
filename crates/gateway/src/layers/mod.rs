//! The request path is a stack of small layers, applied in this order:
//!
//! ```text
//! client ─▶ cache ─▶ ratelimit ─▶ admission ─▶ breaker ─▶ retry ─┬─▶ balance ─▶ hedge ─▶ timeout ─▶ endpoint
//!                                                                └── outlier (records each try)
//! ```
//!
//! Each module documents its state machine. They are plain synchronous
//! state holders driven by [`crate::proxy`], which keeps the hot path free of
//! boxing and dynamic dispatch (`cache_serve` is the cache's I/O side:
//! answers from copies, the body copy while streaming, refresh requests).
//! `cache` and `hedge` are only on the path of routes that configure them.
//! `shedding` refuses by request priority when the process CPU is saturated
//! (between ratelimit and breaker) and orders `admission`'s queue by
//! priority; `adaptive` (opt-in per pool) moves admission's limit with the
//! pool's latency.

pub mod adaptive;
pub mod admission;
pub mod breaker;
pub mod cache;
pub(crate) mod cache_serve;
pub mod hedge;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod shedding;
pub mod timeout;
