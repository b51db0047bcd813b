//! Serving certificates the operator issues and rotates itself, so that an install needs
//! no cert-manager: its own CA in a Secret, a certificate per service (the evidence API,
//! the webhook) renewed when a third of its lifetime is left, the CA certificate published
//! in a ConfigMap for the agents (and, under the same name, in the isolated workload pods'
//! namespace, whose pods trust the evidence API by it), and the webhook configuration's
//! `caBundle` kept current.
//!
//! The CA lives ten years and is replaced (and every certificate with it) when it would
//! expire before a certificate issued now. Whether to issue is a pure function of the
//! stored PEM and the time, so every reason to renew is tested without a cluster.
//! With `--tls-cert/--tls-key` files from cert-manager instead, none of this runs but the
//! publication of the CA to the workload namespace, from the `ca.crt` beside the
//! certificate file ([`keep_ca_file_published`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// How long the CA lives.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The Secret data keys (those of `kubernetes.io/tls` Secrets, plus the CA).
pub const CERT_KEY: &str = "tls.crt";
/// The private key's data key.
pub const KEY_KEY: &str = "tls.key";
/// The CA certificate's data key.
pub const CA_KEY: &str = "ca.crt";

/// One serving certificate.
#[derive(Clone, Debug)]
pub struct ServingCert {
    /// The Secret it is stored in.
    pub secret: String,
    /// The DNS names it serves (`SERVICE.NAMESPACE.svc`, …).
    pub dns_names: Vec<String>,
}

/// What the operator manages.
#[derive(Clone, Debug)]
pub struct PkiConfig {
    /// The namespace of the Secrets and the ConfigMap (the operator's).
    pub namespace: String,
    /// The Secret holding the CA certificate and key.
    pub ca_secret: String,
    /// The ConfigMap publishing the CA certificate (`ca.crt`) for the agents.
    pub ca_configmap: String,
    /// Further namespaces the CA ConfigMap is published in, under the same name (the
    /// isolated workload pods' namespace). A failure there does not stop the round: it is
    /// reported in [`Round::warnings`] and retried at the next one.
    pub ca_configmap_copies: Vec<String>,
    /// The serving certificates.
    pub serving: Vec<ServingCert>,
    /// The ValidatingWebhookConfiguration whose `caBundle` is kept current.
    pub webhook_configuration: Option<String>,
    /// How long a serving certificate lives.
    pub lifetime: Duration,
}

impl PkiConfig {
    /// The defaults of `config/`: CA `lotabots-ca`, ConfigMap `lotabots-operator-ca`,
    /// `lotabots-operator-tls` and `lotabots-webhook-tls` for the two Services, and the
    /// `lotabots-webhook` configuration; certificates for 90 days; the CA published in no
    /// other namespace.
    pub fn defaults(namespace: &str) -> Self {
        let names = |service: &str| {
            vec![
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ]
        };
        Self {
            namespace: namespace.into(),
            ca_secret: "lotabots-ca".into(),
            ca_configmap: "lotabots-operator-ca".into(),
            ca_configmap_copies: Vec::new(),
            serving: vec![
                ServingCert {
                    secret: "lotabots-operator-tls".into(),
                    dns_names: names("lotabots-operator"),
                },
                ServingCert {
                    secret: "lotabots-webhook-tls".into(),
                    dns_names: names("lotabots-webhook"),
                },
            ],
            webhook_configuration: Some("lotabots-webhook".into()),
            lifetime: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Whether a stored certificate is kept or issued again, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Good until then.
    Keep(Timestamp),
    /// Issue a new one, for this reason.
    Issue(String),
}

/// Decides about the CA: a new one when it is missing, unreadable, not a CA, or would
/// expire before a certificate issued now.
pub fn check_ca(
    cert_pem: Option<&[u8]>,
    key_pem: Option<&[u8]>,
    lifetime: Duration,
    now: Timestamp,
) -> Renewal {
    let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) else {
        return Renewal::Issue("no CA yet".into());
    };
    if KeyPair::from_pem(&String::from_utf8_lossy(key_pem)).is_err() {
        return Renewal::Issue("the CA key does not parse".into());
    }
    let der = match pem_der(cert_pem) {
        Ok(d) => d,
        Err(e) => return Renewal::Issue(format!("the CA certificate {e}")),
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return Renewal::Issue("the CA certificate does not parse".into());
    };
    if !cert.is_ca() {
        return Renewal::Issue("the stored CA certificate is not a CA".into());
    }
    let not_after = not_after(&cert);
    if not_after < now + lifetime {
        return Renewal::Issue(format!(
            "the CA expires {not_after}, before a certificate issued now would"
        ));
    }
    Renewal::Keep(not_after)
}

/// Decides about a serving certificate: a new one when it is missing or unreadable, not
/// issued by `ca_pem`, does not name every DNS name, or has less than a third of its
/// lifetime left.
pub fn check_leaf(
    cert_pem: Option<&[u8]>,
    ca_pem: &[u8],
    dns_names: &[String],
    lifetime: Duration,
    now: Timestamp,
) -> Renewal {
    let Some(cert_pem) = cert_pem else {
        return Renewal::Issue("no certificate yet".into());
    };
    let (Ok(der), Ok(ca_der)) = (pem_der(cert_pem), pem_der(ca_pem)) else {
        return Renewal::Issue("the certificate is not PEM".into());
    };
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(&der),
        X509Certificate::from_der(&ca_der),
    ) else {
        return Renewal::Issue("the certificate does not parse".into());
    };
    if cert.issuer() != ca.subject() || cert.verify_signature(Some(ca.public_key())).is_err() {
        return Renewal::Issue("not issued by the current CA".into());
    }
    let named: Vec<String> = cert
        .extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    if let Some(missing) = dns_names.iter().find(|d| !named.contains(d)) {
        return Renewal::Issue(format!("does not name {missing}"));
    }
    let not_after = not_after(&cert);
    if not_after < now + lifetime / 3 {
        return Renewal::Issue(format!(
            "expires {not_after}, less than a third of its lifetime away"
        ));
    }
    Renewal::Keep(not_after)
}

