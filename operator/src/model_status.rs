//! From the stages' results to a ModelAttestation's status (a condition per stage,
//! `Ready`, the verdict, the bounded reasons) and to the in-toto statement the operator
//! signs and seals into the evidence store.
//!
//! Pure functions of their inputs (the time included), so that every condition's pass and
//! failure is tested without an API server: the controller only gathers the inputs.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use lotabots_crds::conditions::{self, reason, status as cstatus};
use lotabots_crds::model_attestation::{
    BehaviourStatus, MAX_MODEL_REASONS, ModelAttestation, ModelAttestationStatus, Verdict,
};
use lotabots_crds::workload::ProbeOutcome;
use lotabots_model::attest::{Report, StageResult, StageStatus};
use serde_json::json;

use crate::status::{clip, condition};

/// The in-toto predicate type of the operator's model statements.
pub const PREDICATE_TYPE: &str = "https://lotabots.io/model-attestation/v1";
/// in-toto Statement v1.
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Longest condition message kept (the API allows 32768; a person reads far less).
const MAX_MESSAGE_CHARS: usize = 1024;

/// What the controller found for one ModelAttestation.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every stage ran; the report says how each ended.
    Judged(Report),
    /// The stages could not run.
    Blocked(Blocked),
}

/// Why the stages could not run, and the condition at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    /// The stage condition that could not start (`None`: the spec as a whole).
    pub stage: Option<&'static str>,
    /// The condition reason (`SourceUnavailable`, `ReferenceNotFound`, …).
    pub reason: &'static str,
    /// What is wrong, naming the object, field or file.
    pub message: String,
    /// `Failed` when what blocked the stages is itself a failure (a malformed signature),
    /// `Unknown` when nothing could be judged.
    pub verdict: Verdict,
}

impl Blocked {
    /// `stage` could not start for `reason`; nothing is judged.
    pub fn unknown(stage: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            stage: Some(stage),
            reason,
            message: message.into(),
            verdict: Verdict::Unknown,
        }
    }
}

/// Where the behavioural check stands.
// One per reconcile: boxing the request would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// `spec.behaviour` is unset.
    NotRequested,
    /// Requested, but not every other stage passed: no probe pod is asked for.
    Waiting,
    /// No request could be made: a missing probe suite (`False`, `ReferenceNotFound`) or
    /// no eligible node (`Unknown`, `NoAttestedNode`).
    Blocked {
        /// The condition status.
        status: &'static str,
        /// The condition reason.
        reason: &'static str,
        /// What is missing, naming it.
        message: String,
    },
    /// The current request, its result folded in when there is one.
    Requested {
        /// The request.
        request: BehaviourStatus,
        /// The id of the request this one replaced because it timed out.
        timed_out: Option<String>,
    },
}

