//! The mount and container security policy: its YAML form, its validation (every error names
//! the field), and the compiled form that evaluation reads.
//!
//! ```yaml
//! apiVersion: lotabots.io/v1alpha1
//! kind: WebhookPolicy
//! exemptions:                      # apply to every rule set
//!   namespaces: [gpu-operator]
//!   serviceAccounts: [gpu-operator/nvidia-device-plugin]   # namespace/name of the pod's SA
//!   containers: []                 # container names
//! rules:
//!   hostPath:
//!     mode: enforce                # enforce | warn | audit
//!     allowed:
//!       - path: /var/log
//!         readOnly: true
//!         recursiveReadOnly: true  # every mount must say recursiveReadOnly: Enabled
//!   protectedPaths: { mode: enforce, extraPaths: [/opt/secrets] }
//!   privileged: { mode: enforce }
//!   capabilities: { mode: enforce, allowed: [NET_BIND_SERVICE] }
//!   hostNamespaces: { mode: enforce }
//!   procMount: { mode: enforce }
//!   gpuIsolation: { mode: enforce }
//!   unknownFields: { mode: warn }
//! agentPods:                       # pods created by node agents (see node_binding)
//!   serviceAccounts: [system:serviceaccount:lotabots-system:lotabots-agent]
//!   namespace: lotabots-workloads
//! ```
//!
//! A rule set left out gets its default: `enforce` (`warn` for `unknownFields`), no
//! exemptions, an empty hostPath allowlist, and Pod Security Admission's baseline
//! capability list.

use std::fmt;

use serde::Deserialize;

use crate::paths::HostPath;

/// `apiVersion` of a policy file.
pub const POLICY_API_VERSION: &str = "lotabots.io/v1alpha1";
/// `kind` of a policy file.
pub const POLICY_KIND: &str = "WebhookPolicy";

/// The capabilities Pod Security Admission's baseline level lets a container add; the
/// default of `rules.capabilities.allowed`.
pub const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What a rule set does with a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny the request (HTTP 403 in the AdmissionResponse status).
    Enforce,
    /// Allow it, with a warning the client shows.
    Warn,
    /// Allow it silently; log and count the violation.
    Audit,
}

impl Mode {
    /// Lower-case name, as in the policy file and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule sets, each with its own mode and exemptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// hostPath volumes must lie within an allowlist entry, read-only where it demands.
    HostPath,
    /// Container-runtime sockets, `/`, `/proc`, `/sys`, `/dev`, `/etc`, kubelet dirs, device nodes.
    ProtectedPaths,
    /// `securityContext.privileged: true`.
    Privileged,
    /// Added capabilities beyond the allowlist.
    Capabilities,
    /// `hostPID`, `hostIPC`, `hostNetwork`.
    HostNamespaces,
    /// `securityContext.procMount` other than `Default`.
    ProcMount,
    /// GPU-selection environment variables in a container that requests no GPU.
    GpuIsolation,
    /// Fields this webhook's Kubernetes types do not know, so it could not check them.
    UnknownFields,
}

impl Rule {
    /// Every rule set, in evaluation order.
    pub const ALL: [Rule; 8] = [
        Rule::HostPath,
        Rule::ProtectedPaths,
        Rule::Privileged,
        Rule::Capabilities,
        Rule::HostNamespaces,
        Rule::ProcMount,
        Rule::GpuIsolation,
        Rule::UnknownFields,
    ];

