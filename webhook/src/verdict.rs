//! What the violations of one object add up to under the modes of the policy: denied
//! (`enforce`), allowed with warnings (`warn`), or allowed and recorded (`audit`).

use std::fmt;

use crate::evaluate::Violation;
use crate::policy::Mode;

/// Longest warning (in characters) sent back: kubectl prints each on one line, and the
/// API server drops or truncates long ones, so each is cut to fit.
pub const MAX_WARNING_CHARS: usize = 120;

/// The outcome in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Allowed, nothing to say.
    Allowed,
    /// Allowed with warnings.
    Warned,
    /// Denied.
    Denied,
}

impl Decision {
    /// Lower-case name, for output and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Warned => "warned",
            Decision::Denied => "denied",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object refused for a reason other than a policy rule: it does not decode, or it is
/// a lotabots resource with an invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status code for the AdmissionResponse status (400, 422).
    pub code: u16,
    /// Kubernetes `StatusReason` (`BadRequest`, `Invalid`).
    pub reason: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

/// Everything found about one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Rule violations, in every mode.
    pub violations: Vec<Violation>,
    /// Warnings that belong to no rule (a kind this webhook does not check).
    pub notes: Vec<String>,
    /// Set when the object is refused outside the policy rules.
    pub rejection: Option<Rejection>,
}

impl Verdict {
    /// A verdict that only rejects.
    pub fn rejected(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            rejection: Some(Rejection {
                code,
                reason,
                message: message.into(),
            }),
            ..Self::default()
        }
    }

    /// A verdict that allows with one note.
    pub fn note(note: impl Into<String>) -> Self {
        Self {
            notes: vec![note.into()],
            ..Self::default()
        }
    }

    fn in_mode(&self, mode: Mode) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.mode == mode)
    }

    /// The outcome in one word.
    pub fn decision(&self) -> Decision {
        if self.rejection.is_some() || self.in_mode(Mode::Enforce).next().is_some() {
            Decision::Denied
        } else if !self.notes.is_empty() || self.in_mode(Mode::Warn).next().is_some() {
            Decision::Warned
        } else {
            Decision::Allowed
        }
    }

    /// Whether the object is allowed.
    pub fn allowed(&self) -> bool {
        self.decision() != Decision::Denied
    }

    /// Why it is denied: the rejection, or every enforced violation naming container, volume
    /// and rule. `None` when allowed.
    pub fn denial(&self) -> Option<Rejection> {
        if let Some(r) = &self.rejection {
            return Some(r.clone());
        }
        let denied: Vec<String> = self.in_mode(Mode::Enforce).map(|v| v.to_string()).collect();
        if denied.is_empty() {
            return None;
        }
        Some(Rejection {
            code: 403,
            reason: "Forbidden",
            message: format!("denied by lotabots policy: {}", denied.join("; ")),
        })
    }

    /// The warnings to return: `warn`-mode violations and notes, each at most
    /// [`MAX_WARNING_CHARS`] characters.
    pub fn warnings(&self) -> Vec<String> {
        self.in_mode(Mode::Warn)
            .map(short_form)
            .chain(self.notes.iter().cloned())
            .map(|w| truncate_chars(&w, MAX_WARNING_CHARS))
            .collect()
    }

    /// The `audit`-mode violations, in full.
    pub fn audits(&self) -> Vec<String> {
        self.in_mode(Mode::Audit).map(|v| v.to_string()).collect()
    }
}

/// A violation without its field path, which a warning has no room for.
fn short_form(v: &Violation) -> String {
    let mut s = format!("[{}]", v.rule);
    if let Some(c) = &v.container {
        s.push_str(&format!(" container {c:?}"));
    }
    if let Some(vol) = &v.volume {
        s.push_str(&format!(" volume {vol:?}"));
    }
    s.push_str(": ");
    s.push_str(&v.message);
    s
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_by_characters() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "ab…");
        let long = "é".repeat(200);
        let t = truncate_chars(&long, MAX_WARNING_CHARS);
        assert_eq!(t.chars().count(), MAX_WARNING_CHARS);
        assert!(t.ends_with('…'));
    }
}
