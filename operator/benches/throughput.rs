//! Submission → verify → state update, and the operator's memory with a large fleet.
//!
//! `cargo bench -p lotabots-operator --bench throughput` prints:
//! - submissions/s through the in-process evidence API (challenge + submit of an 8-GPU
//!   node's evidence, token check stubbed: the API server's TokenReview is not part of the
//!   operator's cost), each followed by the controller's judgement of that node, with 1
//!   and with 2 concurrent agents' worth of load on the runtime's worker threads;
//! - resident memory after holding the latest evidence of 1,000 eight-GPU nodes and
//!   building the status of 10 GpuAttestations over all of them.
//!
//! Figures, not assertions: the targets (≥ 2,000 submissions/s on 2 cores; ≤ 150 MiB
//! for 1,000 nodes × 10 GpuAttestations) are compared by a person, in the closing note.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use jiff::Timestamp;
use lotabots_agent::backend::{ProbeRequest, collect};
use lotabots_agent::simulated::SimulatedBackend;
use lotabots_crds::evidence::{NodeEvidence, NonceOrigin};
use lotabots_crds::gpu_attestation::GpuPolicy;
use lotabots_operator::evidence_api::{ApiMetrics, EvidenceApi, LatestEvidence, RateLimit};
use lotabots_operator::status::{Judging, build_status, judge_node};
use tower::ServiceExt;

const NODES: usize = 1000;
const ATTESTATIONS: usize = 10;

fn policy() -> GpuPolicy {
    common::sample_policy()
}

fn template() -> NodeEvidence {
    let backend = SimulatedBackend::load("h100-sxm5-80gb-x8").unwrap();
    let req = ProbeRequest {
        nonce: [0; 32],
        nonce_origin: NonceOrigin::Verifier,
        node_name: "node-0".into(),
    };
    collect(&backend, &req).unwrap()
}

fn judging() -> Judging {
    Judging {
        interval: Duration::from_secs(600),
        grace: Duration::from_secs(120),
        allow_simulated: true,
        waiting_since: Timestamp::now(),
    }
}

fn api(nodes: usize) -> (Router, Arc<LatestEvidence>) {
    let names: Vec<&'static str> = (0..nodes)
        .map(|i| &*Box::leak(format!("node-{i}").into_boxed_str()))
        .collect();
    let tokens = common::StaticTokens(
        names
            .iter()
            .map(|n| (*n, common::agent(n)))
            .collect::<HashMap<_, _>>(),
    );
    let sink = Arc::new(LatestEvidence::default());
    let metrics = ApiMetrics::register(&prometheus::Registry::new()).unwrap();
    let rate = RateLimit {
        per_minute: NonZeroU32::new(10_000).unwrap(),
        burst: NonZeroU32::new(10_000).unwrap(),
    };
    let api = Arc::new(EvidenceApi::new(
        Arc::new(tokens),
        sink.clone(),
        Duration::from_secs(60),
        rate,
        metrics,
    ));
    (api.router(), sink)
}

