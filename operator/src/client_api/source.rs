//! Where the client API reads attestations from and writes requests to: caches of the
//! GpuAttestations and ModelAttestations kept by watches on the Kubernetes API (reads
//! never cost an API server round trip), the evidence the agents submitted (for the GPU
//! identities in node tokens), and the API server itself for creating ModelAttestations.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt as _, StreamExt as _};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use lotabots_crds::gpu_attestation::GpuAttestation;
use lotabots_crds::model_attestation::ModelAttestation;

use super::problem::{ApiError, FieldProblem};
use crate::evidence_api::LatestEvidence;

/// The attestations the API serves.
#[derive(Clone)]
pub struct Attestations {
    /// GpuAttestations (cluster-scoped).
    pub gpu: Store<GpuAttestation>,
    /// ModelAttestations (namespaced).
    pub model: Store<ModelAttestation>,
    /// The agents' latest evidence per node, when the evidence API runs in this process.
    pub evidence: Option<Arc<LatestEvidence>>,
}

impl Attestations {
    /// Caches fed by watches through `client`, and the future that keeps them current
    /// (run it for as long as the API serves; it ends only if a watch stream ends).
    pub fn watch(
        client: kube::Client,
        evidence: Option<Arc<LatestEvidence>>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (gpu, gpu_writer) = reflector::store();
        let (model, model_writer) = reflector::store();
        let gpus = watcher(
            Api::<GpuAttestation>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(gpu_writer)
        .for_each(|e| async move {
            if let Err(e) = e {
                tracing::warn!(error = %e, "watching GpuAttestations for the client API");
            }
        });
        let models = watcher(
            Api::<ModelAttestation>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(model_writer)
        .for_each(|e| async move {
            if let Err(e) = e {
                tracing::warn!(error = %e, "watching ModelAttestations for the client API");
            }
        });
        let run = async move {
            futures::future::join(gpus, models).await;
        };
        (
            Self {
                gpu,
                model,
                evidence,
            },
            run,
        )
    }

    /// Whether both caches hold a complete first listing.
    pub fn ready(&self) -> Result<(), ApiError> {
        let synced = |ready: Option<Result<(), _>>| matches!(ready, Some(Ok(())));
        if synced(self.gpu.wait_until_ready().now_or_never())
            && synced(self.model.wait_until_ready().now_or_never())
        {
            Ok(())
        } else {
            Err(ApiError::Unavailable(
                "the attestation cache is still loading from the Kubernetes API".into(),
            ))
        }
    }
}

/// The boxed future of [`ModelRequests::create`].
pub type CreateFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ModelAttestation, ApiError>> + Send + 'a>>;

/// Creates ModelAttestations.
pub trait ModelRequests: Send + Sync + 'static {
    /// Creates `att` in its namespace.
    fn create(&self, att: ModelAttestation) -> CreateFuture<'_>;
}

/// Creates them through the Kubernetes API (server-side validation and CEL rules apply).
pub struct KubeModelRequests(pub kube::Client);

/// The field manager of what the API creates.
pub const FIELD_MANAGER: &str = "lotabots-client-api";

impl ModelRequests for KubeModelRequests {
    fn create(&self, att: ModelAttestation) -> CreateFuture<'_> {
        Box::pin(async move {
            let ns = att.metadata.namespace.clone().unwrap_or_default();
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            Api::<ModelAttestation>::namespaced(self.0.clone(), &ns)
                .create(&pp, &att)
                .await
                .map_err(from_kube)
        })
    }
}

/// The API server's refusal as a problem: its validation causes become field problems.
fn from_kube(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(status) => match status.code {
            409 => ApiError::Conflict(status.message),
            404 => ApiError::NotFound(status.message),
            400 | 422 => {
                let causes: Vec<FieldProblem> = status
                    .details
                    .map(|d| d.causes)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| FieldProblem {
                        field: format!("/{}", c.field.replace('.', "/")),
                        message: c.message,
                    })
                    .collect();
                if causes.is_empty() {
                    ApiError::body("/spec", status.message)
                } else {
                    ApiError::InvalidBody(causes)
                }
            }
            _ => ApiError::Unavailable(format!("the Kubernetes API: {}", status.message)),
        },
        other => ApiError::Unavailable(format!("the Kubernetes API: {other}")),
    }
}