/// A new CA: certificate and key, PEM.
pub fn new_ca(now: Timestamp) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("lotabots CA {}", now.as_second()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_LIFETIME);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new serving certificate for `dns_names`, signed by the CA: certificate and key, PEM.
pub fn new_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    dns_names: &[String],
    now: Timestamp,
    lifetime: Duration,
) -> Result<(String, String), rcgen::Error> {
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, KeyPair::from_pem(ca_key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.distinguished_name = dn(dns_names.first().map(String::as_str).unwrap_or("lotabots"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, lifetime);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "lotabots");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, now: Timestamp, lifetime: Duration) {
    // jiff and time share the ±9999-year range, so the conversion cannot fail.
    let at = |t: Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(t.as_second())
            .expect("a timestamp within ±9999 years")
    };
    // A little back-dating absorbs clock skew between the operator and its clients.
    params.not_before = at(now - jiff::SignedDuration::from_secs(300));
    params.not_after = at(now + lifetime);
}

/// When the first certificate of a PEM text expires; `None` when it does not parse.
pub fn expiry(pem: &[u8]) -> Option<Timestamp> {
    let der = pem_der(pem).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(not_after(&cert))
}

fn not_after(cert: &X509Certificate<'_>) -> Timestamp {
    Timestamp::from_second(cert.validity().not_after.timestamp()).unwrap_or(Timestamp::MIN)
}

fn pem_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "is not text".to_string())?;
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or("is not a PEM certificate")?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&text.as_bytes()[start..])
        .map_err(|e| format!("is not PEM: {e}"))?;
    Ok(parsed.contents)
}

/// Why the certificates could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// An API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Generating a key or certificate failed.
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

/// Brings the CA, the serving certificates, the CA ConfigMap and the webhook `caBundle`
/// to what they should be at `now`; returns what changed (empty when nothing did).
pub async fn reconcile(
    client: &Client,
    cfg: &PkiConfig,
    now: Timestamp,
) -> Result<Vec<String>, PkiError> {
    Ok(reconcile_round(client, cfg, now).await?.changes)
}

/// What one [`reconcile_round`] did, and where the certificates stand after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// What changed (empty when nothing did).
    pub changes: Vec<String>,
    /// When each certificate expires, by the Secret holding it (the CA's included), as
    /// kept or issued in this round.
    pub expiries: BTreeMap<String, Timestamp>,
    /// What could not be done but did not stop the round: the CA not published in one of
    /// [`PkiConfig::ca_configmap_copies`] (namespace missing, not allowed).
    pub warnings: Vec<String>,
}