    /// Name as in the policy file (`rules.<name>`), messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::HostPath => "hostPath",
            Rule::ProtectedPaths => "protectedPaths",
            Rule::Privileged => "privileged",
            Rule::Capabilities => "capabilities",
            Rule::HostNamespaces => "hostNamespaces",
            Rule::ProcMount => "procMount",
            Rule::GpuIsolation => "gpuIsolation",
            Rule::UnknownFields => "unknownFields",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a policy file, naming the field (`rules.hostPath.allowed[2].path`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// Path of the field from the document root.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

// ---- the file's shape -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    exemptions: ExemptionsFile,
    #[serde(default)]
    rules: RulesFile,
    #[serde(default)]
    agent_pods: crate::node_binding::AgentPodsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExemptionsFile {
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    containers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RulesFile {
    host_path: Option<HostPathFile>,
    protected_paths: Option<ProtectedPathsFile>,
    privileged: Option<PlainRuleFile>,
    capabilities: Option<CapabilitiesFile>,
    host_namespaces: Option<PlainRuleFile>,
    proc_mount: Option<PlainRuleFile>,
    gpu_isolation: Option<PlainRuleFile>,
    unknown_fields: Option<PlainRuleFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PlainRuleFile {
    mode: Option<Mode>,
    #[serde(default)]
    exemptions: ExemptionsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HostPathFile {
    mode: Option<Mode>,
    #[serde(default)]
    exemptions: ExemptionsFile,
    #[serde(default)]
    allowed: Vec<AllowedPathFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AllowedPathFile {
    path: String,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    recursive_read_only: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProtectedPathsFile {
    mode: Option<Mode>,
    #[serde(default)]
    exemptions: ExemptionsFile,
    #[serde(default)]
    extra_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CapabilitiesFile {
    mode: Option<Mode>,
    #[serde(default)]
    exemptions: ExemptionsFile,
    allowed: Option<Vec<String>>,
}

// ---- the compiled policy ----------------------------------------------------------------

/// Who a rule set does not apply to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exemptions {
    /// Namespace names (the request's namespace, which is the immutable
    /// `kubernetes.io/metadata.name` label of the namespace).
    pub namespaces: Vec<String>,
    /// `namespace/name` of the pod's service account (`spec.serviceAccountName`, `default`
    /// when unset).
    pub service_accounts: Vec<String>,
    /// Container names (init, regular and ephemeral).
    pub containers: Vec<String>,
}

impl Exemptions {
    fn covers_pod(&self, namespace: &str, service_account: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace)
            || self.service_accounts.iter().any(|sa| {
                sa.split_once('/')
                    .is_some_and(|(ns, name)| ns == namespace && name == service_account)
            })
    }

    fn covers_container(&self, container: &str) -> bool {
        self.containers.iter().any(|c| c == container)
    }
}

/// One rule set's mode and exemptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSettings {
    /// What a violation does.
    pub mode: Mode,
    /// Who is exempt from this rule set (in addition to the policy-wide exemptions).
    pub exemptions: Exemptions,
}

/// A hostPath allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedPath {
    /// The prefix, normalised; a volume's path must equal it or lie below it by whole segments.
    pub path: HostPath,
    /// Every container's mount of the volume must be `readOnly: true`.
    pub read_only: bool,
    /// Every mount must also be `recursiveReadOnly: Enabled`, so submounts are read-only too.
    pub recursive_read_only: bool,
}

/// How a protected path matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectedMatch {
    /// Only the path itself (used for `/`, which every other protected path lies below).
    Exact,
    /// The path, everything below it, and every directory above it (mounting `/var/run`
    /// exposes `/var/run/docker.sock`).
    Tree,
}

/// A host path no pod may mount unless exempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtectedPath {
    /// Normalised path.
    pub path: HostPath,
    /// How it matches.
    pub matching: ProtectedMatch,
    /// Why it is protected, for messages.
    pub reason: &'static str,
}

/// The built-in protected paths: `(path, match, reason)`.
pub const BUILTIN_PROTECTED: &[(&str, ProtectedMatch, &str)] = &[
    ("/", ProtectedMatch::Exact, "the host's root filesystem"),
    ("/proc", ProtectedMatch::Tree, "host /proc"),
    ("/sys", ProtectedMatch::Tree, "host /sys"),
    ("/dev", ProtectedMatch::Tree, "host device nodes"),
    ("/etc", ProtectedMatch::Tree, "host configuration"),
    ("/boot", ProtectedMatch::Tree, "host kernel and boot files"),
    (
        "/var/lib/kubelet",
        ProtectedMatch::Tree,
        "kubelet directory",
    ),
    ("/run/kubelet", ProtectedMatch::Tree, "kubelet directory"),
    (
        "/var/run/kubelet",
        ProtectedMatch::Tree,
        "kubelet directory",
    ),
    (
        "/run/docker.sock",
        ProtectedMatch::Tree,
        "container-runtime socket",
    ),
    (
        "/var/run/docker.sock",
        ProtectedMatch::Tree,
        "container-runtime socket",
    ),
    ("/run/docker", ProtectedMatch::Tree, "container-runtime dir"),
    (
        "/var/run/docker",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    (
        "/var/lib/docker",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    (
        "/run/containerd",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    (
        "/var/run/containerd",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    (
        "/var/lib/containerd",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    ("/run/k3s", ProtectedMatch::Tree, "container-runtime dir"),
    (
        "/var/run/k3s",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    ("/run/crio", ProtectedMatch::Tree, "container-runtime dir"),
    (
        "/var/run/crio",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    (
        "/run/containers",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    (
        "/var/run/containers",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    (
        "/var/lib/containers",
        ProtectedMatch::Tree,
        "container-runtime dir",
    ),
    (
        "/run/cri-dockerd.sock",
        ProtectedMatch::Tree,
        "container-runtime socket",
    ),
    (
        "/var/run/cri-dockerd.sock",
        ProtectedMatch::Tree,
        "container-runtime socket",
    ),
    (
        "/run/dockershim.sock",
        ProtectedMatch::Tree,
        "container-runtime socket",
    ),
    (
        "/var/run/dockershim.sock",
        ProtectedMatch::Tree,
        "container-runtime socket",
    ),
];

/// A validated policy, ready to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Exemptions that apply to every rule set.
    pub exemptions: Exemptions,
    rules: [RuleSettings; 8],
    /// The hostPath allowlist, most specific (longest) entry first.
    pub allowed_paths: Vec<AllowedPath>,
    /// Built-in and extra protected paths.
    pub protected: Vec<ProtectedPath>,
    /// Capabilities a container may add (upper case, without `CAP_`).
    pub allowed_capabilities: Vec<String>,
    /// Which requesters are node agents, and where their pods may go
    /// ([`crate::node_binding`]).
    pub agent_pods: crate::node_binding::AgentPods,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from_yaml("{}").expect("the empty policy is valid")
    }
}

impl Policy {
    /// Parses and validates a policy file; every error names its field.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyErrors> {
        let de = serde_yaml::Deserializer::from_str(text);
        let file: PolicyFile = match serde_path_to_error::deserialize(de) {
            Ok(f) => f,
            Err(e) => {
                let path = e.path().to_string();
                // `.` is the root; an unknown key that is empty or blank at the root gives
                // a blank path (found by fuzzing: `{!` named no field).
                let path = if path == "." || path.trim().is_empty() {
                    "(document)".to_string()
                } else {
                    path
                };
                return Err(PolicyErrors(vec![PolicyError::new(
                    path,
                    e.into_inner().to_string(),
                )]));
            }
        };
        compile(file)
    }

    /// The settings of one rule set.
    pub fn rule(&self, rule: Rule) -> &RuleSettings {
        &self.rules[rule.index()]
    }

    /// Whether `rule` does not apply to a pod in `namespace` running as `service_account`.
    pub fn pod_exempt(&self, rule: Rule, namespace: &str, service_account: &str) -> bool {
        self.exemptions.covers_pod(namespace, service_account)
            || self.rules[rule.index()]
                .exemptions
                .covers_pod(namespace, service_account)
    }

    /// Whether `rule` does not apply to the container named `container`.
    pub fn container_exempt(&self, rule: Rule, container: &str) -> bool {
        self.exemptions.covers_container(container)
            || self.rules[rule.index()]
                .exemptions
                .covers_container(container)
    }

    /// The most specific allowlist entry that contains `path`.
    pub fn allowlist_entry(&self, path: &HostPath) -> Option<&AllowedPath> {
        self.allowed_paths.iter().find(|a| path.is_within(&a.path))
    }

    /// The protected path `path` touches (is, lies below, or lies above), if any.
    pub fn protected_entry(&self, path: &HostPath) -> Option<&ProtectedPath> {
        self.protected.iter().find(|p| match p.matching {
            ProtectedMatch::Exact => *path == p.path,
            ProtectedMatch::Tree => path.is_within(&p.path) || p.path.is_within(path),
        })
    }

    /// Whether the capability (already normalised) may be added.
    pub fn capability_allowed(&self, cap: &str) -> bool {
        self.allowed_capabilities.iter().any(|c| c == cap)
    }
}

/// Upper case, without a `CAP_` prefix: the form capabilities are compared in.
pub fn normalise_capability(cap: &str) -> String {
    let up = cap.trim().to_ascii_uppercase();
    match up.strip_prefix("CAP_") {
        Some(rest) => rest.to_string(),
        None => up,
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn compile_exemptions(f: ExemptionsFile, at: &str, errs: &mut Vec<PolicyError>) -> Exemptions {
    for (i, ns) in f.namespaces.iter().enumerate() {
        if !is_dns_label(ns) {
            errs.push(PolicyError::new(
                format!("{at}.namespaces[{i}]"),
                format!("{ns:?} is not a namespace name"),
            ));
        }
    }
    for (i, sa) in f.service_accounts.iter().enumerate() {
        let ok = sa
            .split_once('/')
            .is_some_and(|(ns, name)| is_dns_label(ns) && is_dns_subdomain(name));
        if !ok {
            errs.push(PolicyError::new(
                format!("{at}.serviceAccounts[{i}]"),
                format!("{sa:?} is not namespace/name of a service account"),
            ));
        }
    }
    for (i, c) in f.containers.iter().enumerate() {
        if !is_dns_label(c) {
            errs.push(PolicyError::new(
                format!("{at}.containers[{i}]"),
                format!("{c:?} is not a container name"),
            ));
        }
    }
    Exemptions {
        namespaces: f.namespaces,
        service_accounts: f.service_accounts,
        containers: f.containers,
    }
}

fn settings(
    mode: Option<Mode>,
    exemptions: ExemptionsFile,
    default: Mode,
    at: &str,
    errs: &mut Vec<PolicyError>,
) -> RuleSettings {
    RuleSettings {
        mode: mode.unwrap_or(default),
        exemptions: compile_exemptions(exemptions, &format!("{at}.exemptions"), errs),
    }
}

fn plain(
    f: Option<PlainRuleFile>,
    rule: Rule,
    default: Mode,
    errs: &mut Vec<PolicyError>,
) -> RuleSettings {
    let f = f.unwrap_or_default();
    settings(
        f.mode,
        f.exemptions,
        default,
        &format!("rules.{rule}"),
        errs,
    )
}

fn compile(file: PolicyFile) -> Result<Policy, PolicyErrors> {
    let mut errs = Vec::new();
    if let Some(v) = &file.api_version
        && v != POLICY_API_VERSION
    {
        errs.push(PolicyError::new(
            "apiVersion",
            format!("{v:?} is not {POLICY_API_VERSION:?}"),
        ));
    }
    if let Some(k) = &file.kind
        && k != POLICY_KIND
    {
        errs.push(PolicyError::new(
            "kind",
            format!("{k:?} is not {POLICY_KIND:?}"),
        ));
    }
    let exemptions = compile_exemptions(file.exemptions, "exemptions", &mut errs);
    let agent_pods = file.agent_pods.compile(&mut errs);
    let r = file.rules;

    // Protected paths first: the allowlist is checked against them.
    let pp = r.protected_paths.unwrap_or_default();
    let protected_settings = settings(
        pp.mode,
        pp.exemptions,
        Mode::Enforce,
        "rules.protectedPaths",
        &mut errs,
    );
    let mut protected: Vec<ProtectedPath> = BUILTIN_PROTECTED
        .iter()
        .map(|(p, m, reason)| ProtectedPath {
            path: HostPath::parse(p).expect("built-in paths are absolute"),
            matching: *m,
            reason,
        })
        .collect();
    for (i, raw) in pp.extra_paths.iter().enumerate() {
        match HostPath::parse(raw) {
            Ok(path) if path.is_root() => protected.push(ProtectedPath {
                path,
                matching: ProtectedMatch::Exact,
                reason: "protected by policy",
            }),
            Ok(path) => protected.push(ProtectedPath {
                path,
                matching: ProtectedMatch::Tree,
                reason: "protected by policy",
            }),
            Err(e) => errs.push(PolicyError::new(
                format!("rules.protectedPaths.extraPaths[{i}]"),
                e.to_string(),
            )),
        }
    }

    let hp = r.host_path.unwrap_or_default();
    let host_path_settings = settings(
        hp.mode,
        hp.exemptions,
        Mode::Enforce,
        "rules.hostPath",
        &mut errs,
    );
    let mut allowed_paths = Vec::with_capacity(hp.allowed.len());
    for (i, a) in hp.allowed.into_iter().enumerate() {
        let at = format!("rules.hostPath.allowed[{i}]");
        let path = match HostPath::parse(&a.path) {
            Ok(p) => p,
            Err(e) => {
                errs.push(PolicyError::new(format!("{at}.path"), e.to_string()));
                continue;
            }
        };
        if let Some(p) = protected.iter().find(|p| match p.matching {
            ProtectedMatch::Exact => path == p.path,
            ProtectedMatch::Tree => path.is_within(&p.path),
        }) {
            errs.push(PolicyError::new(
                format!("{at}.path"),
                format!(
                    "{path} is within protected {} ({}), which stays denied; exempt the \
                     workload from rules.protectedPaths instead",
                    p.path, p.reason
                ),
            ));
        }
        if a.recursive_read_only && !a.read_only {
            errs.push(PolicyError::new(
                format!("{at}.recursiveReadOnly"),
                "needs readOnly: true (Kubernetes allows recursiveReadOnly only on read-only mounts)",
            ));
        }
        if allowed_paths.iter().any(|x: &AllowedPath| x.path == path) {
            errs.push(PolicyError::new(
                format!("{at}.path"),
                format!("{path} is listed twice"),
            ));
        }
        allowed_paths.push(AllowedPath {
            path,
            read_only: a.read_only,
            recursive_read_only: a.recursive_read_only,
        });
    }
    // Most specific first, so the first match is the longest prefix.
    allowed_paths.sort_by_key(|a| std::cmp::Reverse(a.path.as_str().len()));

    let caps = r.capabilities.unwrap_or_default();
    let cap_settings = settings(
        caps.mode,
        caps.exemptions,
        Mode::Enforce,
        "rules.capabilities",
        &mut errs,
    );
    let allowed_capabilities = match caps.allowed {
        None => BASELINE_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                let n = normalise_capability(c);
                let valid = !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                if !valid {
                    errs.push(PolicyError::new(
                        format!("rules.capabilities.allowed[{i}]"),
                        format!("{c:?} is not a capability name such as NET_BIND_SERVICE"),
                    ));
                } else if n == "ALL" {
                    errs.push(PolicyError::new(
                        format!("rules.capabilities.allowed[{i}]"),
                        "ALL would allow every capability; set rules.capabilities.mode or \
                         exemptions instead",
                    ));
                } else {
                    out.push(n);
                }
            }
            out
        }
    };

    let rules = [
        host_path_settings,
        protected_settings,
        plain(r.privileged, Rule::Privileged, Mode::Enforce, &mut errs),
        cap_settings,
        plain(
            r.host_namespaces,
            Rule::HostNamespaces,
            Mode::Enforce,
            &mut errs,
        ),
        plain(r.proc_mount, Rule::ProcMount, Mode::Enforce, &mut errs),
        plain(
            r.gpu_isolation,
            Rule::GpuIsolation,
            Mode::Enforce,
            &mut errs,
        ),
        plain(r.unknown_fields, Rule::UnknownFields, Mode::Warn, &mut errs),
    ];
    if errs.is_empty() {
        Ok(Policy {
            exemptions,
            rules,
            allowed_paths,
            protected,
            allowed_capabilities,
            agent_pods,
        })
    } else {
        Err(PolicyErrors(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_paths(yaml: &str) -> Vec<String> {
        Policy::from_yaml(yaml)
            .expect_err("policy should be invalid")
            .0
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn empty_policy_is_strict() {
        let p = Policy::default();
        for r in Rule::ALL {
            let want = if r == Rule::UnknownFields {
                Mode::Warn
            } else {
                Mode::Enforce
            };
            assert_eq!(p.rule(r).mode, want, "{r}");
        }
        assert!(p.allowed_paths.is_empty());
        assert!(p.capability_allowed("NET_BIND_SERVICE"));
        assert!(!p.capability_allowed("SYS_ADMIN"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("apiVersion: v1", "apiVersion"),
            ("kind: Policy", "kind"),
            ("rules: {hostPath: {mode: block}}", "rules.hostPath.mode"),
            (
                "rules: {hostPath: {allowed: [{path: var/log}]}}",
                "rules.hostPath.allowed[0].path",
            ),
            (
                "rules: {hostPath: {allowed: [{path: /a}, {pth: /b}]}}",
                "rules.hostPath.allowed[1].pth",
            ),
            (
                "rules: {hostPath: {allowed: [{path: /etc/ssl}]}}",
                "rules.hostPath.allowed[0].path",
            ),
            (
                "rules: {hostPath: {allowed: [{path: /var/run/containerd/x}]}}",
                "rules.hostPath.allowed[0].path",
            ),
            (
                "rules: {hostPath: {allowed: [{path: /}]}}",
                "rules.hostPath.allowed[0].path",
            ),
            (
                "rules: {hostPath: {allowed: [{path: /a, recursiveReadOnly: true}]}}",
                "rules.hostPath.allowed[0].recursiveReadOnly",
            ),
            (
                "rules: {hostPath: {allowed: [{path: /a}, {path: /a/}]}}",
                "rules.hostPath.allowed[1].path",
            ),
            (
                "rules: {capabilities: {allowed: [NET_RAW, 'bad cap']}}",
                "rules.capabilities.allowed[1]",
            ),
            (
                "rules: {capabilities: {allowed: [ALL]}}",
                "rules.capabilities.allowed[0]",
            ),
            (
                "rules: {protectedPaths: {extraPaths: [relative]}}",
                "rules.protectedPaths.extraPaths[0]",
            ),
            (
                "exemptions: {namespaces: [Bad_NS]}",
                "exemptions.namespaces[0]",
            ),
            (
                "exemptions: {serviceAccounts: [noslash]}",
                "exemptions.serviceAccounts[0]",
            ),
            (
                "rules: {privileged: {exemptions: {containers: ['']}}}",
                "rules.privileged.exemptions.containers[0]",
            ),
            (
                "rules: {gpuIsolation: {mode: enforce, extra: 1}}",
                "rules.gpuIsolation.extra",
            ),
            ("rulez: {}", "rulez"),
            ("[1, 2]", "(document)"),
            // Fuzzing regressions (webhook/fuzz, policy_yaml): an empty or blank unknown
            // key at the root gave an error with an empty path.
            ("{!", "(document)"),
            ("'': 1", "(document)"),
            ("' ': 1", "(document)"),
        ];
        for (yaml, want) in cases {
            let paths = err_paths(yaml);
            assert!(
                paths.iter().any(|p| p == want),
                "{yaml}: wanted an error at {want}, got {paths:?}"
            );
        }
    }

    #[test]
    fn valid_policy_compiles() {
        let p = Policy::from_yaml(
            r#"
apiVersion: lotabots.io/v1alpha1
kind: WebhookPolicy
exemptions: {namespaces: [gpu-operator], serviceAccounts: [infra/node-agent]}
rules:
  hostPath:
    mode: warn
    allowed:
      - {path: /data, readOnly: false}
      - {path: /data/models/, readOnly: true, recursiveReadOnly: true}
  capabilities: {allowed: [cap_net_raw]}
"#,
        )
        .unwrap();
        assert_eq!(p.rule(Rule::HostPath).mode, Mode::Warn);
        let e = p
            .allowlist_entry(&HostPath::parse("/data/models/llama").unwrap())
            .unwrap();
        assert!(e.recursive_read_only, "most specific entry wins");
        let e = p
            .allowlist_entry(&HostPath::parse("/data/scratch").unwrap())
            .unwrap();
        assert!(!e.read_only);
        assert!(
            p.allowlist_entry(&HostPath::parse("/datasets").unwrap())
                .is_none()
        );
        assert_eq!(p.allowed_capabilities, vec!["NET_RAW".to_string()]);
        assert!(p.pod_exempt(Rule::Privileged, "gpu-operator", "x"));
        assert!(p.pod_exempt(Rule::Privileged, "infra", "node-agent"));
        assert!(!p.pod_exempt(Rule::Privileged, "other", "node-agent"));
    }

    #[test]
    fn protected_touches_above_and_below() {
        let p = Policy::default();
        let hit = |s: &str| p.protected_entry(&HostPath::parse(s).unwrap()).is_some();
        for denied in [
            "/",
            "//",
            "/var",
            "/var/",
            "/run",
            "/var/run",
            "/run/containerd",
            "/run/containerd/containerd.sock",
            "/var/run/containerd/containerd.sock",
            "/run/crio/crio.sock",
            "/var/run/crio/crio.sock",
            "/run/cri-dockerd.sock",
            "/var/run/cri-dockerd.sock",
            "/run/docker.sock",
            "/var/run/docker.sock",
            "/proc",
            "/proc/1/root",
            "/sys/fs/cgroup",
            "/dev",
            "/dev/nvidia0",
            "/etc",
            "/etc/kubernetes/pki",
            "/var/lib",
            "/var/lib/kubelet",
            "/var/lib/kubelet/pods",
            "/data/../etc",
        ] {
            assert!(hit(denied), "{denied} should be protected");
        }
        for allowed in [
            "/var/log",
            "/data",
            "/etcd-backup",
            "/devices",
            "/var/lib/kubeletx",
            "/run/nvidia/driver",
            "/var/run/dockerx",
            "/tmp",
        ] {
            assert!(!hit(allowed), "{allowed} should not be protected");
        }
    }
}