async fn post(
    router: &Router,
    path: &str,
    token: &str,
    body: Vec<u8>,
) -> (StatusCode, bytes::Bytes) {
    let req = Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// One agent round for `node`: challenge, bind, submit, then judge what was accepted.
async fn round(
    router: &Router,
    sink: &LatestEvidence,
    template: &NodeEvidence,
    policy: &GpuPolicy,
    node: &str,
) {
    let (status, body) = post(router, "/v1/challenges", node, Vec::new()).await;
    assert_eq!(status, StatusCode::CREATED);
    let nonce = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut e = template.clone();
    e.node_name = node.to_owned();
    e.nonce = nonce;
    e.collected_at = Timestamp::now();
    let (status, body) = post(
        router,
        "/v1/evidence/gpu",
        node,
        serde_json::to_vec(&e).unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let latest = sink.get(node).unwrap();
    let r = judge_node(node, Some(&latest), policy, &judging(), Timestamp::now());
    assert_eq!(
        r.verdict,
        lotabots_crds::gpu_attestation::Verdict::Attested,
        "{:?}",
        r.reasons
    );
}

fn throughput(workers: usize, submissions: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let (router, sink) = api(NODES);
    let template = Arc::new(template());
    let policy = Arc::new(policy());
    rt.block_on(async {
        let started = Instant::now();
        let per_task = submissions / workers;
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let (router, sink, template, policy) = (
                    router.clone(),
                    sink.clone(),
                    template.clone(),
                    policy.clone(),
                );
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let node = format!("node-{}", (w * per_task + i) % NODES);
                        round(&router, &sink, &template, &policy, &node).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (per_task * workers) as f64 / started.elapsed().as_secs_f64()
    })
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fleet_memory() {
    let before = rss_kib("VmRSS:");
    let (router, sink) = api(NODES);
    let template = template();
    let policy = policy();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..NODES {
            round(&router, &sink, &template, &policy, &format!("node-{i}")).await;
        }
    });
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut status_bytes = 0;
    for _ in 0..ATTESTATIONS {
        let results: Vec<_> = (0..NODES)
            .map(|i| {
                let node = format!("node-{i}");
                judge_node(
                    &node,
                    sink.get(&node).as_deref(),
                    &policy,
                    &judging(),
                    Timestamp::now(),
                )
            })
            .collect();
        let status = build_status(Some(1), None, results, Timestamp::now());
        status_bytes += serde_json::to_vec(&status).unwrap().len();
        statuses.push(status);
    }
    let reconcile_all = started.elapsed();
    println!(
        "fleet: {NODES} nodes x 8 GPUs, {ATTESTATIONS} GpuAttestations: RSS {:.1} MiB (peak {:.1} MiB, {:.1} MiB before), \
         one reconcile of all {ATTESTATIONS} over {NODES} nodes {:.0} ms, statuses {:.1} KiB each",
        rss_kib("VmRSS:") as f64 / 1024.0,
        rss_kib("VmHWM:") as f64 / 1024.0,
        before as f64 / 1024.0,
        reconcile_all.as_secs_f64() * 1000.0,
        status_bytes as f64 / ATTESTATIONS as f64 / 1024.0
    );
    assert_eq!(sink.len(), NODES);
    drop(statuses);
}

/// Where one submission's time goes, per 8-GPU evidence document.
fn stages() {
    let e = template();
    let bytes = serde_json::to_vec(&e).unwrap();
    let policy = policy();
    let accepted = lotabots_operator::evidence_api::AcceptedEvidence {
        node: "node-0".into(),
        digest: e.digest().unwrap(),
        received_at: e.collected_at,
        evidence: e.clone(),
    };
    let time = |f: &mut dyn FnMut()| {
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let parse = time(&mut || {
        std::hint::black_box(serde_json::from_slice::<NodeEvidence>(&bytes).unwrap());
    });
    let digest = time(&mut || {
        std::hint::black_box(e.digest().unwrap());
    });
    let judge = time(&mut || {
        std::hint::black_box(judge_node(
            "node-0",
            Some(&accepted),
            &policy,
            &judging(),
            e.collected_at,
        ));
    });
    let encode = time(&mut || {
        std::hint::black_box(serde_json::to_vec(&e).unwrap());
    });
    println!(
        "stages per 8-GPU document ({} bytes): parse {parse:.0} µs, JCS digest {digest:.0} µs, judge {judge:.0} µs; agent-side encode {encode:.0} µs",
        bytes.len()
    );
}

fn main() {
    // `cargo test --benches` runs this too: keep that quick.
    let quick =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let n = if quick { 200 } else { 20_000 };
    throughput(1, n.min(400)); // warm-up
    for workers in [1, 2] {
        let per_s = throughput(workers, n);
        println!(
            "submissions (challenge + submit + judge, 8-GPU evidence), {workers} worker thread(s): {per_s:.0}/s over {n}"
        );
    }
    if !quick {
        stages();
        fleet_memory();
    }
}