/// [`reconcile`], also reporting when each certificate expires (for
/// `lotabots_certificate_expiry_timestamp_seconds`).
pub async fn reconcile_round(
    client: &Client,
    cfg: &PkiConfig,
    now: Timestamp,
) -> Result<Round, PkiError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut changed = Vec::new();
    let mut expiries = BTreeMap::new();
    let stored_ca = secrets.get_opt(&cfg.ca_secret).await?;
    let data = |s: &Option<Secret>, k: &str| {
        s.as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
    };
    let (mut ca_cert, mut ca_key) = (data(&stored_ca, CERT_KEY), data(&stored_ca, KEY_KEY));
    if let Renewal::Issue(why) = check_ca(ca_cert.as_deref(), ca_key.as_deref(), cfg.lifetime, now)
    {
        let (cert, key) = new_ca(now)?;
        apply_secret(
            &secrets,
            &cfg.ca_secret,
            "Opaque",
            [(CERT_KEY, &cert), (KEY_KEY, &key)].into(),
        )
        .await?;
        changed.push(format!("{}: new CA ({why})", cfg.ca_secret));
        (ca_cert, ca_key) = (Some(cert.into_bytes()), Some(key.into_bytes()));
    }
    let (ca_cert, ca_key) = (
        String::from_utf8(ca_cert.unwrap_or_default()).unwrap_or_default(),
        String::from_utf8(ca_key.unwrap_or_default()).unwrap_or_default(),
    );
    if let Some(t) = expiry(ca_cert.as_bytes()) {
        expiries.insert(cfg.ca_secret.clone(), t);
    }
    for serving in &cfg.serving {
        let stored = secrets.get_opt(&serving.secret).await?;
        let leaf = data(&stored, CERT_KEY);
        let renewal = check_leaf(
            leaf.as_deref(),
            ca_cert.as_bytes(),
            &serving.dns_names,
            cfg.lifetime,
            now,
        );
        let published_ca = data(&stored, CA_KEY);
        if let Renewal::Keep(t) = renewal {
            expiries.insert(serving.secret.clone(), t);
        }
        let (cert, key, what) = match renewal {
            Renewal::Issue(why) => {
                let (cert, key) =
                    new_leaf(&ca_cert, &ca_key, &serving.dns_names, now, cfg.lifetime)?;
                if let Some(t) = expiry(cert.as_bytes()) {
                    expiries.insert(serving.secret.clone(), t);
                }
                (cert, key, format!("new certificate ({why})"))
            }
            // Kept, but the Secret's ca.crt (what clients of this service trust) lags.
            Renewal::Keep(_) if published_ca.as_deref() != Some(ca_cert.as_bytes()) => {
                let text = |b: Option<Vec<u8>>| {
                    String::from_utf8(b.unwrap_or_default()).unwrap_or_default()
                };
                (
                    text(leaf),
                    text(data(&stored, KEY_KEY)),
                    "CA certificate updated".to_owned(),
                )
            }
            Renewal::Keep(_) => continue,
        };
        apply_secret(
            &secrets,
            &serving.secret,
            "kubernetes.io/tls",
            [(CERT_KEY, &cert), (KEY_KEY, &key), (CA_KEY, &ca_cert)].into(),
        )
        .await?;
        changed.push(format!("{}: {what}", serving.secret));
    }
    if publish_ca(client, &cfg.namespace, &cfg.ca_configmap, &ca_cert).await? {
        changed.push(format!("{}: CA certificate published", cfg.ca_configmap));
    }
    let mut warnings = Vec::new();
    // The operator's own namespace is published above; a copy there would be the same
    // object.
    for ns in cfg
        .ca_configmap_copies
        .iter()
        .filter(|ns| **ns != cfg.namespace)
    {
        match publish_ca(client, ns, &cfg.ca_configmap, &ca_cert).await {
            Ok(true) => changed.push(format!(
                "{ns}/{}: CA certificate published",
                cfg.ca_configmap
            )),
            Ok(false) => {}
            Err(e) => warnings.push(not_published(ns, &cfg.ca_configmap, &e)),
        }
    }
    if let Some(name) = &cfg.webhook_configuration {
        let hooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        // Absent until it is installed: nothing to inject yet.
        if let Some(mut config) = hooks.get_opt(name).await? {
            let bundle = ByteString(ca_cert.clone().into_bytes());
            let mut stale = false;
            for hook in config.webhooks.iter_mut().flatten() {
                if hook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                    hook.client_config.ca_bundle = Some(bundle.clone());
                    stale = true;
                }
            }
            if stale {
                // A replace carries the resourceVersion: a concurrent edit is a conflict,
                // retried at the next round, never overwritten.
                hooks.replace(name, &PostParams::default(), &config).await?;
                changed.push(format!("{name}: caBundle injected"));
            }
        }
    }
    Ok(Round {
        changes: changed,
        expiries,
        warnings,
    })
}

