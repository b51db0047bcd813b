//! `lotabots-operator token verify TOKEN --jwks URL|FILE`: an attestation token checked
//! offline, for CI pipelines and relying parties.
//!
//! Exit codes, as the project's other offline commands: 0 the token is valid and its
//! verdict is `Attested`; 1 it is invalid (signature, key, algorithm, time, issuer,
//! audience) or its verdict is not `Attested`; 2 unusable input (the JWKS cannot be read).

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use lotabots_crds::gpu_attestation::Verdict;

use super::jwks::{self, JwksSource};
use super::{AttestationClaims, Expectations};

/// What to check.
#[derive(Clone, Debug)]
pub struct TokenVerifyArgs {
    /// The compact JWS.
    pub token: String,
    /// Where the operator's keys are.
    pub jwks: JwksSource,
    /// PEM CA bundle to trust for an `https://` JWKS besides the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Required audience.
    pub audience: Option<String>,
    /// Clock skew tolerated.
    pub leeway: Duration,
}

/// The outcome: valid claims, or why not.
#[derive(Debug)]
pub enum Outcome {
    /// Signature, key and times hold.
    Valid(Box<AttestationClaims>),
    /// Refused, with the reason.
    Invalid(super::jwt::JwtError),
}

impl Outcome {
    /// 0 valid and attested, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Valid(c) if c.verdict == Verdict::Attested => 0,
            _ => 1,
        }
    }

    /// The table view.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        match self {
            Outcome::Invalid(e) => {
                let _ = writeln!(s, "TOKEN     invalid ({})", e.label());
                let _ = writeln!(s, "REASON    {e}");
            }
            Outcome::Valid(c) => {
                let time = |t: i64| {
                    Timestamp::from_second(t)
                        .map(|t| t.to_string())
                        .unwrap_or_else(|_| t.to_string())
                };
                let _ = writeln!(s, "TOKEN     valid");
                let _ = writeln!(s, "VERDICT   {}", c.verdict);
                let _ = writeln!(s, "SUBJECT   {} ({:?})", c.sub, c.subject_kind);
                let _ = writeln!(s, "ISSUER    {}", c.iss);
                let _ = writeln!(s, "ISSUED    {}", time(c.iat));
                let _ = writeln!(s, "EXPIRES   {}", time(c.exp));
                if let Some(d) = &c.evidence_digest {
                    let _ = writeln!(s, "EVIDENCE  {d}");
                }
                if let Some(n) = &c.eat_nonce {
                    let _ = writeln!(s, "NONCE     {n}");
                }
                for g in &c.gpus {
                    let _ = writeln!(s, "GPU       {g}");
                }
                for a in &c.attestations {
                    let _ = writeln!(s, "FROM      {a}");
                }
                for r in &c.reasons {
                    let _ = writeln!(s, "REASON    {r}");
                }
            }
        }
        s
    }

    /// The JSON view: `{valid, error?, reason?, claims?}`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Outcome::Valid(c) => serde_json::json!({"valid": true, "claims": c}),
            Outcome::Invalid(e) => {
                serde_json::json!({"valid": false, "error": e.label(), "reason": e.to_string()})
            }
        }
    }
}

/// Reads the key set and verifies the token; `Err` is unusable input (exit 2).
pub async fn verify(args: &TokenVerifyArgs) -> Result<Outcome, String> {
    let ca = match &args.ca {
        Some(p) => {
            Some(std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?)
        }
        None => None,
    };
    let http = jwks::http_client(ca.as_deref())?;
    let keys = args.jwks.load(&http).await.map_err(|e| e.to_string())?;
    if keys.keys.is_empty() {
        return Err(format!("JWKS {}: holds no usable key", args.jwks));
    }
    let expect = Expectations {
        issuer: args.issuer.clone(),
        audience: args.audience.clone(),
        leeway: args.leeway,
    };
    Ok(match super::verify(args.token.trim(), &keys, &expect) {
        Ok(claims) => Outcome::Valid(Box::new(claims)),
        Err(e) => Outcome::Invalid(e),
    })
}
