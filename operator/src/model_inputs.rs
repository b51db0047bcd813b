//! What the ModelAttestation stages run on, gathered from a spec: where the model's
//! files are (a `file://` URI, or a PVC mounted under [`ModelSettings::model_root`]),
//! where its signature bundle is, and the key or CA certificates it must verify against
//! (a ConfigMap or Secret key in the ModelAttestation's own namespace).
//!
//! Anything missing or malformed becomes a [`Blocked`] naming the object, key or path,
//! which the status shows; only API failures are errors (retried with backoff).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use lotabots_crds::conditions::{self, reason};
use lotabots_crds::model_attestation::{KeyReference, ModelAttestationSpec, Verdict};
use lotabots_model::attest::{Inputs, default_signature_path, policy_bundle_path};
use lotabots_model::bundle::Trust;
use lotabots_model::chain::certificates_from_pem;
use lotabots_model::keys::PublicKey;
use lotabots_model::source::{LocalSource, Location};

use crate::model_status::Blocked;

/// Default of `--model-root`: where the operator pod mounts model volumes.
pub const DEFAULT_MODEL_ROOT: &str = "/models";

/// How the ModelAttestation controller finds models and how often it looks again.
#[derive(Clone, Debug)]
pub struct ModelSettings {
    /// A PVC source is read at `<model_root>/<namespace>/<claimName>/<path>`: the
    /// operator pod mounts each claim it attests there.
    pub model_root: PathBuf,
    /// Every model is judged again this often (its files, keys and ConfigMaps can change
    /// without its spec changing).
    pub resync: Duration,
}

/// Largest PEM key or certificate chain read from a ConfigMap or Secret.
const MAX_PEM_BYTES: usize = 1 << 20;

/// The trust `spec.signature` names, read from the ModelAttestation's namespace: `Ok(None)`
/// when no signature is asked for; `Ok(Err(_))` when a reference is missing or its PEM
/// is not a key or certificate.
pub async fn read_trust(
    client: &Client,
    namespace: &str,
    spec: &ModelAttestationSpec,
) -> Result<Result<Option<Trust>, Blocked>, kube::Error> {
    let Some(sig) = &spec.signature else {
        return Ok(Ok(None));
    };
    let (field, reference, is_key) = match (&sig.public_key, &sig.certificate) {
        (Some(r), _) => ("spec.signature.publicKey", r, true),
        (None, Some(r)) => ("spec.signature.certificate", r, false),
        // validate() refuses this before we get here.
        (None, None) => {
            return Ok(Err(blocked(
                reason::INVALID_SPEC,
                "spec.signature sets neither publicKey nor certificate",
            )));
        }
    };
    let pem = match read_reference(client, namespace, reference).await? {
        Ok(pem) => pem,
        Err(message) => {
            return Ok(Err(blocked(
                reason::REFERENCE_NOT_FOUND,
                format!("{field}: {message}"),
            )));
        }
    };
    let trust = if is_key {
        PublicKey::from_pem(&pem)
            .map(Trust::PublicKey)
            .map_err(|e| e.0)
    } else {
        certificates_from_pem(pem.as_bytes()).map(|anchors| Trust::CertificateAuthorities {
            anchors,
            at: Timestamp::now(),
        })
    };
    Ok(trust
        .map(Some)
        .map_err(|e| blocked(reason::SIGNATURE_INVALID, format!("{field}: {e}"))))
}

fn blocked(why: &'static str, message: impl Into<String>) -> Blocked {
    Blocked::unknown(conditions::SIGNATURE_VERIFIED, why, message)
}

