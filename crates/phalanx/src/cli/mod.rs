//! The command lines of the library crates' entry points. Libraries take
//! plain settings structs; only this binary knows clap (ARCHITECTURE.md,
//! "Boundaries").

pub mod alerting;
pub mod anomaly;
pub mod backup;
pub mod bench;
pub mod check;
pub mod client;
pub mod drill;
pub mod gateway;
pub mod progress;
pub mod sim;
