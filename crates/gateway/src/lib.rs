//! # gateway — Phalanx's HTTP/1.1, HTTP/2 and TCP load balancer
//!
//! Main types:
//! * [`Config`] — the whole configuration (TOML: [`Config::from_toml_str`],
//!   [`Config::from_file`]; quick start: [`Config::quick_start`]). Invalid
//!   configurations are rejected with a [`ConfigError`] naming the field.
//! * [`Gateway::start`] — binds listeners and starts serving inside the
//!   current tokio runtime; returns a [`GatewayHandle`].
//! * [`GatewayHandle`] — `local_addr(s)`, `admin_addr`, `apply_config` (live
//!   reconfiguration without dropping connections), `shutdown` (graceful
//!   drain), `metrics_text`, `pools_json`.
//! * [`sample_backend`] — a tiny HTTP server answering with its name.
//! * [`h1`] — the HTTP/1.1 codec of the fast path (request and response
//!   heads with `httparse`, body framing, request smuggling defences).
//!
//! HTTP/1.1 on plaintext listeners and towards plaintext `http1` pools takes
//! a purpose-built fast path (`server_h1`, `upstream_h1`: no hyper state
//! machines, no task or channel per request); TLS, h2/h2c, Upgrade and
//! CONNECT use hyper (docs/gateway.md "HTTP/1.1 fast path" lists which
//! requests take which path). Both run the same proxy layers.
//!
//! The gateway knows nothing of the replicated store: the `gateway-store`
//! crate runs it from a configuration document kept there.
//!
//! Architecture (linkerd2-proxy style: small layers, each a documented state
//! machine, see [`layers`]):
//!
//! ```text
//! listener (http / https+ALPN / tcp) ─▶ proxy ─▶ cache ─▶ ratelimit ─▶ breaker ─▶ admission
//!    ─▶ retry ─▶ pool tiers (primary, backups) ─▶ balance ─▶ hedge ─▶ timeout ─▶ endpoint
//!                   ▲ health (active checks)                 outlier (passive) ◀─┘
//! ```
//!
//! Embedding example:
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use gateway::{Config, Gateway, sample_backend};
//! let a = sample_backend::spawn("127.0.0.1:0".parse()?, "a").await?;
//! let b = sample_backend::spawn("127.0.0.1:0".parse()?, "b").await?;
//! let cfg = Config::quick_start(
//!     "127.0.0.1:0".parse()?,
//!     &[a.local_addr().to_string(), b.local_addr().to_string()],
//!     gateway::Algorithm::RoundRobin,
//! );
//! let gw = Gateway::start(cfg).await?;
//! println!("gateway on {}", gw.local_addr());
//! gw.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod balance;
pub mod config;
mod conn;
pub mod endpoint;
mod gateway;
pub mod h1;
pub mod health;
pub mod layers;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod sample_backend;
mod server_h1;
pub mod tls;
mod upstream;
mod upstream_h1;

pub use config::{Algorithm, Config, ConfigError};
pub use gateway::{Gateway, GatewayHandle};