/// The PEM text a reference names; `Ok(Err(_))` names what is missing.
async fn read_reference(
    client: &Client,
    namespace: &str,
    r: &KeyReference,
) -> Result<Result<String, String>, kube::Error> {
    // A refusal is the cluster's configuration, not a passing fault: say so in the status
    // rather than retrying for ever.
    let forbidden = |kind: &str, name: &str| {
        format!(
            "the operator may not read {kind} {namespace}/{name}: grant its ServiceAccount get on {kind}s in this namespace"
        )
    };
    let (kind, name, key, value) = if let Some(s) = &r.config_map_key_ref {
        let cm = match Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(&s.name)
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Ok(Err(forbidden("ConfigMap", &s.name)));
            }
            other => other?,
        };
        let value = cm.as_ref().and_then(|cm| {
            cm.data
                .as_ref()
                .and_then(|d| d.get(&s.key).map(|v| v.as_bytes().to_vec()))
                .or_else(|| {
                    cm.binary_data
                        .as_ref()
                        .and_then(|d| d.get(&s.key).map(|v| v.0.clone()))
                })
        });
        ("ConfigMap", &s.name, &s.key, cm.map(|_| value))
    } else if let Some(s) = &r.secret_key_ref {
        let secret = match Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(&s.name)
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Ok(Err(forbidden("Secret", &s.name)));
            }
            other => other?,
        };
        let value = secret
            .as_ref()
            .and_then(|sec| sec.data.as_ref()?.get(&s.key).map(|v| v.0.clone()));
        ("Secret", &s.name, &s.key, secret.map(|_| value))
    } else {
        return Ok(Err(
            "sets neither secretKeyRef nor configMapKeyRef".to_owned()
        ));
    };
    Ok(match value {
        None => Err(format!("{kind} {namespace}/{name} does not exist")),
        Some(None) => Err(format!("{kind} {namespace}/{name} has no key {key:?}")),
        Some(Some(bytes)) if bytes.len() > MAX_PEM_BYTES => Err(format!(
            "{kind} {namespace}/{name} key {key:?} is larger than {MAX_PEM_BYTES} bytes"
        )),
        Some(Some(bytes)) => String::from_utf8(bytes)
            .map_err(|_| format!("{kind} {namespace}/{name} key {key:?} is not PEM text")),
    })
}

/// The model's location on this machine, as the report names it, and the stages' inputs;
/// reads the filesystem (run it on a blocking thread).
pub fn local_inputs(
    model_root: &Path,
    namespace: &str,
    spec: &ModelAttestationSpec,
    trust: Option<Trust>,
) -> Result<(String, Inputs), Blocked> {
    let integrity =
        |why, message: String| Blocked::unknown(conditions::INTEGRITY_VERIFIED, why, message);
    let (model, path) = match (&spec.source.uri, &spec.source.pvc) {
        (Some(uri), _) => match Location::parse(uri) {
            Ok(Location::Local(p)) => (uri.clone(), p),
            Ok(other) => {
                return Err(integrity(
                    reason::SOURCE_UNAVAILABLE,
                    format!(
                        "{other}: s3:// and gs:// model sources are not supported yet; use a file:// URI or a PVC"
                    ),
                ));
            }
            Err(e) => {
                return Err(integrity(
                    reason::INVALID_SPEC,
                    format!("spec.source.uri: {e}"),
                ));
            }
        },
        (None, Some(pvc)) => {
            let path = pvc_path(model_root, namespace, &pvc.claim_name, &pvc.path);
            (
                format!("pvc://{namespace}/{}/{}", pvc.claim_name, pvc.path),
                path,
            )
        }
        (None, None) => {
            return Err(integrity(
                reason::INVALID_SPEC,
                "spec.source sets neither uri nor pvc".into(),
            ));
        }
    };
    let source = LocalSource::new(&path).map_err(|e| {
        integrity(
            reason::SOURCE_UNAVAILABLE,
            format!("{}: {}", e.path, e.problem),
        )
    })?;
    let signature = match spec.signature.as_ref().map(|s| s.bundle.as_deref()) {
        None => None,
        Some(None) => Some(default_signature_path(&source)),
        Some(Some(b)) if b.starts_with("s3://") || b.starts_with("gs://") => {
            return Err(Blocked::unknown(
                conditions::SIGNATURE_VERIFIED,
                reason::SIGNATURE_MISSING,
                format!("spec.signature.bundle {b}: object-store bundles are not supported yet"),
            ));
        }
        Some(Some(b)) => Some(policy_bundle_path(&source, b).map_err(|e| Blocked {
            stage: Some(conditions::SIGNATURE_VERIFIED),
            reason: reason::SIGNATURE_MISSING,
            message: e.to_string(),
            verdict: Verdict::Unknown,
        })?),
    };
    Ok((
        model,
        Inputs {
            source,
            spec: Some(spec.clone()),
            trust,
            signature,
            // A bundle missing where the spec points is the model failing the signature
            // stage (SignatureMissing), not unusable input.
            signature_explicit: false,
        },
    ))
}