/// The `Behaviour` condition (status, reason, message), the reasons it adds to the
/// verdict, and whether it passed (`Some(true)`), failed (`Some(false)`) or is open.
fn behaviour_condition(
    b: &Behaviour,
) -> (
    (&'static str, &'static str, String),
    Vec<String>,
    Option<bool>,
) {
    let stage = conditions::BEHAVIOUR;
    match b {
        Behaviour::NotRequested => (
            (
                cstatus::TRUE,
                reason::NOT_REQUESTED,
                "spec.behaviour is unset".into(),
            ),
            Vec::new(),
            Some(true),
        ),
        Behaviour::Waiting => (
            (
                cstatus::UNKNOWN,
                reason::PENDING,
                "not run: the probes run once every other stage passed".into(),
            ),
            Vec::new(),
            None,
        ),
        Behaviour::Blocked {
            status,
            reason,
            message,
        } => (
            (status, reason, message.clone()),
            vec![format!("{stage}: {message}")],
            None,
        ),
        Behaviour::Requested { request, timed_out } => match &request.result {
            None => {
                let asked = format!(
                    "probe pod {}-{} requested on node {}",
                    lotabots_crds::workload::WorkloadKind::BehaviourProbes.as_str(),
                    request.request_id,
                    request.node
                );
                match timed_out {
                    Some(old) => {
                        let message = format!("request {old} timed out without a result; {asked}");
                        (
                            (cstatus::UNKNOWN, reason::TIMED_OUT, message.clone()),
                            vec![format!("{stage}: {message}")],
                            None,
                        )
                    }
                    None => ((cstatus::UNKNOWN, reason::PENDING, asked), Vec::new(), None),
                }
            }
            Some(result) if result.passed => (
                (
                    cstatus::TRUE,
                    reason::PROBES_PASSED,
                    format!(
                        "{} probe(s) passed on node {} ({})",
                        result.probes.len(),
                        request.node,
                        result.device.as_deref().unwrap_or("unknown device")
                    ),
                ),
                Vec::new(),
                Some(true),
            ),
            Some(result) => {
                let mut reasons: Vec<String> = result
                    .error
                    .iter()
                    .map(|e| format!("{stage}: {e}"))
                    .collect();
                reasons.extend(
                    result
                        .probes
                        .iter()
                        .filter(|p| !p.passed)
                        .map(|p| format!("{stage}: probe {:?} failed: {}", p.name, p.detail)),
                );
                if reasons.is_empty() {
                    reasons.push(format!("{stage}: the probe pod reported a failure"));
                }
                let message = reasons
                    .iter()
                    .map(|r| r.trim_start_matches(&format!("{stage}: ")).to_owned())
                    .collect::<Vec<_>>()
                    .join("; ");
                (
                    (cstatus::FALSE, reason::PROBES_FAILED, message),
                    reasons,
                    Some(false),
                )
            }
        },
    }
}

/// The status for `outcome` and `behaviour`, keeping each condition's transition time
/// unless its status changed since `previous`.
pub fn build_model_status(
    generation: Option<i64>,
    previous: Option<&ModelAttestationStatus>,
    outcome: &Outcome,
    behaviour: &Behaviour,
    now: Timestamp,
) -> ModelAttestationStatus {
    let prev = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let at = Time(now);
    let cond = |type_: &str, status: &str, why: &str, message: String| {
        condition(
            prev,
            type_,
            status,
            why,
            clip_message(&message),
            generation,
            &at,
        )
    };
    let ((b_status, b_reason, b_message), behaviour_reasons, behaviour_passed) =
        behaviour_condition(behaviour);
    let behaviour_cond = cond(conditions::BEHAVIOUR, b_status, b_reason, b_message.clone());
    let (mut conds, verdict, ready, reasons, digest) = match outcome {
        Outcome::Judged(report) => {
            let stages: Vec<Condition> = report
                .stages
                .iter()
                .map(|s| cond(s.stage, stage_status(s), s.reason, stage_message(s)))
                .collect();
            let failed: Vec<&StageResult> = report
                .stages
                .iter()
                .filter(|s| s.status == StageStatus::Failed)
                .collect();
            let mut names: Vec<&str> = failed.iter().map(|s| s.stage).collect();
            if behaviour_passed == Some(false) {
                names.push(conditions::BEHAVIOUR);
            }
            let (verdict, ready) = if !names.is_empty() {
                (
                    Verdict::Failed,
                    (
                        cstatus::FALSE,
                        reason::STAGE_FAILED,
                        format!("failed: {}", names.join(", ")),
                    ),
                )
            } else if behaviour_passed.is_none() {
                let why = match behaviour {
                    Behaviour::Blocked { reason, .. } => reason,
                    Behaviour::Requested {
                        timed_out: Some(_), ..
                    } => reason::TIMED_OUT,
                    _ => reason::PENDING,
                };
                (
                    Verdict::Unknown,
                    (
                        cstatus::FALSE,
                        why,
                        format!("every other stage passed; behaviour: {b_message}"),
                    ),
                )
            } else {
                (
                    Verdict::Attested,
                    (
                        cstatus::TRUE,
                        reason::ALL_STAGES_PASSED,
                        "every stage passed".to_owned(),
                    ),
                )
            };
            let mut reasons = Vec::new();
            for s in failed {
                reasons.push(format!("{}: {}", s.stage, s.message));
                reasons.extend(
                    s.files
                        .iter()
                        .map(|f| format!("{}: {}: {}", s.stage, f.path, f.problem)),
                );
            }
            reasons.extend(behaviour_reasons);
            (
                stages,
                verdict,
                ready,
                reasons,
                report.manifest_digest.clone(),
            )
        }
        Outcome::Blocked(b) => {
            let stages = conditions::MODEL_STAGES
                .iter()
                .filter(|s| **s != conditions::BEHAVIOUR)
                .map(|s| match b.stage {
                    Some(at_fault) if at_fault == *s => {
                        cond(s, cstatus::FALSE, b.reason, b.message.clone())
                    }
                    _ => cond(
                        s,
                        cstatus::UNKNOWN,
                        reason::PENDING,
                        "not run: the stages could not start".into(),
                    ),
                })
                .collect();
            (
                stages,
                b.verdict,
                (cstatus::FALSE, b.reason, b.message.clone()),
                vec![b.message.clone()],
                None,
            )
        }
    };
    conds.push(behaviour_cond);
    let stalled = matches!(outcome, Outcome::Blocked(_)) || verdict == Verdict::Failed;
    conds.push(cond(
        conditions::STALLED,
        if stalled {
            cstatus::TRUE
        } else {
            cstatus::FALSE
        },
        ready.1,
        ready.2.clone(),
    ));
    conds.push(cond(conditions::READY, ready.0, ready.1, ready.2));
    ModelAttestationStatus {
        observed_generation: generation,
        conditions: conds,
        manifest_digest: digest,
        verdict: Some(verdict),
        reasons: reasons
            .iter()
            .take(MAX_MODEL_REASONS)
            .map(|r| clip(r))
            .collect(),
        verified_at: Some(at),
        behaviour: match behaviour {
            Behaviour::Requested { request, .. } => Some(request.clone()),
            _ => None,
        },
    }
}

