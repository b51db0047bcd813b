//! From accepted evidence to a GpuAttestation status: every edge the controller relies on.

mod common;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use lotabots_crds::gpu_attestation::{GpuAttestationStatus, Verdict};
use lotabots_operator::evidence_api::AcceptedEvidence;
use lotabots_operator::status::{
    Judging, MAX_LISTED_NODES, MAX_REASON_CHARS, MAX_REASONS, NodeResult, build_status, judge_node,
};

/// A 10-minute interval with 2 minutes of grace, for a GpuAttestation created `since`.
fn judging_since(since: Timestamp) -> Judging {
    Judging {
        interval: Duration::from_secs(600),
        grace: Duration::from_secs(120),
        allow_simulated: true,
        waiting_since: since,
    }
}

fn judging() -> Judging {
    judging_since(Timestamp::now())
}

use common::sample_policy;

fn accepted(profile: &str, node: &str) -> AcceptedEvidence {
    let evidence = common::evidence(profile, node, [3; 32]);
    AcceptedEvidence {
        node: node.into(),
        digest: evidence.digest().unwrap(),
        received_at: evidence.collected_at,
        evidence,
    }
}

fn result(node: &str, verdict: Verdict) -> NodeResult {
    NodeResult {
        node: node.into(),
        verdict,
        reasons: vec![format!("{node} is {verdict}")],
        digest: None,
        pending: false,
    }
}

/// A node still waiting for its first evidence.
fn pending(node: &str) -> NodeResult {
    NodeResult {
        pending: true,
        ..result(node, Verdict::Unknown)
    }
}

fn condition(s: &GpuAttestationStatus, type_: &str) -> (String, String) {
    let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.clone(), c.reason.clone())
}

fn after(t: Timestamp, secs: i64) -> Timestamp {
    t + SignedDuration::from_secs(secs)
}

#[test]
fn a_node_whose_agent_never_reported_is_unknown() {
    let r = judge_node("n1", None, &sample_policy(), &judging(), Timestamp::now());
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(
        r.reasons,
        ["no evidence received from the node's agent yet"]
    );
}

#[test]
fn fresh_evidence_that_meets_the_policy_attests_the_node() {
    let a = accepted("h100-80gb-hbm3", "n1");
    let r = judge_node(
        "n1",
        Some(&a),
        &sample_policy(),
        &judging(),
        after(a.evidence.collected_at, 5),
    );
    assert_eq!(r.verdict, Verdict::Attested, "{:?}", r.reasons);
    assert_eq!(r.digest.as_deref(), Some(a.digest.as_str()));
}

#[test]
fn a_faulty_gpu_fails_the_node() {
    let a = accepted("faulty-node", "n1");
    let r = judge_node(
        "n1",
        Some(&a),
        &sample_policy(),
        &judging(),
        a.evidence.collected_at,
    );
    assert_eq!(r.verdict, Verdict::Failed);
    assert!(!r.reasons.is_empty());
}

#[test]
fn a_silent_agent_makes_its_node_unknown_not_failed() {
    let a = accepted("h100-80gb-hbm3", "n1");
    let r = judge_node(
        "n1",
        Some(&a),
        &sample_policy(),
        &judging(),
        after(a.evidence.collected_at, 721),
    );
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(
        r.reasons[0].starts_with("agent silent: latest evidence is 721s old"),
        "{:?}",
        r.reasons
    );
    // Within interval + grace it still counts.
    let r = judge_node(
        "n1",
        Some(&a),
        &sample_policy(),
        &judging(),
        after(a.evidence.collected_at, 719),
    );
    assert_eq!(r.verdict, Verdict::Attested);
}

#[test]
fn evidence_from_the_future_fails() {
    let a = accepted("h100-80gb-hbm3", "n1");
    let r = judge_node(
        "n1",
        Some(&a),
        &sample_policy(),
        &judging(),
        after(a.evidence.collected_at, -3600),
    );
    assert_eq!(r.verdict, Verdict::Failed);
    assert!(
        r.reasons.iter().any(|m| m.contains("in the future")),
        "{:?}",
        r.reasons
    );
}

#[test]
fn simulated_evidence_is_not_attested_unless_allowed() {
    let a = accepted("h100-80gb-hbm3", "n1");
    let strict = Judging {
        allow_simulated: false,
        ..judging()
    };
    let r = judge_node(
        "n1",
        Some(&a),
        &sample_policy(),
        &strict,
        a.evidence.collected_at,
    );
    assert_eq!(r.verdict, Verdict::Failed);
}

#[test]
fn counts_order_and_ready_condition() {
    let now = Timestamp::now();
    let results = vec![
        result("c", Verdict::Attested),
        result("b", Verdict::Unknown),
        result("a", Verdict::Attested),
        result("d", Verdict::Failed),
    ];
    let s = build_status(Some(3), None, results, now);
    assert_eq!(
        (
            s.matched_nodes,
            s.attested_nodes,
            s.failed_nodes,
            s.unknown_nodes
        ),
        (4, 2, 1, 1)
    );
    let order: Vec<_> = s.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(
        order,
        ["d", "b", "a", "c"],
        "failing first, then unknown, then attested, each by name"
    );
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NodesFailed")
    );
    assert_eq!(ready.observed_generation, Some(3));
    let degraded = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    assert_eq!(s.observed_generation, Some(3));

    let all_good = build_status(Some(3), None, vec![result("a", Verdict::Attested)], now);
    let ready = all_good
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllNodesAttested")
    );

    let none = build_status(Some(1), None, vec![], now);
    assert_eq!(
        condition(&none, "Ready"),
        ("True".into(), "NoMatchingNodes".into())
    );
}

