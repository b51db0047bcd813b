//! One test per hardening rule of the workload pod: each fails if its rule is removed
//! from [`super::build`].

use super::*;
use lotabots_crds::workload::{GpuResources, WorkloadKind};

const NODE: &str = "gpu-node-a";

fn request() -> WorkloadRequest {
    WorkloadRequest {
        id: "0123456789abcdef0123456789abcdef".into(),
        kind: WorkloadKind::GpuSelfTest,
        image: "ghcr.io/lotabots/selftest@sha256:aa".into(),
        node: NODE.into(),
        nonce: "ab".repeat(32),
        owner: WorkloadOwner {
            api_version: "lotabots.io/v1alpha1".into(),
            kind: "GpuAttestation".into(),
            name: "h100-fleet".into(),
            uid: "6f1c2d9e-0000-4000-8000-000000000001".into(),
            namespace: None,
        },
        deadline_seconds: 300,
        resources: GpuResources::default(),
        scratch_bytes: None,
        params: BTreeMap::from([("memoryShare".into(), "0.5".into())]),
    }
}

fn settings() -> PodSettings {
    PodSettings::new("https://lotabots-operator.lotabots-system.svc:8443")
}

fn pod_of(req: &WorkloadRequest, s: &PodSettings) -> (ObjectMeta, PodSpec) {
    let pod = build(req, s).expect("a valid request builds");
    (pod.metadata, pod.spec.expect("built with a spec"))
}

fn spec() -> PodSpec {
    pod_of(&request(), &settings()).1
}

fn container() -> Container {
    let mut s = spec();
    assert_eq!(s.containers.len(), 1, "one container, no sidecars");
    assert!(s.init_containers.is_none() && s.ephemeral_containers.is_none());
    s.containers.remove(0)
}

fn csc() -> SecurityContext {
    container()
        .security_context
        .expect("container securityContext")
}

fn psc() -> PodSecurityContext {
    spec().security_context.expect("pod securityContext")
}

#[test]
fn pinned_to_its_node_by_a_required_match_fields_affinity() {
    let s = spec();
    let req = s
        .affinity
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
        .expect("required node affinity");
    assert_eq!(
        req.node_selector_terms.len(),
        1,
        "one term: no alternative node"
    );
    let term = &req.node_selector_terms[0];
    assert!(term.match_expressions.is_none());
    let fields = term.match_fields.as_ref().expect("matchFields");
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].key, "metadata.name");
    assert_eq!(fields[0].operator, "In");
    assert_eq!(fields[0].values.as_deref(), Some(&[NODE.to_string()][..]));
    assert!(
        s.node_name.is_none(),
        "the scheduler binds it, not the launcher"
    );
    assert!(s.node_selector.is_none());
}

#[test]
fn never_restarts_and_has_its_deadline() {
    let s = spec();
    assert_eq!(s.restart_policy.as_deref(), Some("Never"));
    assert_eq!(s.active_deadline_seconds, Some(300));
}

#[test]
fn runs_as_non_root_65532() {
    let (p, c) = (psc(), csc());
    assert_eq!(p.run_as_non_root, Some(true));
    assert_eq!(c.run_as_non_root, Some(true));
    assert_eq!((p.run_as_user, p.run_as_group), (Some(65532), Some(65532)));
    assert_eq!((c.run_as_user, c.run_as_group), (Some(65532), Some(65532)));
}

#[test]
fn forbids_privilege_escalation() {
    assert_eq!(csc().allow_privilege_escalation, Some(false));
}

#[test]
fn drops_every_capability_and_adds_none() {
    let caps = csc().capabilities.expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(caps.add.is_none_or(|a| a.is_empty()));
}

#[test]
fn uses_the_runtime_default_seccomp_profile() {
    for sp in [psc().seccomp_profile, csc().seccomp_profile] {
        assert_eq!(sp.expect("seccompProfile").type_, "RuntimeDefault");
    }
}

#[test]
fn root_filesystem_is_read_only_with_a_bounded_writable_tmp() {
    assert_eq!(csc().read_only_root_filesystem, Some(true));
    let s = spec();
    let tmp = s
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tmp")
        .and_then(|v| v.empty_dir.clone())
        .expect("emptyDir tmp");
    assert_eq!(tmp.size_limit, Some(Quantity("256Mi".into())));
    assert!(
        container()
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "tmp" && m.mount_path == "/tmp" && m.read_only != Some(true))
    );
}