/// A stage's condition status: a stage skipped because it was not requested counts as
/// passed; one skipped for want of an earlier stage is unknown, never a pass.
pub(crate) fn stage_status(s: &StageResult) -> &'static str {
    match s.status {
        StageStatus::Passed => cstatus::TRUE,
        StageStatus::Failed => cstatus::FALSE,
        StageStatus::Skipped if s.reason == reason::NOT_REQUESTED => cstatus::TRUE,
        StageStatus::Skipped => cstatus::UNKNOWN,
    }
}

/// The stage's message followed by every file it objected to.
fn stage_message(s: &StageResult) -> String {
    if s.files.is_empty() {
        return s.message.clone();
    }
    let files: Vec<String> = s
        .files
        .iter()
        .map(|f| format!("{}: {}", f.path, f.problem))
        .collect();
    format!("{}: {}", s.message, files.join("; "))
}

fn clip_message(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_owned();
    }
    let mut s: String = message.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    s.push('…');
    s
}

/// The in-toto Statement v1 binding every stage's result to the model's manifest digest
/// (the subject), for the operator to sign. `None` when the model could not be hashed:
/// there is nothing to bind to. With a behaviour result in `status`, the predicate's
/// `behaviour` names the request, the node attestation it ran on and every probe
/// (`probes`: all of them as posted; the status keeps only the first
/// [`MAX_STATUS_PROBES`](lotabots_crds::model_attestation::MAX_STATUS_PROBES)).
pub fn statement(
    attestation: &ModelAttestation,
    report: &Report,
    status: &ModelAttestationStatus,
    probes: Option<&[ProbeOutcome]>,
) -> Option<serde_json::Value> {
    let digest = report.manifest_digest.as_deref()?;
    let hex = digest.strip_prefix("sha256:")?;
    let behaviour = status.behaviour.as_ref().and_then(|b| {
        let result = b.result.as_ref()?;
        let outcomes = match probes {
            Some(all) => serde_json::to_value(all).ok()?,
            None => serde_json::to_value(&result.probes).ok()?,
        };
        Some(json!({
            "requestId": b.request_id,
            "node": b.node,
            "nonce": b.nonce,
            "evidenceDigest": b.evidence_digest,
            "suiteDigest": b.suite_digest,
            "device": result.device,
            "passed": result.passed,
            "error": result.error,
            "probes": outcomes,
        }))
    });
    Some(json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": report.model, "digest": { "sha256": hex } }],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "attestation": {
                "namespace": attestation.metadata.namespace,
                "name": attestation.metadata.name,
                "uid": attestation.metadata.uid,
                "generation": attestation.metadata.generation,
            },
            "verdict": status.verdict,
            "reasons": status.reasons,
            "report": report,
            "behaviour": behaviour,
        },
    }))
}

