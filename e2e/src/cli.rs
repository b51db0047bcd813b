//! The `lotabots-e2e` command. `up` is the README's main job: the whole local
//! environment on this machine, the samples applied, a table of what came of them, and a
//! kubeconfig to explore it with, until Ctrl-C.
//!
//! The operator, the admission webhook and one simulated agent per GPU node run in this
//! process (see [`crate::stack`]); with `--stores`, PostgreSQL, SeaweedFS and
//! fake-gcs-server ([`crate::stores`]) are started after the control plane under the same
//! supervisor, so Ctrl-C stops them first, and the operator records its verdicts there
//! ([`crate::evidence`]).

use std::{future::pending, process::ExitCode, sync::Arc};

use anyhow::Result;
use clap::{Parser, Subcommand};

use std::time::Duration;

use kube::Api;
use lotabots_crds::gpu_attestation::GpuAttestation;

use lotabots_operator::evidence_store::VerdictLog;

use crate::evidence::{self, Recording};
use crate::stack::{Operator, Webhook, default_profile, start_agents};
use crate::{ControlPlane, SimNode, overview, resources, signals, wait};

/// Where `up` runs the agents' identities: the namespace and ServiceAccount of the
/// agent DaemonSet in `config/`.
const AGENT_NAMESPACE: &str = "lotabots-system";
const AGENT_SA: &str = "lotabots-agent";

/// lotabots end-to-end environment on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "lotabots-e2e", version)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with
    /// simulated GPU nodes, install the CRDs, run the operator and one simulated agent per
    /// GPU node, apply config/samples, print the attestations once the operator judged
    /// them, and keep running until Ctrl-C.
    Up(UpArgs),
    /// Build the container images as archives (`<out>/{operator,agent,webhook,
    /// gpu-selftest,probe-runner}.tar`, named ghcr.io/lotabots/<name>:<version>),
    /// with crane and no container engine, from binaries cargo built; prints their sizes.
    Images(ImagesArgs),
}

#[derive(Debug, clap::Args)]
struct ImagesArgs {
    /// Where lotabots-operator, lotabots-agent and lotabots-webhook are (default: this
    /// program's directory, e.g. target/release after
    /// `cargo build --release -p lotabots-e2e -p lotabots-operator -p lotabots-agent -p lotabots-webhook`).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
    /// Where to write the archives.
    #[arg(long, default_value = "target/images")]
    out: std::path::PathBuf,
    /// The commit for org.opencontainers.image.revision (default: `git rev-parse HEAD`).
    #[arg(long)]
    revision: Option<String>,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of simulated H100 nodes (8 GPUs each), besides one A100 MIG node and one
    /// CPU-only node.
    #[arg(long, env = "LOTABOTS_E2E_H100_NODES", default_value_t = 2)]
    h100_nodes: usize,
    /// Do not apply config/samples.
    #[arg(long, env = "LOTABOTS_E2E_NO_SAMPLES")]
    no_samples: bool,
    /// Also start PostgreSQL 15, SeaweedFS (S3) and fake-gcs-server on 127.0.0.1, record
    /// the operator's verdicts there (the evidence store) and print how to reach them
    /// (installed by e2e/setup-stores.sh on first use).
    #[arg(long, env = "LOTABOTS_E2E_STORES")]
    stores: bool,
}

