//! End-to-end harness for lotabots: a real Kubernetes control plane on 127.0.0.1 —
//! etcd, kube-apiserver (own CA, client certificates, RBAC+Node authorization,
//! ServiceAccount signing key), kube-controller-manager, kube-scheduler — and kwok
//! simulating GPU nodes, built from the binaries pinned in `e2e/testbins/`.
//!
//! - [`ControlPlane::builder`] starts it; [`ControlPlane::shutdown`] (or dropping it, or
//!   Ctrl-C once [`signals::install`] ran) stops it in reverse order and checks that no
//!   process or port is left ([`hygiene`]).
//! - [`ControlPlaneBuilder::with_stores`] adds PostgreSQL, SeaweedFS (S3) and
//!   fake-gcs-server (GCS) on 127.0.0.1 ([`stores`]).
//! - [`suite`] runs a test binary's scenarios against one shared control plane.
//! - The `lotabots-e2e up` command brings the environment up for a person to explore.
//!
//! Network rule: everything listens on and dials only 127.0.0.0/8; service and pod IPs
//! are loopback ranges too (see [`components`]).

pub mod agent_process;
pub mod agents;
pub mod cli;
pub mod components;
pub mod control_plane;
pub mod evidence;
pub mod hygiene;
pub mod images;
pub mod kubeconfig;
pub mod nodes;
pub mod operator_process;
pub mod overview;
pub mod packaging;
pub mod pki;
pub mod pods;
pub mod ports;
pub mod process;
pub mod procfs;
pub mod reaper;
pub mod resources;
pub mod signals;
pub mod stack;
pub mod stores;
pub mod suite;
pub mod supervisor;
pub mod table;
pub mod testbins;
pub mod wait;
pub mod webhook_process;

use std::path::PathBuf;

pub use control_plane::{ControlPlane, ControlPlaneBuilder, StartTimings};
pub use nodes::{Gpus, SimNode};

/// The repository root (the manifests under `config/` and `e2e/testbins/` are read from
/// there).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}
