//! Node binding of agents' pods: an agent launches and deletes workload pods on its own
//! node only.
//!
//! The agent's ServiceAccount may create pods in the workload namespace (a Role there).
//! RBAC cannot say "on your own node", so this rule does: a pod created or changed by one
//! of the agents' ServiceAccounts is admitted only if
//! - it is in the workload namespace, and
//! - it is pinned to exactly one node (`spec.nodeName`, or a required node affinity with
//!   one term whose only `matchFields` requirement is `metadata.name In [<node>]`, the way
//!   the DaemonSet controller and our launcher pin pods), and
//! - that node is the one the agent's token is bound to: the API server puts the node of
//!   the pod a token is bound to into `userInfo.extra["authentication.kubernetes.io/node-name"]`
//!   (Kubernetes 1.32+). A compromised agent therefore cannot start pods on other nodes,
//!   and a token without a node (a legacy Secret token, a TokenRequest not bound to a pod)
//!   cannot start any.
//!
//! The same binding holds for deletes: the Role also lets agents delete pods there (to
//! clear their finished workload pods), so an agent's DELETE of a pod is admitted only if
//! the pod (the review's `oldObject`) is in the workload namespace and pinned to the
//! agent's node by the same rules; a scheduled pod has `spec.nodeName`. A compromised
//! agent therefore cannot delete other nodes' workload pods either. The configuration
//! sends pod deletes only for the workload namespace (`agent-pod-deletes.webhook.lotabots.io`),
//! so that a webhook outage blocks no other pod deletion in the cluster; deletes by anyone
//! else (the garbage collector, users, the operator) are allowed unread.
//!
//! An agent creating any other pod-bearing object (Deployment, Job, …) is denied too: its
//! pods would be created by a controller, not by the agent, and escape this check. The
//! rule is not a mode-able policy rule: it is always enforced for the configured
//! ServiceAccounts (an empty list turns it off).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use serde::Deserialize;
use serde_json::Value;

use crate::policy::PolicyError;
use crate::workloads::{ExtractError, PodBearingKind, extract_pod};

/// `userInfo.extra` key holding the node of the pod a ServiceAccount token is bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Default of `agentPods.serviceAccounts`: our agent DaemonSet's ServiceAccount.
pub const DEFAULT_AGENT: &str = "system:serviceaccount:lotabots-system:lotabots-agent";

/// Default of `agentPods.namespace`.
pub const DEFAULT_NAMESPACE: &str = "lotabots-workloads";

/// The `agentPods` section of the policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AgentPodsFile {
    service_accounts: Option<Vec<String>>,
    namespace: Option<String>,
}

/// The compiled `agentPods` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPods {
    /// Usernames (`system:serviceaccount:<namespace>:<name>`) of the agents.
    pub service_accounts: Vec<String>,
    /// The only namespace they may create pods in.
    pub namespace: String,
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl AgentPodsFile {
    pub(crate) fn compile(self, errs: &mut Vec<PolicyError>) -> AgentPods {
        let service_accounts = self
            .service_accounts
            .unwrap_or_else(|| vec![DEFAULT_AGENT.to_owned()]);
        for (i, sa) in service_accounts.iter().enumerate() {
            let ok = sa
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(ns, name)| {
                    is_dns_label(ns)
                        && !name.is_empty()
                        && name.len() <= 253
                        && name.split('.').all(is_dns_label)
                });
            if !ok {
                errs.push(PolicyError {
                    path: format!("agentPods.serviceAccounts[{i}]"),
                    message: format!(
                        "{sa:?} is not a ServiceAccount username such as {DEFAULT_AGENT}"
                    ),
                });
            }
        }
        let namespace = self
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        if !is_dns_label(&namespace) {
            errs.push(PolicyError {
                path: "agentPods.namespace".into(),
                message: format!("{namespace:?} is not a namespace name"),
            });
        }
        AgentPods {
            service_accounts,
            namespace,
        }
    }
}

impl Default for AgentPods {
    fn default() -> Self {
        AgentPodsFile::default().compile(&mut Vec::new())
    }
}

impl AgentPods {
    /// Whether `username` is one of the agents.
    pub fn is_agent(&self, username: &str) -> bool {
        self.service_accounts.iter().any(|s| s == username)
    }
}

