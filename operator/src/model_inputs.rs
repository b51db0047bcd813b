//! What the ModelAttestation stages run on, gathered from a spec: where the model's
//! files are (a `file://` URI, a PVC mounted under [`ModelSettings::model_root`], or an
//! `s3://`/`gs://` prefix read with the credentials of `spec.source.credentialsSecretRef`
//! in the ModelAttestation's own namespace — never the operator's), where its signature
//! bundle is, and the key or CA certificates it must verify against (a ConfigMap or
//! Secret key in the same namespace).
//!
//! Anything missing or malformed becomes a [`Blocked`] naming the object, key or path,
//! which the status shows; only API failures are errors (retried with backoff).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use lotabots_crds::conditions::{self, reason};
use lotabots_crds::model_attestation::{KeyReference, KeySelector, ModelAttestationSpec, Verdict};
use lotabots_model::attest::{InputError, Inputs, default_signature, locate_bundle};
use lotabots_model::bundle::Trust;
use lotabots_model::chain::certificates_from_pem;
use lotabots_model::keys::PublicKey;
use lotabots_model::remote::{Access, ObjectSource};
use lotabots_model::source::{LocalSource, Location, Source};
use tokio::runtime::Handle;

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
    let (kind, selector) = match (&r.config_map_key_ref, &r.secret_key_ref) {
        (Some(s), _) => (KeyKind::ConfigMap, s),
        (None, Some(s)) => (KeyKind::Secret, s),
        (None, None) => {
            return Ok(Err(
                "sets neither secretKeyRef nor configMapKeyRef".to_owned()
            ));
        }
    };
    Ok(read_key(client, namespace, kind, selector, MAX_PEM_BYTES)
        .await?
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                format!(
                    "{kind} {namespace}/{} key {:?} is not PEM text",
                    selector.name, selector.key
                )
            })
        }))
}

/// Where a key is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A ConfigMap (`data` or `binaryData`).
    ConfigMap,
    /// A Secret.
    Secret,
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        })
    }
}

/// The bytes of one key of a ConfigMap or Secret in `namespace`, at most `max` of them;
/// `Ok(Err(_))` names what is missing, too large, or not readable by the operator.
pub async fn read_key(
    client: &Client,
    namespace: &str,
    kind: KeyKind,
    s: &KeySelector,
    max: usize,
) -> Result<Result<Vec<u8>, String>, kube::Error> {
    // A refusal is the cluster's configuration, not a passing fault: say so in the status
    // rather than retrying for ever.
    let forbidden = || {
        format!(
            "the operator may not read {kind} {namespace}/{}: grant its ServiceAccount get on {kind}s in this namespace",
            s.name
        )
    };
    let value = match kind {
        KeyKind::ConfigMap => {
            let cm = match Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(&s.name)
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 403 => return Ok(Err(forbidden())),
                other => other?,
            };
            cm.map(|cm| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(&s.key).map(|v| v.as_bytes().to_vec()))
                    .or_else(|| {
                        cm.binary_data
                            .as_ref()
                            .and_then(|d| d.get(&s.key).map(|v| v.0.clone()))
                    })
            })
        }
        KeyKind::Secret => {
            let secret = match Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(&s.name)
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 403 => return Ok(Err(forbidden())),
                other => other?,
            };
            secret.map(|sec| {
                sec.data
                    .as_ref()
                    .and_then(|d| d.get(&s.key).map(|v| v.0.clone()))
            })
        }
    };
    let (name, key) = (&s.name, &s.key);
    Ok(match value {
        None => Err(format!("{kind} {namespace}/{name} does not exist")),
        Some(None) => Err(format!("{kind} {namespace}/{name} has no key {key:?}")),
        Some(Some(bytes)) if bytes.len() > max => Err(format!(
            "{kind} {namespace}/{name} key {key:?} is larger than {max} bytes"
        )),
        Some(Some(bytes)) => Ok(bytes),
    })
}

/// What the stages need from the API before they can run: the trust of
/// `spec.signature` and the access to an object store, read from `namespace`.
#[derive(Debug)]
pub struct Gathered {
    namespace: String,
    spec: ModelAttestationSpec,
    trust: Option<Trust>,
    access: Option<Access>,
}

