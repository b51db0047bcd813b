//! lotabots admission webhook: mount and container security policy for every pod-bearing
//! object, and validation of the lotabots custom resources.
//!
//! Evaluation is a pure function ([`evaluate::evaluate_pod`]) over decoded Kubernetes
//! types; [`admission::review`] turns an AdmissionReview request into a response with it;
//! the server ([`server`]) and the offline check ([`check`]) both call `review`.

pub mod admission;
pub mod check;
pub mod cli;
pub mod crd_validation;
pub mod evaluate;
pub mod metrics;
pub mod node_binding;
pub mod paths;
pub mod policy;
pub mod reload;
pub mod server;
pub mod tls;
pub mod verdict;
pub mod workloads;
