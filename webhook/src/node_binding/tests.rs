use super::*;
use crate::admission::review_body;
use crate::policy::Policy;
use serde_json::json;

const AGENT: &str = "system:serviceaccount:lotabots-system:lotabots-agent";

fn pinned_spec(node: &str) -> Value {
    json!({
        "serviceAccountName": "lotabots-workload",
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [node]}
            ]}]
        }}},
        "containers": [{"name": "workload", "image": "x"}]
    })
}

fn review(user_info: Value, namespace: &str, kind: (&str, &str), object: Value) -> Vec<u8> {
    review_of("CREATE", user_info, namespace, kind, object, Value::Null)
}

/// A review of `operation`, with `object` and `oldObject`.
fn review_of(
    operation: &str,
    user_info: Value,
    namespace: &str,
    kind: (&str, &str),
    object: Value,
    old_object: Value,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
            "name": "p",
            "namespace": namespace,
            "operation": operation,
            "userInfo": user_info,
            "object": object,
            "oldObject": old_object,
        }
    }))
    .unwrap()
}

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
}

fn agent_on(node: &str) -> Value {
    json!({"username": AGENT, "extra": {NODE_NAME_EXTRA: [node]}})
}

/// (allowed, message) of the default policy's answer.
fn decide(user_info: Value, namespace: &str, spec: Value) -> (bool, String) {
    answer(&review(user_info, namespace, ("", "Pod"), pod(spec)))
}

/// (allowed, message) of the default policy's answer to the DELETE of the pod `old` (the
/// review's `oldObject`; `object` is null, as the API server sends it).
fn decide_delete(user_info: Value, namespace: &str, old: Value) -> (bool, String) {
    answer(&review_of(
        "DELETE",
        user_info,
        namespace,
        ("", "Pod"),
        Value::Null,
        old,
    ))
}

/// A scheduled pod, as stored: on `node` by `spec.nodeName`, with the launcher's affinity.
fn scheduled_on(node: &str) -> Value {
    let mut spec = pinned_spec(node);
    spec["nodeName"] = json!(node);
    pod(spec)
}

fn answer(body: &[u8]) -> (bool, String) {
    let r = review_body(&Policy::default(), body).expect("decodes");
    let resp = r.response.response;
    (
        resp.allowed,
        resp.status
            .map(|s| format!("{} {}", s.code, s.message))
            .unwrap_or_default(),
    )
}