impl Gathered {
    /// Reads the trust and the access `spec` names; `Ok(Err(_))` names what is missing.
    pub async fn read(
        client: &Client,
        namespace: &str,
        spec: &ModelAttestationSpec,
    ) -> Result<Result<Self, Blocked>, kube::Error> {
        let trust = match read_trust(client, namespace, spec).await? {
            Ok(trust) => trust,
            Err(blocked) => return Ok(Err(blocked)),
        };
        let access = match read_access(client, namespace, spec).await? {
            Ok(access) => access,
            Err(blocked) => return Ok(Err(blocked)),
        };
        Ok(Ok(Self {
            namespace: namespace.to_owned(),
            spec: spec.clone(),
            trust,
            access,
        }))
    }

    /// The model's name and the stages' inputs ([`inputs`]): blocks, run it on a
    /// blocking thread.
    pub fn inputs(self, model_root: &Path, handle: &Handle) -> Result<(String, Inputs), Blocked> {
        inputs(
            model_root,
            &self.namespace,
            &self.spec,
            self.trust,
            self.access.as_ref(),
            handle,
        )
    }
}

/// Largest credentials Secret value read.
const MAX_SECRET_VALUE_BYTES: usize = 64 << 10;

/// How an `s3://` or `gs://` model (and a bundle beside it) is reached: the keys of
/// `spec.source.credentialsSecretRef` (see [`lotabots_model::remote::Access`] for the
/// keys), or anonymous access without one. `Ok(None)` for a model that is not in an
/// object store; `Ok(Err(_))` names a Secret that is missing or unusable.
pub async fn read_access(
    client: &Client,
    namespace: &str,
    spec: &ModelAttestationSpec,
) -> Result<Result<Option<Access>, Blocked>, kube::Error> {
    let remote = |uri: &Option<String>| {
        uri.as_deref()
            .is_some_and(|u| u.starts_with("s3://") || u.starts_with("gs://"))
    };
    let bundle = spec.signature.as_ref().and_then(|s| s.bundle.clone());
    if !remote(&spec.source.uri) && !remote(&bundle) {
        return Ok(Ok(None));
    }
    let Some(secret_ref) = &spec.source.credentials_secret_ref else {
        return Ok(Ok(Some(Access::anonymous())));
    };
    let field = "spec.source.credentialsSecretRef";
    let blocked = |message: String| {
        Blocked::unknown(
            conditions::INTEGRITY_VERIFIED,
            reason::REFERENCE_NOT_FOUND,
            format!("{field}: {message}"),
        )
    };
    let name = &secret_ref.name;
    let secret = match Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Ok(Err(blocked(format!(
                "the operator may not read Secret {namespace}/{name}: grant its ServiceAccount get on Secrets in this namespace"
            ))));
        }
        other => other?,
    };
    let Some(secret) = secret else {
        return Ok(Err(blocked(format!(
            "Secret {namespace}/{name} does not exist"
        ))));
    };
    let mut data = std::collections::BTreeMap::new();
    for (k, v) in secret.data.unwrap_or_default() {
        if v.0.len() > MAX_SECRET_VALUE_BYTES {
            return Ok(Err(blocked(format!(
                "Secret {namespace}/{name} key {k:?} is larger than {MAX_SECRET_VALUE_BYTES} bytes"
            ))));
        }
        data.insert(k, v.0);
    }
    Ok(Access::from_secret_data(&data)
        .map(Some)
        .map_err(|e| blocked(format!("Secret {namespace}/{name} key {e}"))))
}