/// The requester, as the AdmissionReview's `userInfo` says (kept as JSON so that an odd
/// `userInfo` never stops the decoding of a request from anyone else).
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a>(pub Option<&'a Value>);

impl<'a> Requester<'a> {
    /// `userInfo.username`.
    pub fn username(&self) -> Option<&'a str> {
        self.0?.get("username")?.as_str()
    }

    /// `userInfo.extra[key]`: `Ok(None)` when absent, an error naming the field when it is
    /// not a list of strings.
    pub fn extra(&self, key: &str) -> Result<Option<Vec<&'a str>>, String> {
        let Some(v) = self.0.and_then(|u| u.get("extra")).and_then(|e| e.get(key)) else {
            return Ok(None);
        };
        let field = format!("request.userInfo.extra[{key:?}]");
        let list = v
            .as_array()
            .ok_or_else(|| format!("{field} is not a list"))?;
        list.iter()
            .map(|x| {
                x.as_str()
                    .ok_or_else(|| format!("{field} holds a non-string"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// The node a pod is pinned to, or why it is not pinned to exactly one.
pub fn pinned_node<'a>(spec: &'a PodSpec, spec_path: &str) -> Result<&'a str, String> {
    let by_name = spec.node_name.as_deref().filter(|n| !n.is_empty());
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let by_affinity = match required {
        None => None,
        Some(sel) => {
            let at = format!(
                "{spec_path}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            );
            let [term] = sel.node_selector_terms.as_slice() else {
                return Err(format!(
                    "{at} has {} node selector terms; an agent's pod needs exactly one (terms are alternatives)",
                    sel.node_selector_terms.len()
                ));
            };
            let fields = term.match_fields.as_deref().unwrap_or_default();
            let [req] = fields else {
                return Err(format!(
                    "{at}.nodeSelectorTerms[0].matchFields has {} requirements; an agent's pod needs exactly one, on metadata.name",
                    fields.len()
                ));
            };
            let values = req.values.as_deref().unwrap_or_default();
            match (req.key.as_str(), req.operator.as_str(), values) {
                ("metadata.name", "In", [node]) => Some(node.as_str()),
                _ => {
                    return Err(format!(
                        "{at}.nodeSelectorTerms[0].matchFields[0] is {} {} {:?}; an agent's pod needs metadata.name In [<its node>]",
                        req.key, req.operator, values
                    ));
                }
            }
        }
    };
    match (by_name, by_affinity) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{spec_path}.nodeName is {a:?} but the required node affinity names {b:?}"
        )),
        (Some(n), _) | (None, Some(n)) => Ok(n),
        (None, None) => Err(format!(
            "the pod is not pinned to a node ({spec_path}.nodeName or a required node affinity on metadata.name)"
        )),
    }
}

/// What the rule decides about one request by an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Not an agent's request: the rule does not apply.
    NotAgent,
    /// An agent's pod on its own node, in the workload namespace.
    Allowed,
    /// Denied, with the reason.
    Denied(String),
}

/// What an agent does to a pod: the same binding holds for both, only the words differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodAction {
    /// CREATE (and UPDATE, which must keep the pod on the agent's node).
    Create,
    /// DELETE: an agent clears its own node's workload pods, and no other node's.
    Delete,
}

impl PodAction {
    fn verb(self) -> &'static str {
        match self {
            PodAction::Create => "create",
            PodAction::Delete => "delete",
        }
    }

    fn rule(self) -> &'static str {
        match self {
            PodAction::Create => "an agent launches pods on its own node only",
            PodAction::Delete => "an agent deletes pods on its own node only",
        }
    }
}

/// An agent's request in the workload namespace, with the node its token is bound to.
struct BoundAgent<'a> {
    user: &'a str,
    node: &'a str,
}