#[test]
fn not_privileged_and_no_host_namespaces_or_host_paths() {
    let s = spec();
    assert_ne!(csc().privileged, Some(true));
    assert_ne!(s.host_network, Some(true));
    assert_ne!(s.host_pid, Some(true));
    assert_ne!(s.host_ipc, Some(true));
    assert!(s.volumes.iter().flatten().all(|v| v.host_path.is_none()));
    assert!(csc().proc_mount.is_none());
    assert!(
        container().ports.is_none(),
        "no host ports, no ports at all"
    );
}

#[test]
fn mounts_no_service_account_token_automatically() {
    assert_eq!(spec().automount_service_account_token, Some(false));
}

#[test]
fn runs_as_the_workload_service_account() {
    assert_eq!(
        spec().service_account_name.as_deref(),
        Some("lotabots-workload")
    );
}

#[test]
fn projects_only_a_pod_bound_token_and_the_operator_ca() {
    let s = spec();
    let vols: Vec<&Volume> = s.volumes.iter().flatten().collect();
    assert_eq!(vols.len(), 2, "the projected volume and /tmp: {vols:?}");
    let projected = vols
        .iter()
        .find(|v| v.name == "lotabots")
        .and_then(|v| v.projected.as_ref())
        .expect("projected volume");
    let sources = projected.sources.as_deref().unwrap_or_default();
    assert_eq!(sources.len(), 2, "token and CA only: {sources:?}");
    let token = sources[0]
        .service_account_token
        .as_ref()
        .expect("a serviceAccountToken source");
    assert_eq!(token.audience.as_deref(), Some("lotabots"));
    assert_eq!(token.expiration_seconds, Some(600));
    assert_eq!(token.path, "token");
    assert!(sources[0].secret.is_none() && sources[0].config_map.is_none());
    let ca = sources[1].config_map.as_ref().expect("a configMap source");
    assert_eq!(ca.name, "lotabots-operator-ca");
    let items = ca.items.as_deref().unwrap_or_default();
    assert_eq!(items.len(), 1, "the CA certificate only");
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("ca.crt", "ca.crt")
    );
    assert!(sources[1].secret.is_none() && sources[1].downward_api.is_none());
    assert!(
        sources.iter().all(|s| s.secret.is_none()),
        "never a Secret in a workload pod"
    );
    let mount = container()
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == "lotabots")
        .expect("mounted");
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn passes_the_contract_environment() {
    let env: BTreeMap<String, String> = container()
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    let want = BTreeMap::from([
        (
            env::REQUEST_ID,
            "0123456789abcdef0123456789abcdef".to_string(),
        ),
        (env::NONCE, "ab".repeat(32)),
        (env::NODE, NODE.to_string()),
        (
            env::OPERATOR_URL,
            "https://lotabots-operator.lotabots-system.svc:8443".to_string(),
        ),
        (
            env::TOKEN_FILE,
            "/var/run/secrets/lotabots/token".to_string(),
        ),
        (env::CA_FILE, "/var/run/secrets/lotabots/ca.crt".to_string()),
        (env::PARAMS, r#"{"memoryShare":"0.5"}"#.to_string()),
    ]);
    let want: BTreeMap<String, String> =
        want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(env, want);
}

#[test]
fn no_service_links() {
    assert_eq!(spec().enable_service_links, Some(false));
}

#[test]
fn asks_for_whole_gpus_or_one_mig_device() {
    let limits = |r: GpuResources| {
        let mut req = request();
        req.resources = r;
        let c = pod_of(&req, &settings()).1.containers.remove(0);
        let mut limits = c.resources.and_then(|r| r.limits).expect("limits");
        // Memory and storage: requests_cpu_and_memory_and_storage_at_their_limits.
        limits.retain(|k, _| k.starts_with("nvidia.com/"));
        limits
    };
    assert_eq!(
        limits(GpuResources::default()),
        BTreeMap::from([("nvidia.com/gpu".to_string(), Quantity("1".into()))])
    );
    assert_eq!(
        limits(GpuResources {
            gpu_count: Some(8),
            mig_profile: None
        }),
        BTreeMap::from([("nvidia.com/gpu".to_string(), Quantity("8".into()))])
    );
    assert_eq!(
        limits(GpuResources {
            gpu_count: None,
            mig_profile: Some("1g.10gb".into())
        }),
        BTreeMap::from([("nvidia.com/mig-1g.10gb".to_string(), Quantity("1".into()))])
    );
}

#[test]
fn bad_gpu_resources_are_refused_naming_the_field() {
    let err = |r: GpuResources| {
        let mut req = request();
        req.resources = r;
        build(&req, &settings()).unwrap_err().to_string()
    };
    assert!(
        err(GpuResources {
            gpu_count: Some(1),
            mig_profile: Some("1g.10gb".into())
        })
        .contains("exclude each other")
    );
    assert!(
        err(GpuResources {
            gpu_count: None,
            mig_profile: Some("1g.10gb; rm -rf".into())
        })
        .contains("resources.migProfile")
    );
    assert!(
        err(GpuResources {
            gpu_count: Some(0),
            mig_profile: None
        })
        .contains("resources.gpuCount")
    );
}

#[test]
fn runtime_class_only_when_configured() {
    assert!(spec().runtime_class_name.is_none());
    let mut s = settings();
    s.runtime_class = Some("gvisor".into());
    assert_eq!(
        pod_of(&request(), &s).1.runtime_class_name.as_deref(),
        Some("gvisor")
    );
}

#[test]
fn named_and_labelled_for_the_launcher() {
    let (meta, _) = pod_of(&request(), &settings());
    assert_eq!(
        meta.name.as_deref(),
        Some("gpu-selftest-0123456789abcdef0123456789abcdef")
    );
    assert_eq!(meta.namespace.as_deref(), Some("lotabots-workloads"));
    let l = meta.labels.expect("labels");
    assert_eq!(l["app.kubernetes.io/managed-by"], "lotabots");
    assert_eq!(l["lotabots.io/workload-kind"], "gpu-selftest");
    assert_eq!(
        l["lotabots.io/workload-id"],
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(l["lotabots.io/node"], NODE);
    assert_eq!(
        node_selector_labels(NODE),
        "app.kubernetes.io/managed-by=lotabots,lotabots.io/node=gpu-node-a"
    );
}

#[test]
fn a_cluster_scoped_owner_owns_the_pod() {
    let (meta, _) = pod_of(&request(), &settings());
    let refs = meta.owner_references.expect("ownerReferences");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].kind, "GpuAttestation");
    assert_eq!(refs[0].name, "h100-fleet");
    assert_eq!(refs[0].uid, "6f1c2d9e-0000-4000-8000-000000000001");
    assert_eq!(refs[0].controller, Some(true));
    assert!(!meta.labels.unwrap().contains_key(labels::OWNER_UID));
}