#[cfg(test)]
mod tests {
    use lotabots_crds::model_attestation::BehaviourResult;
    use lotabots_model::attest::{Objection, REPORT_SCHEMA};

    use super::*;

    fn stage(
        stage: &'static str,
        status: StageStatus,
        reason: &'static str,
        files: &[&str],
    ) -> StageResult {
        let mut r = StageResult {
            stage,
            status,
            reason,
            message: format!("{stage} says {reason}"),
            files: Vec::new(),
            took: None,
        };
        r.files = files
            .iter()
            .map(|f| Objection {
                path: (*f).into(),
                problem: "modified".into(),
            })
            .collect();
        r
    }

    fn passing() -> Vec<StageResult> {
        vec![
            stage(
                conditions::INTEGRITY_VERIFIED,
                StageStatus::Passed,
                reason::DIGEST_MATCH,
                &[],
            ),
            stage(
                conditions::SIGNATURE_VERIFIED,
                StageStatus::Passed,
                reason::SIGNATURE_VALID,
                &[],
            ),
            stage(
                conditions::SAFETY_SCANNED,
                StageStatus::Passed,
                reason::SCAN_PASSED,
                &[],
            ),
            stage(
                conditions::COMPLIANT,
                StageStatus::Passed,
                reason::POLICY_SATISFIED,
                &[],
            ),
        ]
    }

