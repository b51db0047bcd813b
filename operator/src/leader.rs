//! Leader election through a `coordination.k8s.io` Lease, so that one replica reconciles
//! and records verdicts while the others wait to take over (with the evidence store they
//! serve the evidence API meanwhile; without it they wait unready, see `run`).
//!
//! Writes use the Lease's `resourceVersion`, so two replicas racing for an expired Lease
//! cannot both win: the API server accepts one replace and refuses the other with 409.
//! A leader that cannot renew before its Lease runs out steps down (the process exits and
//! restarts as a follower): two leaders at once is worse than none for a few seconds.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// Where the Lease is and who we are.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease namespace (the operator's own).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
    /// How often the leader renews (and followers look).
    pub retry: Duration,
}

/// What to do with the Lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (or the holder's time ran out): take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// Decides from the Lease's spec (none: it does not exist).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed {
        Some(t) if t + duration > now => Decision::Follow {
            holder: holder.to_owned(),
        },
        _ => Decision::Acquire,
    }
}

/// Blocks until this replica holds the Lease.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> kube::Result<()> {
    let mut last_holder = None;
    loop {
        let current = api.get_opt(&cfg.name).await?;
        match decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &cfg.identity,
            Timestamp::now(),
        ) {
            Decision::Follow { holder } => {
                if last_holder.as_ref() != Some(&holder) {
                    tracing::info!(%holder, lease = %cfg.name, "another replica leads; waiting");
                    last_holder = Some(holder);
                }
            }
            Decision::Acquire | Decision::Renew => match write(api, cfg, current, true).await {
                Ok(()) => {
                    tracing::info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
                    return Ok(());
                }
                // Someone else won the race; look again.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            },
        }
        tokio::time::sleep(cfg.retry).await;
    }
}

/// Renews the Lease until it cannot; returns why leadership was lost.
pub async fn hold(api: &Api<Lease>, cfg: &LeaseConfig) -> String {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.retry).await;
        let attempt = async {
            let current = api.get_opt(&cfg.name).await?;
            match decide(
                current.as_ref().and_then(|l| l.spec.as_ref()),
                &cfg.identity,
                Timestamp::now(),
            ) {
                Decision::Follow { holder } => {
                    Ok(Some(format!("the Lease is now held by {holder}")))
                }
                _ => write(api, cfg, current, false).await.map(|()| None),
            }
        };
        match attempt.await {
            Ok(Some(lost)) => return lost,
            Ok(None) => last_renewal = tokio::time::Instant::now(),
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the Lease");
                if last_renewal.elapsed() >= cfg.duration {
                    return format!("the Lease was not renewed for {:?}: {e}", cfg.duration);
                }
            }
        }
    }
}

/// Creates or replaces the Lease with us as holder.
async fn write(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    current: Option<Lease>,
    acquiring: bool,
) -> kube::Result<()> {
    let now = MicroTime(Timestamp::now());
    let seconds = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(drop)
        }
        Some(mut lease) => {
            // `lease` carries its resourceVersion: a concurrent writer makes this a 409.
            let spec = lease.spec.get_or_insert_with(Default::default);
            if acquiring {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(now.clone());
            }
            spec.holder_identity = Some(cfg.identity.clone());
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(now);
            api.replace(&cfg.name, &PostParams::default(), &lease)
                .await
                .map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: Timestamp, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn leases_are_taken_only_when_free_or_expired() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ago = |s| now - SignedDuration::from_secs(s);
        assert_eq!(decide(None, "me", now), Decision::Acquire);
        assert_eq!(
            decide(Some(&spec("", ago(1), 15)), "me", now),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&spec("me", ago(100), 15)), "me", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec("other", ago(5), 15)), "me", now),
            Decision::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&spec("other", ago(16), 15)), "me", now),
            Decision::Acquire
        );
        let never_renewed = LeaseSpec {
            holder_identity: Some("other".into()),
            ..Default::default()
        };
        assert_eq!(decide(Some(&never_renewed), "me", now), Decision::Acquire);
    }
}