#[test]
fn an_owner_in_another_namespace_is_recorded_by_label_not_by_reference() {
    let mut req = request();
    req.kind = WorkloadKind::BehaviourProbes;
    req.owner = WorkloadOwner {
        api_version: "lotabots.io/v1alpha1".into(),
        kind: "ModelAttestation".into(),
        name: "minilm".into(),
        uid: "6f1c2d9e-0000-4000-8000-000000000002".into(),
        namespace: Some("team-a".into()),
    };
    let (meta, _) = pod_of(&req, &settings());
    assert!(
        meta.owner_references.is_none(),
        "a cross-namespace owner reference would have the pod collected at once"
    );
    assert_eq!(
        meta.labels.unwrap()[labels::OWNER_UID],
        "6f1c2d9e-0000-4000-8000-000000000002"
    );
    let ann = meta.annotations.expect("annotations");
    assert_eq!(ann[labels::OWNER_NAMESPACE_ANNOTATION], "team-a");
    assert_eq!(ann[labels::OWNER_NAME_ANNOTATION], "minilm");
    assert_eq!(ann[labels::OWNER_KIND_ANNOTATION], "ModelAttestation");
    // In the workload namespace itself, a reference works.
    req.owner.namespace = Some("lotabots-workloads".into());
    assert!(pod_of(&req, &settings()).0.owner_references.is_some());
}

#[test]
fn unusable_requests_are_refused_naming_the_field() {
    let err = |f: &dyn Fn(&mut WorkloadRequest)| {
        let mut req = request();
        f(&mut req);
        build(&req, &settings()).unwrap_err().to_string()
    };
    assert!(err(&|r| r.id = "ABC".into()).contains("workload request id"));
    assert!(err(&|r| r.id = "0123456789abcdef/../x".into()).contains("workload request id"));
    assert!(err(&|r| r.node = String::new()).contains("workload request node"));
    assert!(err(&|r| r.nonce = "zz".into()).contains("workload request nonce"));
    assert!(err(&|r| r.deadline_seconds = 0).contains("deadlineSeconds"));
    assert!(err(&|r| r.deadline_seconds = u64::MAX).contains("deadlineSeconds"));
    assert!(err(&|r| r.image = " ".into()).contains("workload request image"));
    assert!(err(&|r| r.owner.uid = String::new()).contains("workload request owner"));
}