impl<'a> BoundAgent<'a> {
    /// `Ok(None)` when `who` is not an agent; the agent and its token's node when it acts in
    /// the workload namespace with a token bound to exactly one node; else why not.
    fn of(
        rule: &AgentPods,
        who: Requester<'a>,
        action: PodAction,
        namespace: &str,
    ) -> Result<Option<Self>, String> {
        let Some(user) = who.username().filter(|u| rule.is_agent(u)) else {
            return Ok(None);
        };
        if namespace != rule.namespace {
            return Err(format!(
                "{user} may {} pods only in namespace {:?}, not in {namespace:?}",
                action.verb(),
                rule.namespace
            ));
        }
        let node = match who.extra(NODE_NAME_EXTRA)? {
            None => {
                return Err(format!(
                    "{user}'s token is not bound to a pod on a node (no {NODE_NAME_EXTRA} in userInfo.extra); \
                     agents must use their pod-bound token"
                ));
            }
            Some(v) => match v.as_slice() {
                [n] if !n.is_empty() => *n,
                _ => {
                    return Err(format!(
                        "{user}'s token names {} nodes in {NODE_NAME_EXTRA}; expected exactly one",
                        v.len()
                    ));
                }
            },
        };
        Ok(Some(Self { user, node }))
    }

    /// Whether the pod (`spec` at `spec_path`) is pinned to this agent's node.
    fn check_pinned(&self, action: PodAction, spec: &PodSpec, spec_path: &str) -> Binding {
        let (user, token_node) = (self.user, self.node);
        match pinned_node(spec, spec_path) {
            Err(e) => Binding::Denied(format!("{user} on node {token_node:?}: {e}")),
            Ok(pod_node) if pod_node != token_node => Binding::Denied(format!(
                "{user} runs on node {token_node:?} but the pod is pinned to node {pod_node:?}; {}",
                action.rule()
            )),
            Ok(_) => Binding::Allowed,
        }
    }
}

/// Applies the rule to a pod (`spec` at `spec_path`) in `namespace`, created or changed by
/// `who`.
pub fn check_pod(
    rule: &AgentPods,
    who: Requester<'_>,
    namespace: &str,
    spec: &PodSpec,
    spec_path: &str,
) -> Binding {
    match BoundAgent::of(rule, who, PodAction::Create, namespace) {
        Ok(None) => Binding::NotAgent,
        Ok(Some(agent)) => agent.check_pinned(PodAction::Create, spec, spec_path),
        Err(why) => Binding::Denied(why),
    }
}

/// Applies the rule to the deletion by `who` of a pod in `namespace`; `old_object` is the
/// pod as stored (the AdmissionReview's `oldObject`). Nothing about it is read unless `who`
/// is an agent, so that an odd `oldObject` never blocks anyone else's delete; an agent's
/// delete of a pod that cannot be read is denied.
pub fn check_pod_delete(
    rule: &AgentPods,
    who: Requester<'_>,
    namespace: &str,
    old_object: Option<&Value>,
) -> Binding {
    let agent = match BoundAgent::of(rule, who, PodAction::Delete, namespace) {
        Ok(None) => return Binding::NotAgent,
        Ok(Some(agent)) => agent,
        Err(why) => return Binding::Denied(why),
    };
    let Some(old) = old_object.filter(|v| !v.is_null()) else {
        return Binding::Denied(format!(
            "{} on node {:?}: request.oldObject is missing, so the pod's node is unknown",
            agent.user, agent.node
        ));
    };
    let pod = extract_pod(PodBearingKind::Pod, old).and_then(|p| {
        p.ok_or(ExtractError::Missing {
            path: "spec".into(),
            kind: PodBearingKind::Pod,
        })
    });
    match pod {
        Ok(pod) => agent.check_pinned(PodAction::Delete, &pod.spec, pod.spec_path),
        Err(e) => Binding::Denied(format!(
            "{} on node {:?}: cannot read the pod being deleted (request.oldObject): {e}",
            agent.user, agent.node
        )),
    }
}

/// Applies the rule to a pod-bearing object other than a Pod (`kind`): agents create
/// pods only.
pub fn check_workload(rule: &AgentPods, who: Requester<'_>, kind: &str) -> Binding {
    match who.username().filter(|u| rule.is_agent(u)) {
        None => Binding::NotAgent,
        Some(user) => Binding::Denied(format!(
            "{user} may create pods only, not {kind} objects (their pods would not be checked against its node)"
        )),
    }
}

/// The extras of a userInfo, for tests and tools.
pub fn user_info(username: &str, extra: &BTreeMap<&str, Vec<&str>>) -> Value {
    serde_json::json!({ "username": username, "extra": extra })
}

#[cfg(test)]
mod tests;
