//! The model's licence against an allowlist of SPDX identifiers.
//!
//! Hugging Face cards spell SPDX ids in lowercase (`apache-2.0`, `cc-by-4.0`) and use
//! `other` with `license_name` for the rest, so ids are matched without regard to case,
//! then the expression is parsed by the `spdx` crate. An expression passes when some
//! choice of its `OR` branches uses allowed licences only; a `WITH` exception or a `+`
//! (or-later) counts as its base licence, since both only widen what the licensee may do.

use serde_yaml::Value;
use spdx::{Expression, LicenseId, ParseMode, identifiers::LICENSES};

use super::card::ModelCard;

/// The SPDX licence with this id, ignoring case.
pub fn license_id(id: &str) -> Option<LicenseId> {
    spdx::license_id(id).or_else(|| {
        let canonical = LICENSES
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(id.trim_end_matches('+')))?;
        spdx::license_id(canonical.name)
    })
}

/// Rewrites every identifier of an expression to its canonical case, leaving operators.
fn canonical_case(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let upper = token.to_ascii_uppercase();
        if matches!(upper.as_str(), "AND" | "OR" | "WITH") {
            out.push_str(&upper);
        } else if let Some(id) = license_id(token) {
            out.push_str(id.name);
            if token.ends_with('+') {
                out.push('+');
            }
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in expr.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | ':') {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// Checks the card's `license` against `allowed` (SPDX ids). `Err` says why it fails.
pub fn check(card: &ModelCard, allowed: &[String]) -> Result<(), String> {
    let allowed: Vec<LicenseId> = allowed.iter().filter_map(|a| license_id(a)).collect();
    let exprs: Vec<String> = match card.field("license") {
        None => return Err("the model card has no license in its front matter".into()),
        Some(Value::String(s)) => vec![s.clone()],
        // A list of licences: all of them apply.
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or("license list holds a non-string")
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("license is neither a string nor a list of strings".into()),
    };
    for expr in exprs {
        if expr.trim().eq_ignore_ascii_case("other") {
            let name = card
                .field("license_name")
                .and_then(Value::as_str)
                .unwrap_or("unnamed");
            return Err(format!(
                "licence \"other\" ({name}) is not an SPDX licence and cannot be allowed"
            ));
        }
        let parsed = Expression::parse_mode(&canonical_case(&expr), ParseMode::LAX)
            .map_err(|e| format!("licence {expr:?} is not an SPDX expression: {e}"))?;
        let ok = parsed.evaluate(|req| req.license.id().is_some_and(|id| allowed.contains(&id)));
        if !ok {
            return Err(format!("licence {expr:?} is not in the allowed licences"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(front: &str) -> ModelCard {
        ModelCard::parse(&format!("---\n{front}\n---\n")).unwrap()
    }

    fn allow(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn case_insensitive_ids_and_expressions() {
        let a = allow(&["Apache-2.0", "MIT"]);
        assert_eq!(check(&card("license: apache-2.0"), &a), Ok(()));
        assert_eq!(check(&card("license: MIT OR GPL-3.0-only"), &a), Ok(()));
        assert!(check(&card("license: mit AND gpl-3.0-only"), &a).is_err());
        assert!(
            check(&card("license: cc-by-nc-4.0"), &a)
                .unwrap_err()
                .contains("not in the allowed")
        );
        assert_eq!(check(&card("license: [mit, apache-2.0]"), &a), Ok(()));
        assert_eq!(
            check(&card("license: Apache-2.0 WITH LLVM-exception"), &a),
            Ok(())
        );
    }

    #[test]
    fn non_spdx_licences_fail_with_their_name() {
        let a = allow(&["MIT"]);
        let e = check(&card("license: other\nlicense_name: llama3"), &a).unwrap_err();
        assert!(e.contains("llama3"), "{e}");
        assert!(
            check(&card("license: openrail"), &a)
                .unwrap_err()
                .contains("not an SPDX")
        );
        assert!(
            check(&card("tags: [x]"), &a)
                .unwrap_err()
                .contains("no license")
        );
    }
}
