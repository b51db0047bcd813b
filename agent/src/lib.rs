//! The lotabots node agent: measures the node's GPUs through NVML (or a simulated backend)
//! and serves the facts as evidence and as Prometheus metrics.

pub mod attest;
pub mod backend;
pub mod behaviour;
pub mod cli;
pub mod launcher;
pub mod metrics;
pub mod nvml;
pub mod operator_client;
pub mod server;
pub mod simulated;
pub mod table;
pub mod watch;