#[test]
fn the_node_list_and_reasons_stay_bounded() {
    let now = Timestamp::now();
    let mut results: Vec<_> = (0..1000)
        .map(|i| result(&format!("ok-{i:04}"), Verdict::Attested))
        .collect();
    let mut bad = result("zz-bad", Verdict::Failed);
    bad.reasons = (0..20)
        .map(|i| format!("{i}: {}", "é".repeat(400)))
        .collect();
    results.push(bad);
    let s = build_status(None, None, results, now);
    assert_eq!(s.nodes.len(), MAX_LISTED_NODES);
    assert_eq!(s.omitted_nodes, 1001 - MAX_LISTED_NODES as u32);
    assert_eq!(
        s.nodes[0].node, "zz-bad",
        "the failing node is listed even when it sorts last by name"
    );
    assert_eq!(s.nodes[0].reasons.len(), MAX_REASONS);
    assert!(
        s.nodes[0]
            .reasons
            .iter()
            .all(|r| r.chars().count() == MAX_REASON_CHARS && r.ends_with('…'))
    );
    let bytes = serde_json::to_vec(&s).unwrap().len();
    assert!(bytes < 64 * 1024, "status of 1,001 nodes is {bytes} bytes");
}

#[test]
fn transition_times_move_only_on_real_transitions() {
    let t0 = Timestamp::from_second(1_800_000_000).unwrap();
    let first = build_status(Some(1), None, vec![result("a", Verdict::Attested)], t0);
    let same = build_status(
        Some(1),
        Some(&first),
        vec![result("a", Verdict::Attested)],
        after(t0, 600),
    );
    let ready = |s: &lotabots_crds::gpu_attestation::GpuAttestationStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone()
    };
    assert_eq!(ready(&same).last_transition_time.0, t0);
    let flipped = build_status(
        Some(1),
        Some(&same),
        vec![result("a", Verdict::Failed)],
        after(t0, 1200),
    );
    assert_eq!(ready(&flipped).status, "False");
    assert_eq!(ready(&flipped).last_transition_time.0, after(t0, 1200));
}

#[test]
fn a_node_without_evidence_is_pending_then_silent() {
    let created = Timestamp::from_second(1_800_000_000).unwrap();
    let j = judging_since(created);
    let early = judge_node("n1", None, &sample_policy(), &j, after(created, 700));
    assert!(early.pending && early.verdict == Verdict::Unknown);
    let late = judge_node("n1", None, &sample_policy(), &j, after(created, 721));
    assert!(!late.pending && late.verdict == Verdict::Unknown);
    assert!(
        late.reasons[0].starts_with("agent silent: no evidence"),
        "{:?}",
        late.reasons
    );
}

/// The GitOps table of the packaging issue: Ready=True healthy, Reconciling=True in
/// progress, Stalled=True failed — one meaning for people, kstatus and Argo CD.
#[test]
fn conditions_follow_one_health_model() {
    let now = Timestamp::now();
    let st = |results| build_status(Some(2), None, results, now);
    let healthy = st(vec![result("a", Verdict::Attested)]);
    assert_eq!(
        condition(&healthy, "Ready"),
        ("True".into(), "AllNodesAttested".into())
    );
    assert_eq!(condition(&healthy, "Reconciling").0, "False");
    assert_eq!(condition(&healthy, "Stalled").0, "False");

    let waiting = st(vec![result("a", Verdict::Attested), pending("b")]);
    assert_eq!(
        condition(&waiting, "Ready"),
        ("False".into(), "Reconciling".into())
    );
    assert_eq!(condition(&waiting, "Reconciling").0, "True");
    assert_eq!(condition(&waiting, "Stalled").0, "False");

    let silent = st(vec![
        result("a", Verdict::Attested),
        result("b", Verdict::Unknown),
    ]);
    assert_eq!(
        condition(&silent, "Stalled"),
        ("True".into(), "NodesUnknown".into())
    );
    assert_eq!(condition(&silent, "Ready").0, "False");

    let failed = st(vec![result("a", Verdict::Failed), pending("b")]);
    assert_eq!(
        condition(&failed, "Stalled"),
        ("True".into(), "NodesFailed".into())
    );
    assert_eq!(condition(&failed, "Reconciling").0, "False");

    let none = st(vec![]);
    assert_eq!(
        condition(&none, "Ready"),
        ("True".into(), "NoMatchingNodes".into())
    );
    assert_eq!(condition(&none, "Stalled").0, "False");
    assert!(
        [&healthy, &waiting, &silent, &failed, &none]
            .iter()
            .all(|s| s
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(2)))
    );
}