#[test]
fn a_scratch_volume_of_the_requested_size_only_when_asked() {
    let scratch = |s: &PodSpec| {
        s.volumes
            .iter()
            .flatten()
            .find(|v| v.name == "scratch")
            .cloned()
    };
    assert!(scratch(&spec()).is_none(), "no scratch unless requested");
    assert!(
        container()
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.mount_path != workload::SCRATCH_DIR)
    );

    let mut req = request();
    req.scratch_bytes = Some(3 << 30);
    let s = pod_of(&req, &settings()).1;
    let dir = scratch(&s)
        .and_then(|v| v.empty_dir)
        .expect("an emptyDir scratch volume");
    assert_eq!(dir.size_limit, Some(Quantity("3072Mi".into())));
    assert_eq!(dir.medium, None, "on the node's disk, not in memory");
    let c = s.containers[0].clone();
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "scratch")
        .expect("scratch mounted");
    assert_eq!(mount.mount_path, "/work");
    assert_ne!(
        mount.read_only,
        Some(true),
        "the workload writes the model there"
    );
    assert_eq!(
        c.security_context
            .and_then(|sc| sc.read_only_root_filesystem),
        Some(true),
        "the root filesystem stays read-only"
    );

    req.scratch_bytes = Some(1000);
    let s = pod_of(&req, &settings()).1;
    assert_eq!(
        scratch(&s)
            .and_then(|v| v.empty_dir)
            .and_then(|d| d.size_limit),
        Some(Quantity("1000".into())),
        "an odd size stays exact"
    );
    req.scratch_bytes = Some(0);
    assert!(
        build(&req, &settings())
            .unwrap_err()
            .to_string()
            .contains("scratchBytes")
    );
}

fn requirements(req: &WorkloadRequest, s: &PodSettings) -> ResourceRequirements {
    pod_of(req, s).1.containers[0]
        .resources
        .clone()
        .expect("resources")
}

#[test]
fn requests_cpu_and_memory_and_storage_at_their_limits() {
    let r = requirements(&request(), &settings());
    let (requests, limits) = (r.requests.expect("requests"), r.limits.expect("limits"));
    assert_eq!(requests["cpu"], Quantity("1".into()));
    assert!(!limits.contains_key("cpu"), "CPU is not throttled");
    assert_eq!(requests["memory"], Quantity("16384Mi".into()));
    assert_eq!(
        limits["memory"], requests["memory"],
        "memory request = limit"
    );
    // /tmp (256Mi) and the log allowance (64Mi), no scratch.
    assert_eq!(limits["ephemeral-storage"], Quantity("320Mi".into()));
    assert_eq!(limits["ephemeral-storage"], requests["ephemeral-storage"]);
    assert_eq!(
        limits["nvidia.com/gpu"],
        Quantity("1".into()),
        "GPUs unchanged"
    );
    assert!(!requests.contains_key("nvidia.com/gpu"));

    let mut req = request();
    req.scratch_bytes = Some(1 << 30);
    let mut s = settings();
    s.cpu_request = "500m".into();
    s.memory_limit = "64Gi".into();
    let r = requirements(&req, &s);
    let (requests, limits) = (r.requests.unwrap(), r.limits.unwrap());
    assert_eq!(requests["cpu"], Quantity("500m".into()));
    assert_eq!(limits["memory"], Quantity("65536Mi".into()));
    assert_eq!(
        limits["ephemeral-storage"],
        Quantity("1344Mi".into()),
        "tmp + scratch + logs"
    );
}

#[test]
fn unusable_resource_settings_are_refused_naming_the_setting() {
    let err = |f: &dyn Fn(&mut PodSettings)| {
        let mut s = settings();
        f(&mut s);
        build(&request(), &s).unwrap_err().to_string()
    };
    assert!(err(&|s| s.cpu_request = "lots".into()).contains("cpuRequest"));
    assert!(err(&|s| s.cpu_request = "0".into()).contains("cpuRequest"));
    assert!(err(&|s| s.memory_limit = "16 gigs".into()).contains("memoryLimit"));
    assert!(err(&|s| s.tmp_size_limit = "-1".into()).contains("tmpSizeLimit"));
}

#[test]
fn cpu_quantities() {
    for ok in ["1", "2", "0.5", "500m", "1.25"] {
        assert!(is_cpu_quantity(ok), "{ok}");
    }
    for bad in ["", "m", "0", "0m", "1.5m", "-1", "1 ", "1Gi", "1e3", "."] {
        assert!(!is_cpu_quantity(bad), "{bad:?}");
    }
}

#[test]
fn deadlines_up_to_the_longest_behavioural_timeout_are_accepted() {
    let mut req = request();
    req.deadline_seconds = 24 * 3600;
    assert_eq!(
        pod_of(&req, &settings()).1.active_deadline_seconds,
        Some(24 * 3600)
    );
    req.deadline_seconds = 24 * 3600 + 1;
    assert!(
        build(&req, &settings())
            .unwrap_err()
            .to_string()
            .contains("deadlineSeconds")
    );
}
