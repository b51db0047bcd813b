//! lotabots operator: the evidence API node agents submit GPU evidence to, and offline
//! verification of that evidence with the verifier the operator runs.

pub mod auth;
pub mod backoff;
pub mod behaviour;
pub mod certs;
pub mod challenges;
pub mod cli;
pub mod client_api;
pub mod controller;
pub mod evidence_api;
pub mod evidence_store;
pub mod leader;
pub mod metrics;
pub mod model_controller;
pub mod model_files;
pub mod model_inputs;
pub mod model_status;
pub mod run;
pub mod status;
#[cfg(test)]
mod test_api;
#[cfg(test)]
mod test_evidence;
pub mod tokens;
pub mod verify_cmd;
pub mod workload_api;
pub mod workload_fold;
pub mod workload_results;
