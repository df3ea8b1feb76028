//! The command lines of the library crates' entry points. Libraries take
//! plain settings structs; only this binary knows clap (ARCHITECTURE.md,
//! "Boundaries").

pub mod bench;
pub mod client;
pub mod check;
pub mod drill;
pub mod sim;
pub mod gateway;
pub mod anomaly;
pub mod backup;
pub mod alerting;