fn not_published(namespace: &str, name: &str, e: &kube::Error) -> String {
    format!(
        "ConfigMap {namespace}/{name}: the CA certificate is not published ({e}); pods there \
         cannot verify the evidence API until it is"
    )
}

/// The ConfigMap `namespace/name` publishing the CA certificate `ca_pem` under `ca.crt`,
/// labelled as the operator's.
pub fn ca_configmap(namespace: &str, name: &str, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(managed_by()),
            ..Default::default()
        },
        data: Some([(CA_KEY.to_owned(), ca_pem.to_owned())].into()),
        ..Default::default()
    }
}

/// Publishes `ca_pem` in the ConfigMap `namespace/name` unless it holds exactly that
/// already (one `get`); otherwise creates or updates it by server-side apply (`create`,
/// and `patch` on that name). Whether it wrote.
pub async fn publish_ca(
    client: &Client,
    namespace: &str,
    name: &str,
    ca_pem: &str,
) -> Result<bool, kube::Error> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let published = configmaps.get_opt(name).await?;
    if published
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(CA_KEY))
        .map(String::as_str)
        == Some(ca_pem)
    {
        return Ok(false);
    }
    configmaps
        .patch(
            name,
            &apply_params(),
            &Patch::Apply(&typed(
                ca_configmap(namespace, name, ca_pem),
                "v1",
                "ConfigMap",
            )),
        )
        .await?;
    Ok(true)
}

/// The CA certificate to publish when the serving certificate comes from files: `ca.crt`
/// beside `cert` (as a cert-manager Secret mounted as a directory holds it).
pub fn ca_file_beside(cert: &Path) -> PathBuf {
    cert.with_file_name(CA_KEY)
}

/// The CA certificate in `path`, checked to be a PEM certificate. `Ok(None)` when there is
/// none to publish: no such file, or an empty one (cert-manager leaves `ca.crt` empty for
/// issuers, such as ACME ones, that do not know their root).
pub fn read_ca_file(path: &Path) -> Result<Option<String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "reading the CA certificate {}: {e}",
                path.display()
            ));
        }
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let der = pem_der(text.as_bytes())
        .map_err(|e| format!("the CA certificate {} {e}", path.display()))?;
    X509Certificate::from_der(&der)
        .map_err(|e| format!("the CA certificate {} does not parse: {e}", path.display()))?;
    Ok(Some(text))
}

/// How often [`keep_ca_file_published`] reads the CA file again (cert-manager rewrites it
/// in place) and checks the ConfigMaps.
pub const CA_FILE_CHECK: Duration = Duration::from_secs(60);

/// With the serving certificate from files: publishes the CA certificate in `path` as the
/// ConfigMap `name` of each of `namespaces`, every [`CA_FILE_CHECK`], for as long as it
/// runs (the leader's task; it never returns). A missing or empty file leaves nothing to
/// publish: that, like any other problem, is logged at warn once (again only when it
/// changes), and whoever installs must then provide the ConfigMaps.
pub async fn keep_ca_file_published(
    client: Client,
    path: PathBuf,
    name: String,
    namespaces: Vec<String>,
) {
    let mut last_problem: Option<String> = None;
    loop {
        let problem = match read_ca_file(&path) {
            Ok(None) => Some(format!(
                "no CA certificate at {} to publish as ConfigMap {name} in {}; provide that \
                 ConfigMap (key {CA_KEY}) or the isolated workload pods cannot verify the \
                 evidence API",
                path.display(),
                namespaces.join(", ")
            )),
            Err(e) => Some(format!("{e}; not published as ConfigMap {name}")),
            Ok(Some(ca_pem)) => {
                let mut failed = Vec::new();
                for ns in &namespaces {
                    match publish_ca(&client, ns, &name, &ca_pem).await {
                        Ok(true) => tracing::info!(
                            change = %format!("{ns}/{name}: CA certificate published from {}", path.display()),
                            "certificates"
                        ),
                        Ok(false) => {}
                        Err(e) => failed.push(not_published(ns, &name, &e)),
                    }
                }
                (!failed.is_empty()).then(|| failed.join("; "))
            }
        };
        if problem.is_some() && problem != last_problem {
            tracing::warn!(
                problem = problem.as_deref().unwrap_or_default(),
                "certificates"
            );
        }
        last_problem = problem;
        tokio::time::sleep(CA_FILE_CHECK).await;
    }
}

