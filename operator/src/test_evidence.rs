//! Evidence documents for unit tests: what an agent submits, built from JSON so that the
//! tests read like the wire format, with every GPU fact "unavailable" unless a test needs
//! it (the policies under test ask for nothing else).

use std::sync::Arc;

use jiff::Timestamp;
use lotabots_crds::evidence::NodeEvidence;
use serde_json::json;

use crate::evidence_api::AcceptedEvidence;

/// Evidence of `node` bound to `nonce`, collected at `collected_at`, with `gpus` GPUs; the
/// first carries a MIG instance of each profile in `mig` (`1g.10gb`).
pub(crate) fn document(
    node: &str,
    nonce: &str,
    collected_at: Timestamp,
    gpus: usize,
    mig: &[&str],
) -> NodeEvidence {
    let gpu = |i: usize| {
        let instances: Vec<_> = if i == 0 {
            mig.iter()
                .enumerate()
                .map(|(n, p)| {
                    json!({"id": n, "profileId": 0, "profileName": format!("MIG {p}"),
                           "placementStart": 0, "placementSize": 1, "computeInstances": []})
                })
                .collect()
        } else {
            Vec::new()
        };
        let unavailable = json!({"unavailable": {"code": "NotSupported", "message": "test"}});
        let mut g = json!({
            "index": i,
            "confidentialComputing": {"attestationReport": unavailable, "certificates": unavailable},
            "mig": {
                "mode": {"value": {"current": !instances.is_empty(), "pending": false}},
                "gpuInstanceProfiles": {"value": []},
                "gpuInstances": {"value": instances}
            },
        });
        for f in [
            "uuid",
            "serial",
            "productName",
            "brand",
            "architecture",
            "boardPartNumber",
            "pci",
            "cudaComputeCapability",
            "vbiosVersion",
            "inforomImageVersion",
            "gspFirmwareMode",
            "gspFirmwareVersion",
            "computeMode",
            "memory",
            "temperatureCelsius",
            "powerUsageMilliwatts",
            "powerLimitMilliwatts",
            "runningComputeProcesses",
            "eccMode",
            "eccErrors",
            "retiredPages",
            "remappedRows",
        ] {
            g[f] = unavailable.clone();
        }
        g
    };
    let doc = json!({
        "schemaVersion": lotabots_crds::evidence::SCHEMA_VERSION,
        "nodeName": node,
        "nonce": nonce,
        "nonceOrigin": "verifier",
        "collectedAt": collected_at,
        "collectionMicros": 1,
        "backend": {"kind": "simulated", "profile": "test"},
        "host": {
            "driverVersion": {"value": "550.54.15"},
            "cudaDriverVersion": {"value": "12.4"},
            "nvmlVersion": {"value": "12.550.54.15"},
            "confidentialComputing": {"value": {"enabled": false, "devToolsMode": false}}
        },
        "gpus": (0..gpus).map(gpu).collect::<Vec<_>>(),
    });
    match serde_json::from_value(doc.clone()) {
        Ok(d) => d,
        Err(e) => panic!("{e}: {doc}"),
    }
}

/// [`document`] as the evidence API accepted it at `received_at`, under `digest`.
pub(crate) fn accepted(
    node: &str,
    nonce: &str,
    received_at: Timestamp,
    gpus: usize,
    mig: &[&str],
    digest: &str,
) -> AcceptedEvidence {
    AcceptedEvidence {
        node: node.into(),
        evidence: document(node, nonce, received_at, gpus, mig),
        digest: digest.into(),
        received_at,
    }
}

/// [`accepted`] of `node` at `received`, nonce `aa…`, digest `sha256:<node>`, shared.
pub(crate) fn shared(
    node: &str,
    received: Timestamp,
    gpus: usize,
    mig: &[&str],
) -> Arc<AcceptedEvidence> {
    Arc::new(accepted(
        node,
        &"aa".repeat(32),
        received,
        gpus,
        mig,
        &format!("sha256:{node}"),
    ))
}