/// Where a PVC's model is: `<root>/<namespace>/<claim>/<path>`. The CRD refuses absolute
/// paths and `..` in `path`, and names are DNS labels, so this stays under `root`.
pub fn pvc_path(root: &Path, namespace: &str, claim: &str, path: &str) -> PathBuf {
    let mut p = root.join(namespace).join(claim);
    if !path.is_empty() {
        p.push(path);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> ModelAttestationSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn object_store_sources_are_refused_as_not_supported_yet() {
        for uri in ["s3://models/llama", "gs://models/llama"] {
            let s = spec(serde_json::json!({"source": {"uri": uri}}));
            let b = local_inputs(Path::new("/models"), "ns", &s, None).unwrap_err();
            assert_eq!(b.stage, Some(conditions::INTEGRITY_VERIFIED));
            assert_eq!(b.reason, reason::SOURCE_UNAVAILABLE);
            assert!(b.message.contains("not supported yet"), "{}", b.message);
            assert_eq!(b.verdict, Verdict::Unknown);
        }
    }

    #[test]
    fn pvc_models_are_read_under_the_model_root() {
        let dir = tempfile::tempdir().unwrap();
        let model = pvc_path(dir.path(), "team-a", "weights", "llama/8b");
        assert_eq!(model, dir.path().join("team-a/weights/llama/8b"));
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("w.safetensors"), b"x").unwrap();
        let s = spec(serde_json::json!({
            "source": {"pvc": {"claimName": "weights", "path": "llama/8b"}}
        }));
        let (name, inputs) = local_inputs(dir.path(), "team-a", &s, None).unwrap();
        assert_eq!(name, "pvc://team-a/weights/llama/8b");
        assert_eq!(inputs.source.root(), model);
        assert!(inputs.signature.is_none());
        let missing = local_inputs(dir.path(), "team-b", &s, None).unwrap_err();
        assert_eq!(missing.reason, reason::SOURCE_UNAVAILABLE);
        assert!(
            missing.message.contains("team-b/weights"),
            "{}",
            missing.message
        );
    }

    #[test]
    fn the_signature_bundle_is_located_as_the_spec_says() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.safetensors"), b"x").unwrap();
        let uri = format!("file://{}", dir.path().display());
        let key = serde_json::json!({"configMapKeyRef": {"name": "k", "key": "pub"}});
        let with = |bundle: Option<&str>| {
            let mut sig = serde_json::json!({"publicKey": key});
            if let Some(b) = bundle {
                sig["bundle"] = b.into();
            }
            spec(serde_json::json!({"source": {"uri": uri}, "signature": sig}))
        };
        let sig_of = |s: &ModelAttestationSpec| {
            local_inputs(Path::new("/unused"), "ns", s, None).map(|(_, i)| i.signature.unwrap())
        };
        assert_eq!(sig_of(&with(None)).unwrap(), dir.path().join("model.sig"));
        assert_eq!(
            sig_of(&with(Some("sigs/m.sig"))).unwrap(),
            dir.path().join("sigs/m.sig")
        );
        assert_eq!(
            sig_of(&with(Some("file:///elsewhere/m.sig"))).unwrap(),
            PathBuf::from("/elsewhere/m.sig")
        );
        let s3 = sig_of(&with(Some("s3://bucket/m.sig"))).unwrap_err();
        assert_eq!(s3.reason, reason::SIGNATURE_MISSING);
    }
}