/// The labels of the objects the operator creates for itself (its CA, certificates and
/// keys).
pub(crate) fn managed_by() -> BTreeMap<String, String> {
    [(
        "app.kubernetes.io/managed-by".to_owned(),
        "lotabots-operator".to_owned(),
    )]
    .into()
}

fn apply_params() -> PatchParams {
    PatchParams::apply("lotabots-operator").force()
}

fn typed<T: serde::Serialize>(obj: T, api_version: &str, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    v
}

async fn apply_secret(
    secrets: &Api<Secret>,
    name: &str,
    type_: &str,
    data: BTreeMap<&str, &String>,
) -> Result<(), kube::Error> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(managed_by()),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    secrets
        .patch(
            name,
            &apply_params(),
            &Patch::Apply(&typed(secret, "v1", "Secret")),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn names() -> Vec<String> {
        vec![
            "lotabots-webhook.lotabots-system.svc".into(),
            "lotabots-webhook.lotabots-system.svc.cluster.local".into(),
        ]
    }

    fn after(t: Timestamp, d: Duration) -> Timestamp {
        t + jiff::SignedDuration::try_from(d).unwrap()
    }

    #[test]
    fn expiry_is_the_not_after_of_what_was_issued() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (ca, ca_key) = new_ca(now).unwrap();
        assert_eq!(expiry(ca.as_bytes()), Some(after(now, CA_LIFETIME)));
        let (leaf, _) = new_leaf(&ca, &ca_key, &names(), now, 90 * DAY).unwrap();
        assert_eq!(expiry(leaf.as_bytes()), Some(after(now, 90 * DAY)));
        // What check_leaf keeps is the same instant.
        assert_eq!(
            check_leaf(
                Some(leaf.as_bytes()),
                ca.as_bytes(),
                &names(),
                90 * DAY,
                now
            ),
            Renewal::Keep(after(now, 90 * DAY))
        );
        assert_eq!(expiry(b"not a certificate"), None);
    }

    #[test]
    fn a_fresh_ca_and_leaf_are_kept_until_a_third_of_the_lifetime_is_left() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (ca, ca_key) = new_ca(now).unwrap();
        assert!(matches!(
            check_ca(Some(ca.as_bytes()), Some(ca_key.as_bytes()), 90 * DAY, now),
            Renewal::Keep(_)
        ));
        let (leaf, _) = new_leaf(&ca, &ca_key, &names(), now, 90 * DAY).unwrap();
        let check = |at| check_leaf(Some(leaf.as_bytes()), ca.as_bytes(), &names(), 90 * DAY, at);
        assert!(matches!(check(after(now, 59 * DAY)), Renewal::Keep(_)));
        match check(after(now, 61 * DAY)) {
            Renewal::Issue(why) => assert!(why.contains("less than a third"), "{why}"),
            keep => panic!("kept a certificate 29 days from expiry: {keep:?}"),
        }
    }

    #[test]
    fn a_leaf_from_another_ca_or_for_other_names_is_issued_again() {
        let now = Timestamp::now();
        let (ca, ca_key) = new_ca(now).unwrap();
        let (other_ca, other_key) = new_ca(now).unwrap();
        let (foreign, _) = new_leaf(&other_ca, &other_key, &names(), now, 90 * DAY).unwrap();
        assert_eq!(
            check_leaf(
                Some(foreign.as_bytes()),
                ca.as_bytes(),
                &names(),
                90 * DAY,
                now
            ),
            Renewal::Issue("not issued by the current CA".into())
        );
        let (narrow, _) = new_leaf(&ca, &ca_key, &names()[..1], now, 90 * DAY).unwrap();
        match check_leaf(
            Some(narrow.as_bytes()),
            ca.as_bytes(),
            &names(),
            90 * DAY,
            now,
        ) {
            Renewal::Issue(why) => assert!(why.contains("svc.cluster.local"), "{why}"),
            keep => panic!("{keep:?}"),
        }
        assert_eq!(
            check_leaf(None, ca.as_bytes(), &names(), 90 * DAY, now),
            Renewal::Issue("no certificate yet".into())
        );
        assert!(matches!(
            check_leaf(Some(b"garbage"), ca.as_bytes(), &names(), 90 * DAY, now),
            Renewal::Issue(_)
        ));
    }

    #[test]
    fn the_ca_is_replaced_before_it_would_outlive_its_certificates() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (ca, key) = new_ca(now).unwrap();
        let late = after(now, CA_LIFETIME - 30 * DAY);
        assert!(matches!(
            check_ca(Some(ca.as_bytes()), Some(key.as_bytes()), 90 * DAY, late),
            Renewal::Issue(_)
        ));
        assert_eq!(
            check_ca(None, None, 90 * DAY, now),
            Renewal::Issue("no CA yet".into())
        );
        let (leaf, leaf_key) = new_leaf(&ca, &key, &names(), now, 90 * DAY).unwrap();
        assert_eq!(
            check_ca(
                Some(leaf.as_bytes()),
                Some(leaf_key.as_bytes()),
                90 * DAY,
                now
            ),
            Renewal::Issue("the stored CA certificate is not a CA".into())
        );
    }

    #[test]
    fn the_ca_configmap_publishes_the_ca_under_ca_crt_as_the_operators() {
        let (ca, _) = new_ca(Timestamp::now()).unwrap();
        let cm = ca_configmap("lotabots-workloads", "lotabots-operator-ca", &ca);
        assert_eq!(cm.metadata.name.as_deref(), Some("lotabots-operator-ca"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("lotabots-workloads"));
        assert_eq!(
            cm.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/managed-by"))
                .map(String::as_str),
            Some("lotabots-operator")
        );
        // Exactly one key, the one the workload pods project (agent launcher's CA_KEY).
        assert_eq!(
            cm.data,
            Some([("ca.crt".to_owned(), ca.clone())].into()),
            "the ConfigMap must hold the CA PEM under ca.crt and nothing else"
        );
        assert_eq!(cm.binary_data, None);
        // What is applied carries its kind, or the API server refuses the apply.
        let applied = typed(cm, "v1", "ConfigMap");
        assert_eq!(applied["kind"], "ConfigMap");
        assert_eq!(applied["apiVersion"], "v1");
        assert_eq!(applied["data"]["ca.crt"], ca.as_str());
    }

    #[test]
    fn the_defaults_publish_the_ca_in_the_operators_namespace_only() {
        let pki = PkiConfig::defaults("lotabots-system");
        assert_eq!(pki.ca_configmap, "lotabots-operator-ca");
        assert!(pki.ca_configmap_copies.is_empty());
    }

    #[test]
    fn the_ca_file_is_ca_crt_beside_the_certificate() {
        assert_eq!(
            ca_file_beside(Path::new("/etc/lotabots/tls/tls.crt")),
            Path::new("/etc/lotabots/tls/ca.crt")
        );
    }

    #[test]
    fn a_ca_file_is_published_only_when_it_holds_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        assert_eq!(read_ca_file(&path), Ok(None), "no file: nothing to publish");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read_ca_file(&path), Ok(None), "empty: nothing to publish");
        let (ca, key) = new_ca(Timestamp::now()).unwrap();
        std::fs::write(&path, &ca).unwrap();
        assert_eq!(read_ca_file(&path), Ok(Some(ca)));
        for (what, text) in [
            ("a private key", key.as_str()),
            ("garbage", "not a certificate"),
            (
                "a broken certificate",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = read_ca_file(&path).expect_err(what);
            assert!(
                err.contains(&path.display().to_string()),
                "{what}: {err} does not name the file"
            );
        }
        // A directory where the file should be: an error, not "nothing to publish".
        let err = read_ca_file(dir.path()).expect_err("a directory");
        assert!(err.contains("reading the CA certificate"), "{err}");
    }

    #[test]
    fn issued_certificates_verify_with_rustls_for_their_names() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let now = Timestamp::now();
        let (ca, ca_key) = new_ca(now).unwrap();
        let (leaf, _) = new_leaf(&ca, &ca_key, &names(), now, 90 * DAY).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(pem_der(ca.as_bytes()).unwrap()))
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf_der = CertificateDer::from(pem_der(leaf.as_bytes()).unwrap());
        let name = ServerName::try_from("lotabots-webhook.lotabots-system.svc").unwrap();
        verifier
            .verify_server_cert(&leaf_der, &[], &name, &[], UnixTime::now())
            .unwrap();
        let wrong = ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf_der, &[], &wrong, &[], UnixTime::now())
                .is_err()
        );
    }
}