/// The model's location as the report names it, and the stages' inputs. Reads the
/// filesystem or lists the bucket, and blocks on `handle` for object stores: run it on
/// a blocking thread.
pub fn inputs(
    model_root: &Path,
    namespace: &str,
    spec: &ModelAttestationSpec,
    trust: Option<Trust>,
    access: Option<&Access>,
    handle: &Handle,
) -> Result<(String, Inputs), Blocked> {
    let integrity =
        |why, message: String| Blocked::unknown(conditions::INTEGRITY_VERIFIED, why, message);
    let unavailable = |path: &str, problem: &str| {
        integrity(reason::SOURCE_UNAVAILABLE, format!("{path}: {problem}"))
    };
    let connect = |loc: &Location| -> Result<Arc<dyn Source>, InputError> {
        let access = access.cloned().unwrap_or_else(Access::anonymous);
        let source = handle
            .block_on(ObjectSource::connect(loc, &access, handle.clone()))
            .map_err(|e| InputError::new(&e.path, e.problem))?;
        Ok(Arc::new(source))
    };
    let (model, location) = match (&spec.source.uri, &spec.source.pvc) {
        (Some(uri), _) => match Location::parse(uri) {
            Ok(location) => (uri.clone(), location),
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
                Location::Local(path),
            )
        }
        (None, None) => {
            return Err(integrity(
                reason::INVALID_SPEC,
                "spec.source sets neither uri nor pvc".into(),
            ));
        }
    };
    let source: Arc<dyn Source> = match &location {
        Location::Local(path) => {
            Arc::new(LocalSource::new(path).map_err(|e| unavailable(&e.path, &e.problem))?)
        }
        remote => {
            let source = handle
                .block_on(ObjectSource::connect(
                    remote,
                    access.unwrap_or(&Access::anonymous()),
                    handle.clone(),
                ))
                .map_err(|e| unavailable(&e.path, &e.problem))?;
            // An unreachable bucket or refused credentials leave the model unjudged
            // (retried soon), not failed.
            source
                .check_reachable()
                .map_err(|e| unavailable(&e.path, &e.problem))?;
            Arc::new(source)
        }
    };
    let signature = match spec.signature.as_ref().map(|s| s.bundle.as_deref()) {
        None => None,
        Some(None) => Some(default_signature(&source)),
        Some(Some(b)) => Some(
            locate_bundle(&location, &source, b, &mut |loc| connect(loc)).map_err(|e| Blocked {
                stage: Some(conditions::SIGNATURE_VERIFIED),
                reason: reason::SIGNATURE_MISSING,
                message: e.to_string(),
                verdict: Verdict::Unknown,
            })?,
        ),
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
    use lotabots_model::attest::SignatureRef;

    use super::*;

    fn spec(v: serde_json::Value) -> ModelAttestationSpec {
        serde_json::from_value(v).unwrap()
    }

    /// [`inputs`] as the controller calls it: on a blocking thread of a runtime.
    fn gather(
        root: &Path,
        namespace: &str,
        spec: &ModelAttestationSpec,
        access: Option<Access>,
    ) -> Result<(String, Inputs), Blocked> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let (root, namespace, spec) = (root.to_owned(), namespace.to_owned(), spec.clone());
        let task = rt.spawn_blocking(move || {
            inputs(&root, &namespace, &spec, None, access.as_ref(), &handle)
        });
        rt.block_on(task).unwrap()
    }

    #[test]
    fn an_unreachable_object_store_leaves_the_model_unjudged() {
        // Nothing listens on port 1: the listing fails at once.
        let access = Access::from_keys(
            |k| match k {
                "AWS_ENDPOINT_URL" | "GCS_ENDPOINT_URL" => Some("http://127.0.0.1:1".into()),
                _ => None,
            },
            false,
        )
        .unwrap();
        for uri in ["s3://models/llama", "gs://models/llama"] {
            let s = spec(serde_json::json!({"source": {"uri": uri}}));
            let b = gather(Path::new("/models"), "ns", &s, Some(access.clone())).unwrap_err();
            assert_eq!(b.stage, Some(conditions::INTEGRITY_VERIFIED));
            assert_eq!(b.reason, reason::SOURCE_UNAVAILABLE);
            assert!(b.message.starts_with(uri), "{}", b.message);
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
        let (name, inputs) = gather(dir.path(), "team-a", &s, None).unwrap();
        assert_eq!(name, "pvc://team-a/weights/llama/8b");
        assert_eq!(inputs.source.local().unwrap().root(), model);
        assert!(inputs.signature.is_none());
        let missing = gather(dir.path(), "team-b", &s, None).unwrap_err();
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
            gather(Path::new("/unused"), "ns", s, None).map(|(_, i)| match i.signature {
                Some(SignatureRef::Path(p)) => p,
                other => panic!("{other:?}"),
            })
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
    }
}