#[test]
fn an_agent_may_create_a_pod_on_its_own_node() {
    let (ok, why) = decide(
        agent_on("node-a"),
        "lotabots-workloads",
        pinned_spec("node-a"),
    );
    assert!(ok, "{why}");
    let mut by_name = json!({"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]});
    assert!(decide(agent_on("node-a"), "lotabots-workloads", by_name.clone()).0);
    // nodeName and affinity agreeing is fine too.
    by_name["affinity"] = pinned_spec("node-a")["affinity"].clone();
    assert!(decide(agent_on("node-a"), "lotabots-workloads", by_name).0);
}

#[test]
fn an_agent_may_not_create_a_pod_for_another_node() {
    let (ok, why) = decide(
        agent_on("node-a"),
        "lotabots-workloads",
        pinned_spec("node-b"),
    );
    assert!(!ok);
    assert!(why.starts_with("403 "), "{why}");
    assert!(
        why.contains("runs on node \"node-a\"") && why.contains("pinned to node \"node-b\""),
        "names both nodes: {why}"
    );
    let (ok, why) = decide(
        agent_on("node-a"),
        "lotabots-workloads",
        json!({"nodeName": "node-b", "containers": [{"name": "c", "image": "x"}]}),
    );
    assert!(!ok && why.contains("node-b"), "{why}");
}

#[test]
fn an_agent_may_create_pods_only_in_the_workload_namespace() {
    let (ok, why) = decide(agent_on("node-a"), "default", pinned_spec("node-a"));
    assert!(!ok);
    assert!(
        why.contains("only in namespace \"lotabots-workloads\", not in \"default\""),
        "{why}"
    );
}

#[test]
fn an_unpinned_or_loosely_pinned_pod_is_denied() {
    let unpinned = json!({"containers": [{"name": "c", "image": "x"}]});
    let (ok, why) = decide(agent_on("node-a"), "lotabots-workloads", unpinned);
    assert!(!ok && why.contains("not pinned to a node"), "{why}");

    let mut two_terms = pinned_spec("node-a");
    let term = two_terms["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        .clone();
    let mut other = term.clone();
    other["matchFields"][0]["values"] = json!(["node-b"]);
    two_terms["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] =
        json!([term, other]);
    let (ok, why) = decide(agent_on("node-a"), "lotabots-workloads", two_terms);
    assert!(!ok && why.contains("2 node selector terms"), "{why}");

    let mut two_values = pinned_spec("node-a");
    two_values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        [0]["matchFields"][0]["values"] = json!(["node-a", "node-b"]);
    let (ok, why) = decide(agent_on("node-a"), "lotabots-workloads", two_values);
    assert!(
        !ok && why.contains("metadata.name In [<its node>]"),
        "{why}"
    );

    let mut not_in = pinned_spec("node-b");
    not_in["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        [0]["matchFields"][0]["operator"] = json!("NotIn");
    let (ok, why) = decide(agent_on("node-a"), "lotabots-workloads", not_in);
    assert!(!ok && why.contains("NotIn"), "{why}");

    let mut disagree = pinned_spec("node-a");
    disagree["nodeName"] = json!("node-b");
    let (ok, why) = decide(agent_on("node-a"), "lotabots-workloads", disagree);
    assert!(!ok && why.contains("nodeName is \"node-b\""), "{why}");
}

#[test]
fn an_agent_token_without_exactly_one_node_is_denied() {
    let (ok, why) = decide(
        json!({"username": AGENT}),
        "lotabots-workloads",
        pinned_spec("node-a"),
    );
    assert!(!ok && why.contains("not bound to a pod on a node"), "{why}");
    let two = json!({"username": AGENT, "extra": {NODE_NAME_EXTRA: ["node-a", "node-b"]}});
    let (ok, why) = decide(two, "lotabots-workloads", pinned_spec("node-a"));
    assert!(!ok && why.contains("names 2 nodes"), "{why}");
    let empty = json!({"username": AGENT, "extra": {NODE_NAME_EXTRA: [""]}});
    assert!(!decide(empty, "lotabots-workloads", pinned_spec("")).0);
}

#[test]
fn hostile_user_info_gets_a_clear_error_and_others_are_unaffected() {
    let not_list = json!({"username": AGENT, "extra": {NODE_NAME_EXTRA: "node-a"}});
    let (ok, why) = decide(not_list, "lotabots-workloads", pinned_spec("node-a"));
    assert!(!ok && why.contains("is not a list"), "{why}");
    let not_strings = json!({"username": AGENT, "extra": {NODE_NAME_EXTRA: [1]}});
    let (ok, why) = decide(not_strings, "lotabots-workloads", pinned_spec("node-a"));
    assert!(!ok && why.contains("non-string"), "{why}");
    // Someone else with a malformed userInfo: the rule does not apply, the pod is judged
    // on its spec alone.
    for odd in [
        json!("alice"),
        json!({"username": 7}),
        json!({"extra": []}),
        Value::Null,
    ] {
        let (ok, why) = decide(odd, "apps", pinned_spec("node-b"));
        assert!(ok, "{why}");
    }
}

#[test]
fn other_users_are_not_bound_to_a_node() {
    let alice = json!({"username": "alice", "extra": {NODE_NAME_EXTRA: ["node-a"]}});
    assert!(decide(alice, "lotabots-workloads", pinned_spec("node-b")).0);
    let other_sa = json!({"username": "system:serviceaccount:x:lotabots-agent"});
    assert!(decide(other_sa, "default", pinned_spec("node-b")).0);
}

#[test]
fn an_agent_may_not_create_workload_objects() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {}, "template": {"spec": pinned_spec("node-a")}}
    });
    let body = review(
        agent_on("node-a"),
        "lotabots-workloads",
        ("apps", "Deployment"),
        deployment,
    );
    let r = review_body(&Policy::default(), &body).unwrap();
    let status = r.response.response.status.expect("denied");
    assert_eq!(status.code, 403);
    assert!(
        status.message.contains("not Deployment objects"),
        "{}",
        status.message
    );
    // Also where workload violations only warn (the workloads endpoint).
    let r = crate::admission::review_body_with(
        &Policy::default(),
        &body,
        crate::admission::WorkloadEnforcement::Warn,
    )
    .unwrap();
    assert!(
        !r.response.response.allowed,
        "an agent's Deployment is denied, not warned"
    );
}

#[test]
fn the_rule_is_configured_in_the_policy() {
    let p = Policy::from_yaml(
        "agentPods: {serviceAccounts: ['system:serviceaccount:gpu:agent'], namespace: gpu-jobs}",
    )
    .unwrap();
    assert_eq!(p.agent_pods.namespace, "gpu-jobs");
    assert!(p.agent_pods.is_agent("system:serviceaccount:gpu:agent"));
    assert!(!p.agent_pods.is_agent(AGENT));
    assert_eq!(
        Policy::default().agent_pods.service_accounts,
        vec![AGENT.to_string()]
    );
    assert_eq!(Policy::default().agent_pods.namespace, "lotabots-workloads");
    // An empty list turns the rule off.
    let off = Policy::from_yaml("agentPods: {serviceAccounts: []}").unwrap();
    assert!(!off.agent_pods.is_agent(AGENT));

    let err = Policy::from_yaml(
        "agentPods: {serviceAccounts: [lotabots-system/lotabots-agent], namespace: 'A B'}",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("agentPods.serviceAccounts[0]"), "{err}");
    assert!(err.contains("agentPods.namespace"), "{err}");
    let err = Policy::from_yaml("agentPods: {nodes: []}")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("agentPods") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn user_info_helper_round_trips() {
    let v = user_info(AGENT, &BTreeMap::from([(NODE_NAME_EXTRA, vec!["n"])]));
    let who = Requester(Some(&v));
    assert_eq!(who.username(), Some(AGENT));
    assert_eq!(who.extra(NODE_NAME_EXTRA).unwrap(), Some(vec!["n"]));
    assert_eq!(who.extra("other").unwrap(), None);
}

#[test]
fn an_agent_may_delete_a_pod_on_its_own_node() {
    let (ok, why) = decide_delete(
        agent_on("node-a"),
        "lotabots-workloads",
        scheduled_on("node-a"),
    );
    assert!(ok, "{why}");
    // Not yet scheduled: pinned by the launcher's affinity alone.
    let (ok, why) = decide_delete(
        agent_on("node-a"),
        "lotabots-workloads",
        pod(pinned_spec("node-a")),
    );
    assert!(ok, "{why}");
}

#[test]
fn an_agent_may_not_delete_a_pod_on_another_node() {
    let (ok, why) = decide_delete(
        agent_on("node-a"),
        "lotabots-workloads",
        scheduled_on("node-b"),
    );
    assert!(!ok);
    assert!(why.starts_with("403 "), "{why}");
    assert!(
        why.contains("runs on node \"node-a\"")
            && why.contains("pinned to node \"node-b\"")
            && why.contains("deletes pods on its own node only"),
        "names both nodes: {why}"
    );
    // A pod pinned to no node (someone else's) is not the agent's to delete either.
    let unpinned = pod(json!({"containers": [{"name": "c", "image": "x"}]}));
    let (ok, why) = decide_delete(agent_on("node-a"), "lotabots-workloads", unpinned);
    assert!(!ok && why.contains("not pinned to a node"), "{why}");
    // Nor is a pod in another namespace.
    let (ok, why) = decide_delete(agent_on("node-a"), "default", scheduled_on("node-a"));
    assert!(
        !ok && why.contains("may delete pods only in namespace \"lotabots-workloads\""),
        "{why}"
    );
}

#[test]
fn an_agent_token_without_a_node_may_not_delete() {
    let (ok, why) = decide_delete(
        json!({"username": AGENT}),
        "lotabots-workloads",
        scheduled_on("node-a"),
    );
    assert!(!ok && why.contains("not bound to a pod on a node"), "{why}");
    let two = json!({"username": AGENT, "extra": {NODE_NAME_EXTRA: ["node-a", "node-b"]}});
    let (ok, why) = decide_delete(two, "lotabots-workloads", scheduled_on("node-a"));
    assert!(!ok && why.contains("names 2 nodes"), "{why}");
}

#[test]
fn deletes_by_anyone_else_are_not_read() {
    for who in [
        json!({"username": "system:serviceaccount:kube-system:generic-garbage-collector"}),
        json!({"username": "system:serviceaccount:lotabots-system:lotabots-operator"}),
        json!({"username": "alice", "extra": {NODE_NAME_EXTRA: ["node-a"]}}),
        json!("odd"),
        Value::Null,
    ] {
        for old in [
            scheduled_on("node-b"),
            json!({"spec": {"containers": "not a list"}}),
            json!("not a pod"),
            Value::Null,
        ] {
            let (ok, why) = decide_delete(who.clone(), "lotabots-workloads", old.clone());
            assert!(ok, "{who} deleting {old}: {why}");
        }
    }
}

#[test]
fn an_agents_delete_of_an_unreadable_pod_is_denied_clearly() {
    for (old, says) in [
        (Value::Null, "request.oldObject is missing"),
        (json!("not a pod"), "spec: missing"),
        (json!({"metadata": {"name": "p"}}), "spec: missing"),
        (
            json!({"spec": {"nodeName": 7, "containers": []}}),
            "spec.nodeName",
        ),
    ] {
        let (ok, why) = decide_delete(agent_on("node-a"), "lotabots-workloads", old.clone());
        assert!(!ok, "{old} was allowed");
        assert!(
            why.starts_with("403 ") && why.contains("node \"node-a\"") && why.contains(says),
            "{old}: {why}"
        );
    }
    // Without the oldObject field at all.
    let mut body: Value = serde_json::from_slice(&review_of(
        "DELETE",
        agent_on("node-a"),
        "lotabots-workloads",
        ("", "Pod"),
        Value::Null,
        Value::Null,
    ))
    .unwrap();
    body["request"].as_object_mut().unwrap().remove("oldObject");
    let (ok, why) = answer(&serde_json::to_vec(&body).unwrap());
    assert!(!ok && why.contains("oldObject is missing"), "{why}");
}

#[test]
fn deletes_of_other_kinds_are_not_bound() {
    let body = review_of(
        "DELETE",
        agent_on("node-a"),
        "lotabots-workloads",
        ("", "ConfigMap"),
        Value::Null,
        json!({"metadata": {"name": "c"}}),
    );
    let (ok, why) = answer(&body);
    assert!(ok, "{why}");
}