impl Args {
    /// Parses the command line and runs the command.
    pub fn parse_and_run() -> ExitCode {
        let args = Self::parse();
        let rt = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("lotabots-e2e: cannot start a runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let res = match args.command {
            Cmd::Up(up_args) => rt.block_on(up(up_args)),
            Cmd::Images(images_args) => images(images_args),
        };
        match res {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lotabots-e2e: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

fn images(args: ImagesArgs) -> Result<()> {
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default(),
    };
    let opts = crate::images::BuildOptions::release(bin_dir, args.out, args.revision)?;
    let built = crate::images::build_all(&opts)?;
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let rows: Vec<Vec<String>> = built
        .iter()
        .map(|i| {
            vec![
                i.reference.clone(),
                i.archive.display().to_string(),
                mib(i.archive_bytes),
                mib(i.unpacked_bytes),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::table::render(&["IMAGE", "ARCHIVE", "SIZE", "UNPACKED"], &rows)
    );
    Ok(())
}

fn fleet(h100_nodes: usize) -> Vec<SimNode> {
    let mut nodes: Vec<SimNode> = (0..h100_nodes)
        .map(|i| SimNode::gpu(&format!("gpu-h100-{i}"), crate::Gpus::h100_x8()))
        .collect();
    nodes.push(SimNode::gpu("gpu-a100-mig-0", crate::Gpus::a100_mig_x8()));
    nodes.push(SimNode::cpu_only("cpu-0"));
    nodes
}

async fn up(args: UpArgs) -> Result<()> {
    // Ctrl-C is how `up` is meant to end: tear down, then exit 0.
    signals::install(0);
    let mut builder = ControlPlane::builder()
        .with_crds()
        .nodes(fleet(args.h100_nodes));
    if args.stores {
        builder = builder.with_stores();
    }
    let plane = builder.start().await?;
    eprintln!("lotabots-e2e: control plane {}", plane.timings());
    let client = plane.client();
    resources::ensure_namespace(&client, AGENT_NAMESPACE).await?;
    let recording = match plane.stores() {
        Ok(stores) => {
            eprintln!(
                "lotabots-e2e: connecting the evidence store (PostgreSQL, S3 bucket {}, GCS bucket {})",
                evidence::S3_BUCKET,
                evidence::GCS_BUCKET
            );
            Some(Recording::start(client.clone(), stores, AGENT_NAMESPACE).await?)
        }
        Err(_) => None,
    };
    eprintln!("lotabots-e2e: starting the operator (evidence API and controller)");
    let operator = Operator::start_recording(
        client.clone(),
        vec![format!("{AGENT_NAMESPACE}/{AGENT_SA}")],
        recording
            .as_ref()
            .map(|r| r.store.clone() as Arc<dyn VerdictLog>),
    )
    .await?;
    eprintln!("lotabots-e2e: evidence API on {}", operator.url);
    let fleet: Vec<(String, String)> = plane
        .nodes()
        .iter()
        .filter_map(|n| default_profile(n).map(|p| (n.name.clone(), p.to_owned())))
        .collect();
    let agents = start_agents(
        &client,
        &operator,
        AGENT_NAMESPACE,
        AGENT_SA,
        &fleet,
        plane.run_dir(),
    )
    .await?;
    for a in &agents {
        eprintln!(
            "lotabots-e2e: agent on {} (simulated {}, token bound to pod {AGENT_NAMESPACE}/{AGENT_SA}-{})",
            a.node, a.profile, a.node
        );
    }
    eprintln!("lotabots-e2e: starting the admission webhook (default policy)");
    let webhook = Webhook::start().await?;
    webhook.register(&client).await?;
    eprintln!(
        "lotabots-e2e: webhook on {} registered (pods outside kube-system and {AGENT_NAMESPACE} are checked)",
        webhook.url
    );
    if !args.no_samples {
        for obj in resources::samples()? {
            let applied = resources::apply(&client, &obj).await?;
            let kind = applied.types.as_ref().map_or("", |t| t.kind.as_str());
            let ns = applied
                .metadata
                .namespace
                .as_deref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default();
            eprintln!(
                "lotabots-e2e: applied {kind} {ns}{}",
                applied.metadata.name.as_deref().unwrap_or_default()
            );
        }
    }
    if !args.no_samples {
        eprintln!("lotabots-e2e: waiting for the operator's verdicts");
        let judged = wait::until(
            "every GpuAttestation to be judged",
            Duration::from_secs(120),
            || {
                let client = client.clone();
                async move {
                    let atts = Api::<GpuAttestation>::all(client)
                        .list(&Default::default())
                        .await?;
                    Ok(atts
                        .items
                        .iter()
                        .all(|a| {
                            a.status
                                .as_ref()
                                .is_some_and(|s| s.matched_nodes > 0 && s.unknown_nodes == 0)
                        })
                        .then_some(()))
                }
            },
        )
        .await;
        if let Err(e) = judged {
            eprintln!("lotabots-e2e: {e:#}");
        }
    }
    println!("\nNODES\n{}", overview::nodes(&client).await?);
    println!(
        "GPU ATTESTATIONS\n{}",
        overview::gpu_attestations(&client).await?
    );
    println!(
        "MODEL ATTESTATIONS\n{}",
        overview::model_attestations(&client).await?
    );
    println!(
        "(operator: {} evidence submissions accepted; GPUs are simulated, there is no GPU on this machine)\n",
        operator.api_metrics.submissions("accepted")
    );
    if let Some(r) = &recording {
        let db = r.store.database();
        let records = db
            .list_records(&Default::default(), lotabots_store::db::Page::first(1000))
            .await?;
        let chain = db.verify_chain().await?;
        println!(
            "(evidence store: {} verdicts recorded; audit chain of {} rows {}; bundles sealed with key {} and copied to s3://{} and gs://{})\n",
            records.records.len(),
            chain.rows_checked,
            if chain.first_broken.is_none() {
                "intact"
            } else {
                "BROKEN"
            },
            evidence::KEY_ID,
            evidence::S3_BUCKET,
            evidence::GCS_BUCKET,
        );
    }
    let kubeconfig = plane.kubeconfig().display();
    let kubectl = plane.bins().bin("kubectl");
    println!("kubeconfig:    {kubeconfig}");
    println!("run directory: {}", plane.run_dir().display());
    println!("try:           export KUBECONFIG={kubeconfig}");
    println!("               {} get gpuatt,nodes", kubectl.display());
    println!("or:            kubectl --kubeconfig {kubeconfig} get gpuatt,modelatt -A");
    if let Ok(s) = plane.stores() {
        println!("PostgreSQL:    {}", s.postgres.url());
        println!(
            "               {} '{}'",
            s.postgres.psql_path().display(),
            s.postgres.url()
        );
        println!(
            "S3 (SigV4):    {}  access key {}  secret key {}  region {}  (path style)",
            s.s3.endpoint(),
            s.s3.access_key(),
            s.s3.secret_key(),
            s.s3.region()
        );
        println!(
            "GCS (no auth): {}  (STORAGE_EMULATOR_HOST={})",
            s.gcs.endpoint(),
            s.gcs.endpoint()
        );
    }
    println!("Press Ctrl-C to stop and remove everything.");
    // The signal handler tears down and exits; until then the environment stays up.
    // `plane` must live until then: dropping it would stop everything.
    pending::<()>().await;
    drop((webhook, agents, operator, recording, plane));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn the_fleet_has_h100_mig_and_cpu_nodes() {
        let names: Vec<String> = fleet(3).into_iter().map(|n| n.name).collect();
        assert_eq!(
            names,
            [
                "gpu-h100-0",
                "gpu-h100-1",
                "gpu-h100-2",
                "gpu-a100-mig-0",
                "cpu-0"
            ]
        );
    }
}
