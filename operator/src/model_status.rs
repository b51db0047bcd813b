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
    MAX_MODEL_REASONS, ModelAttestation, ModelAttestationStatus, Verdict,
};
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

/// The status for `outcome`, keeping each condition's transition time unless its status
/// changed since `previous`. `behaviour_requested`: `spec.behaviour` is set (behavioural
/// checks do not run yet, so the verdict cannot be `Attested` then).
pub fn build_model_status(
    generation: Option<i64>,
    previous: Option<&ModelAttestationStatus>,
    outcome: &Outcome,
    behaviour_requested: bool,
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
    let behaviour = if behaviour_requested {
        cond(
            conditions::BEHAVIOUR,
            cstatus::UNKNOWN,
            reason::PENDING,
            "behavioural checks in isolated GPU pods are not supported yet".into(),
        )
    } else {
        cond(
            conditions::BEHAVIOUR,
            cstatus::TRUE,
            reason::NOT_REQUESTED,
            "spec.behaviour is unset".into(),
        )
    };
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
            let (verdict, ready) = if !failed.is_empty() {
                let names: Vec<&str> = failed.iter().map(|s| s.stage).collect();
                (
                    Verdict::Failed,
                    (
                        cstatus::FALSE,
                        reason::STAGE_FAILED,
                        format!("failed: {}", names.join(", ")),
                    ),
                )
            } else if behaviour_requested {
                (
                    Verdict::Unknown,
                    (
                        cstatus::FALSE,
                        reason::PENDING,
                        "every stage that ran passed; the behavioural check is not supported yet"
                            .to_owned(),
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
    conds.push(behaviour);
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
    }
}

/// A stage's condition status: a stage skipped because it was not requested counts as
/// passed; one skipped for want of an earlier stage is unknown, never a pass.
fn stage_status(s: &StageResult) -> &'static str {
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
/// there is nothing to bind to.
pub fn statement(
    attestation: &ModelAttestation,
    report: &Report,
    status: &ModelAttestationStatus,
) -> Option<serde_json::Value> {
    let digest = report.manifest_digest.as_deref()?;
    let hex = digest.strip_prefix("sha256:")?;
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
        },
    }))
}

#[cfg(test)]
mod tests {
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
            false,
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
                false,
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
        let s = build_model_status(None, None, &Outcome::Judged(report(stages)), false, at(0));
        assert_eq!(get(&s, conditions::SIGNATURE_VERIFIED).status, "True");
        assert_eq!(get(&s, conditions::INTEGRITY_VERIFIED).status, "Unknown");
    }

    #[test]
    fn a_requested_behaviour_check_keeps_the_verdict_unknown() {
        let s = build_model_status(None, None, &Outcome::Judged(report(passing())), true, at(0));
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
        let s = build_model_status(Some(2), None, &Outcome::Blocked(blocked), false, at(0));
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
            false,
            at(0),
        );
        let again = build_model_status(
            Some(1),
            Some(&first),
            &Outcome::Judged(report(passing())),
            false,
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
            false,
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
        let s = build_model_status(Some(1), None, &Outcome::Judged(r.clone()), false, at(0));
        let st = statement(&att, &r, &s).unwrap();
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
        assert!(statement(&att, &unhashed, &s).is_none());
    }
}