    fn report(stages: Vec<StageResult>) -> Report {
        let verdict = if stages.iter().any(|s| s.status == StageStatus::Failed) {
            Verdict::Failed
        } else {
            Verdict::Attested
        };
        Report {
            schema_version: REPORT_SCHEMA,
            model: "file:///models/m".into(),
            verdict,
            manifest_digest: Some(format!("sha256:{}", "ab".repeat(32))),
            serialization: None,
            files: 2,
            signer: None,
            checked_at: Timestamp::UNIX_EPOCH,
            stages,
            bytes_hashed: 0,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn get<'a>(s: &'a ModelAttestationStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"))
    }

    #[test]
    fn every_stage_passing_is_ready_and_attested() {
        let s = build_model_status(
            Some(3),
            None,
            &Outcome::Judged(report(passing())),
            &Behaviour::NotRequested,
            at(0),
        );
        for t in conditions::MODEL_STAGES.iter().chain([&conditions::READY]) {
            assert_eq!(get(&s, t).status, "True", "{t}: {s:?}");
            assert_eq!(get(&s, t).observed_generation, Some(3));
        }
        assert_eq!(get(&s, conditions::STALLED).status, "False");
        assert_eq!(get(&s, conditions::READY).reason, reason::ALL_STAGES_PASSED);
        assert_eq!(s.verdict, Some(Verdict::Attested));
        assert!(s.reasons.is_empty());
        assert_eq!(s.manifest_digest.as_deref().map(str::len), Some(71));
    }

    #[test]
    fn each_stage_can_fail_and_names_its_files() {
        for i in 0..4 {
            let mut stages = passing();
            let failing = stages[i].stage;
            stages[i] = stage(
                failing,
                StageStatus::Failed,
                reason::STAGE_FAILED,
                &["weights.bin"],
            );
            let s = build_model_status(
                Some(1),
                None,
                &Outcome::Judged(report(stages)),
                &Behaviour::NotRequested,
                at(0),
            );
            let c = get(&s, failing);
            assert_eq!(c.status, "False", "{failing}");
            assert!(
                c.message.contains("weights.bin: modified"),
                "{failing}: {}",
                c.message
            );
            for other in conditions::MODEL_STAGES.iter().filter(|t| **t != failing) {
                assert_eq!(
                    get(&s, other).status,
                    "True",
                    "{other} with {failing} failing"
                );
            }
            assert_eq!(get(&s, conditions::READY).status, "False");
            assert_eq!(get(&s, conditions::READY).reason, reason::STAGE_FAILED);
            assert!(get(&s, conditions::READY).message.contains(failing));
            assert_eq!(get(&s, conditions::STALLED).status, "True");
            assert_eq!(s.verdict, Some(Verdict::Failed));
            assert_eq!(
                s.reasons,
                [
                    format!("{failing}: {failing} says StageFailed"),
                    format!("{failing}: weights.bin: modified")
                ]
            );
        }
    }

    #[test]
    fn skipped_stages_pass_only_when_not_requested() {
        let mut stages = passing();
        stages[1] = stage(
            conditions::SIGNATURE_VERIFIED,
            StageStatus::Skipped,
            reason::NOT_REQUESTED,
            &[],
        );
        stages[0] = stage(
            conditions::INTEGRITY_VERIFIED,
            StageStatus::Skipped,
            reason::PENDING,
            &[],
        );
        let s = build_model_status(
            None,
            None,
            &Outcome::Judged(report(stages)),
            &Behaviour::NotRequested,
            at(0),
        );
        assert_eq!(get(&s, conditions::SIGNATURE_VERIFIED).status, "True");
        assert_eq!(get(&s, conditions::INTEGRITY_VERIFIED).status, "Unknown");
    }

    #[test]
    fn a_requested_behaviour_check_keeps_the_verdict_unknown() {
        let s = build_model_status(
            None,
            None,
            &Outcome::Judged(report(passing())),
            &Behaviour::Waiting,
            at(0),
        );
        assert_eq!(get(&s, conditions::BEHAVIOUR).status, "Unknown");
        assert_eq!(get(&s, conditions::READY).status, "False");
        assert_eq!(get(&s, conditions::READY).reason, reason::PENDING);
        assert_eq!(s.verdict, Some(Verdict::Unknown));
    }

    #[test]
    fn a_blocked_stage_is_false_and_the_rest_pending() {
        let blocked = Blocked::unknown(
            conditions::INTEGRITY_VERIFIED,
            reason::SOURCE_UNAVAILABLE,
            "s3:// model sources are not supported yet",
        );
        let s = build_model_status(
            Some(2),
            None,
            &Outcome::Blocked(blocked),
            &Behaviour::NotRequested,
            at(0),
        );
        let c = get(&s, conditions::INTEGRITY_VERIFIED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SourceUnavailable")
        );
        assert_eq!(get(&s, conditions::SAFETY_SCANNED).status, "Unknown");
        let ready = get(&s, conditions::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SourceUnavailable")
        );
        assert!(ready.message.contains("not supported yet"));
        assert_eq!(s.verdict, Some(Verdict::Unknown));
        assert_eq!(s.manifest_digest, None);
    }

    #[test]
    fn transition_times_move_only_on_change_and_reasons_are_bounded() {
        let first = build_model_status(
            Some(1),
            None,
            &Outcome::Judged(report(passing())),
            &Behaviour::NotRequested,
            at(0),
        );
        let again = build_model_status(
            Some(1),
            Some(&first),
            &Outcome::Judged(report(passing())),
            &Behaviour::NotRequested,
            at(60),
        );
        assert_eq!(
            get(&again, conditions::READY).last_transition_time.0,
            at(0),
            "unchanged status keeps its transition time"
        );
        let files: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let mut stages = passing();
        stages[0] = stage(
            conditions::INTEGRITY_VERIFIED,
            StageStatus::Failed,
            reason::DIGEST_MISMATCH,
            &files.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let failed = build_model_status(
            Some(1),
            Some(&again),
            &Outcome::Judged(report(stages)),
            &Behaviour::NotRequested,
            at(120),
        );
        assert_eq!(
            get(&failed, conditions::READY).last_transition_time.0,
            at(120)
        );
        assert_eq!(
            get(&failed, conditions::SAFETY_SCANNED)
                .last_transition_time
                .0,
            at(0)
        );
        assert_eq!(failed.reasons.len(), MAX_MODEL_REASONS);
        assert!(
            get(&failed, conditions::INTEGRITY_VERIFIED)
                .message
                .chars()
                .count()
                <= MAX_MESSAGE_CHARS
        );
    }

    #[test]
    fn the_statement_binds_the_stages_to_the_manifest_digest() {
        let spec = serde_json::from_value(json!({"source": {"uri": "file:///models/m"}})).unwrap();
        let mut att = ModelAttestation::new("m", spec);
        att.metadata.namespace = Some("ns".into());
        let r = report(passing());
        let s = build_model_status(
            Some(1),
            None,
            &Outcome::Judged(r.clone()),
            &Behaviour::NotRequested,
            at(0),
        );
        let st = statement(&att, &r, &s, None).unwrap();
        assert_eq!(st["predicateType"], PREDICATE_TYPE);
        assert_eq!(st["subject"][0]["digest"]["sha256"], "ab".repeat(32));
        assert_eq!(st["predicate"]["verdict"], "Attested");
        assert_eq!(
            st["predicate"]["report"]["stages"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
        let mut unhashed = r;
        unhashed.manifest_digest = None;
        assert!(statement(&att, &unhashed, &s, None).is_none());
    }

    fn request(result: Option<BehaviourResult>) -> BehaviourStatus {
        BehaviourStatus {
            request_id: "ab".repeat(16),
            node: "gpu-1".into(),
            nonce: "cd".repeat(32),
            evidence_digest: "sha256:ee".into(),
            manifest_digest: format!("sha256:{}", "ab".repeat(32)),
            suite_digest: "sha256:ff".into(),
            model_bytes: 10,
            requested_at: Time(at(0)),
            result,
        }
    }

    fn probe_result(passed: &[(&str, bool)], error: Option<&str>) -> BehaviourResult {
        BehaviourResult {
            passed: error.is_none() && passed.iter().all(|p| p.1),
            device: Some("cuda".into()),
            error: error.map(str::to_owned),
            probes: passed
                .iter()
                .map(|(n, ok)| lotabots_crds::model_attestation::ProbeStatus {
                    name: (*n).into(),
                    passed: *ok,
                    detail: format!("{n} observed"),
                })
                .collect(),
            finished_at: Time(at(5)),
        }
    }

    fn with(b: Behaviour) -> ModelAttestationStatus {
        build_model_status(
            Some(1),
            None,
            &Outcome::Judged(report(passing())),
            &b,
            at(10),
        )
    }

    #[test]
    fn a_pending_request_keeps_the_verdict_unknown_and_names_the_pod() {
        let s = with(Behaviour::Requested {
            request: request(None),
            timed_out: None,
        });
        let b = get(&s, conditions::BEHAVIOUR);
        assert_eq!(
            (b.status.as_str(), b.reason.as_str()),
            ("Unknown", reason::PENDING)
        );
        assert!(
            b.message.contains(&format!(
                "probe pod behaviour-probes-{} requested on node gpu-1",
                "ab".repeat(16)
            )),
            "{}",
            b.message
        );
        assert_eq!(s.verdict, Some(Verdict::Unknown));
        assert_eq!(get(&s, conditions::READY).status, "False");
        assert_eq!(get(&s, conditions::READY).reason, reason::PENDING);
        assert_eq!(s.behaviour, Some(request(None)));
    }

    #[test]
    fn passed_probes_attest_and_failed_ones_fail_naming_each_probe() {
        let ok = with(Behaviour::Requested {
            request: request(Some(probe_result(&[("a", true), ("b", true)], None))),
            timed_out: None,
        });
        let b = get(&ok, conditions::BEHAVIOUR);
        assert_eq!(
            (b.status.as_str(), b.reason.as_str()),
            ("True", reason::PROBES_PASSED)
        );
        assert_eq!(ok.verdict, Some(Verdict::Attested));
        assert_eq!(get(&ok, conditions::READY).status, "True");

        let bad = with(Behaviour::Requested {
            request: request(Some(probe_result(&[("a", true), ("b", false)], None))),
            timed_out: None,
        });
        let b = get(&bad, conditions::BEHAVIOUR);
        assert_eq!(
            (b.status.as_str(), b.reason.as_str()),
            ("False", reason::PROBES_FAILED)
        );
        assert_eq!(bad.verdict, Some(Verdict::Failed));
        assert_eq!(get(&bad, conditions::READY).reason, reason::STAGE_FAILED);
        assert_eq!(get(&bad, conditions::STALLED).status, "True");
        assert_eq!(bad.reasons, [r#"Behaviour: probe "b" failed: b observed"#]);

        let error = with(Behaviour::Requested {
            request: request(Some(probe_result(
                &[],
                Some("model refused: w.bin differs"),
            ))),
            timed_out: None,
        });
        assert_eq!(error.verdict, Some(Verdict::Failed));
        assert_eq!(error.reasons, ["Behaviour: model refused: w.bin differs"]);
    }

    #[test]
    fn a_timed_out_request_is_said_and_replaced() {
        let s = with(Behaviour::Requested {
            request: request(None),
            timed_out: Some("old0".into()),
        });
        let b = get(&s, conditions::BEHAVIOUR);
        assert_eq!(
            (b.status.as_str(), b.reason.as_str()),
            ("Unknown", reason::TIMED_OUT)
        );
        assert!(
            b.message.contains("request old0 timed out"),
            "{}",
            b.message
        );
        assert!(
            b.message.contains("requested on node gpu-1"),
            "{}",
            b.message
        );
        assert_eq!(s.verdict, Some(Verdict::Unknown));
        assert_eq!(get(&s, conditions::READY).reason, reason::TIMED_OUT);
    }

    #[test]
    fn no_node_or_no_suite_blocks_the_check() {
        let s = with(Behaviour::Blocked {
            status: cstatus::UNKNOWN,
            reason: reason::NO_ATTESTED_NODE,
            message: "no node offers 1 GPU(s)".into(),
        });
        let b = get(&s, conditions::BEHAVIOUR);
        assert_eq!(
            (b.status.as_str(), b.reason.as_str()),
            ("Unknown", reason::NO_ATTESTED_NODE)
        );
        assert_eq!(s.verdict, Some(Verdict::Unknown));
        assert_eq!(get(&s, conditions::READY).reason, reason::NO_ATTESTED_NODE);
        assert_eq!(s.behaviour, None);
        let s = with(Behaviour::Blocked {
            status: cstatus::FALSE,
            reason: reason::REFERENCE_NOT_FOUND,
            message: "spec.behaviour.probes: ConfigMap ns/probes does not exist".into(),
        });
        assert_eq!(get(&s, conditions::BEHAVIOUR).status, "False");
        assert_eq!(s.verdict, Some(Verdict::Unknown));
        assert!(
            s.reasons[0].contains("ConfigMap ns/probes"),
            "{:?}",
            s.reasons
        );
    }

    #[test]
    fn the_statement_carries_every_probe() {
        let spec = serde_json::from_value(json!({"source": {"uri": "file:///models/m"}})).unwrap();
        let att = ModelAttestation::new("m", spec);
        let r = report(passing());
        let s = with(Behaviour::Requested {
            request: request(Some(probe_result(&[("a", true)], None))),
            timed_out: None,
        });
        let all: Vec<ProbeOutcome> = (0..100)
            .map(|i| ProbeOutcome {
                name: format!("p{i}"),
                passed: true,
                detail: String::new(),
            })
            .collect();
        let st = statement(&att, &r, &s, Some(&all)).unwrap();
        let b = &st["predicate"]["behaviour"];
        assert_eq!(b["requestId"], "ab".repeat(16));
        assert_eq!(b["node"], "gpu-1");
        assert_eq!(b["evidenceDigest"], "sha256:ee");
        assert_eq!(b["suiteDigest"], "sha256:ff");
        assert_eq!(b["device"], "cuda");
        assert_eq!(b["passed"], true);
        assert_eq!(b["probes"].as_array().unwrap().len(), 100);
        let st = statement(&att, &r, &s, None).unwrap();
        assert_eq!(st["predicate"]["behaviour"]["probes"][0]["name"], "a");
        let pending = with(Behaviour::Requested {
            request: request(None),
            timed_out: None,
        });
        assert!(statement(&att, &r, &pending, None).unwrap()["predicate"]["behaviour"].is_null());
    }
}
