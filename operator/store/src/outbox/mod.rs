//! The outbox worker: uploads every pending bundle to every store, independently.
//!
//! One task per store polls [`OutboxQueue::due`] for that store, uploads the batch
//! (a few uploads in flight at once), and reports each result through
//! [`OutboxQueue::uploaded`] or [`OutboxQueue::failed`]. All state that matters is in the
//! queue: attempts, the next attempt's time, where each copy landed. A worker that
//! stops — shut down, crashed, replaced by another replica — loses nothing; the next one
//! picks up what is due. An upload that reached the store but was not recorded is found
//! there on the retry ([`PutOutcome::AlreadyPresent`](crate::objects::PutOutcome)).
//!
//! Stores do not wait for each other: with S3 down, its task backs off behind its
//! [`Breaker`] while the GCS task keeps uploading, and S3 catches up when it is back.

mod backoff;
mod breaker;
mod metrics;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, future::BoxFuture, stream};
use prometheus::Registry;
use tokio::{sync::watch, task::JoinSet};
use tracing::{debug, info, warn};

pub use backoff::Backoff;
pub use breaker::{Breaker, BreakerConfig, Permit};
pub use metrics::Metrics;

use crate::{
    OutboxQueue, PendingUpload,
    objects::{ObjectError, ObjectStore, bundle_key},
};

/// Per-store counts of copies not uploaded yet (e.g. `db::Database::outbox_backlog`),
/// for the `lotabots_store_outbox_pending` gauge; stores absent from the map have none.
pub type BacklogFn =
    Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<BTreeMap<String, u64>>> + Send + Sync>;

/// A store under the name the outbox rows use (`s3`, `gcs`, `local`).
#[derive(Clone, Debug)]
pub struct NamedStore {
    /// The name.
    pub name: String,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
}

impl NamedStore {
    /// `store` named `name`.
    pub fn new(name: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            name: name.into(),
            store,
        }
    }
}

/// How the worker paces itself.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    /// Uploads taken from the queue at once, per store.
    pub batch: i64,
    /// Uploads in flight at once, per store.
    pub concurrency: usize,
    /// How long a store's task waits when nothing is due (or the queue failed).
    pub idle_poll: Duration,
    /// Limit on one upload; a store that hangs counts as failing.
    pub upload_timeout: Duration,
    /// Delay before a failed upload is retried.
    pub backoff: Backoff,
    /// The circuit breaker of each store.
    pub breaker: BreakerConfig,
    /// How often the pending gauge is refreshed.
    pub backlog_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch: 32,
            concurrency: 8,
            idle_poll: Duration::from_secs(1),
            upload_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
            breaker: BreakerConfig::default(),
            backlog_interval: Duration::from_secs(15),
        }
    }
}

/// The worker. Build it with [`OutboxWorker::new`], then [`run`](OutboxWorker::run) it
/// until shutdown.
pub struct OutboxWorker<Q> {
    inner: Arc<Inner<Q>>,
    stores: Vec<NamedStore>,
    backlog: Option<BacklogFn>,
}

struct Inner<Q> {
    queue: Arc<Q>,
    config: OutboxConfig,
    metrics: Metrics,
}

/// How one upload went, as the breaker sees it.
enum Attempt {
    /// In the store.
    Stored,
    /// The store failed or did not answer: counts towards opening the breaker.
    StoreFailed,
    /// This bundle was refused (a conflict, bad input): the store itself is fine.
    Refused,
    /// Not attempted: the breaker opened while the batch was under way.
    Skipped,
}

impl<Q: OutboxQueue + 'static> OutboxWorker<Q> {
    /// A worker over `queue` uploading to `stores`, its metrics registered in
    /// `registry`. Store names must be unique.
    pub fn new(
        queue: Arc<Q>,
        stores: Vec<NamedStore>,
        config: OutboxConfig,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !stores.is_empty(),
            "the outbox worker needs at least one store"
        );
        let mut names: Vec<&str> = stores.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        anyhow::ensure!(
            names.len() == stores.len(),
            "store names must be unique, got {:?}",
            stores.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        anyhow::ensure!(
            config.batch > 0 && config.concurrency > 0,
            "outbox batch and concurrency must be positive"
        );
        let metrics = Metrics::register(registry).context("registering the outbox metrics")?;
        for s in &stores {
            for outcome in ["stored", "already_present", "failed"] {
                metrics.uploads.with_label_values(&[&s.name, outcome]);
            }
            metrics.breaker_open.with_label_values(&[&s.name]).set(0);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                config,
                metrics,
            }),
            stores,
            backlog: None,
        })
    }

    /// Refreshes `lotabots_store_outbox_pending` from `backlog` every
    /// [`OutboxConfig::backlog_interval`].
    pub fn with_backlog(mut self, backlog: BacklogFn) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Uploads until `shutdown` completes, then lets the uploads in flight finish and
    /// be recorded (each bounded by [`OutboxConfig::upload_timeout`]) and returns. Fails
    /// only if a store's task panicked; queue and store errors are logged and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for s in self.stores.iter().cloned() {
            tasks.spawn(store_loop(self.inner.clone(), s, stopped.clone()));
        }
        if let Some(backlog) = self.backlog.clone() {
            let names = self.stores.iter().map(|s| s.name.clone()).collect();
            tasks.spawn(backlog_loop(self.inner.clone(), backlog, names, stopped));
        }
        info!(
            stores = ?self.stores.iter().map(|s| &s.name).collect::<Vec<_>>(),
            "outbox worker started"
        );
        let early = tokio::select! {
            () = shutdown => None,
            // The loops only end on shutdown: one ending now has panicked.
            Some(r) = tasks.join_next() => Some(r),
        };
        let _ = stop.send(true);
        let mut failure = early.and_then(|r| r.err());
        while let Some(r) = tasks.join_next().await {
            failure = failure.or(r.err());
        }
        if let Some(e) = failure {
            return Err(anyhow::anyhow!("an outbox task failed: {e}"));
        }
        info!("outbox worker stopped");
        Ok(())
    }
}

/// Sleeps `d` unless shutdown comes first; true if it did.
async fn pause(d: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    let signalled = tokio::select! {
        () = tokio::time::sleep(d) => false,
        // An error means the worker is gone: stop too.
        _ = stopped.wait_for(|s| *s) => true,
    };
    signalled || *stopped.borrow()
}

async fn store_loop<Q: OutboxQueue>(
    inner: Arc<Inner<Q>>,
    s: NamedStore,
    mut stopped: watch::Receiver<bool>,
) {
    let cfg = &inner.config;
    let gauge = inner.metrics.breaker_open.with_label_values(&[&s.name]);
    let mut breaker = Breaker::new(cfg.breaker);
    while !*stopped.borrow() {
        let limit = match breaker.permit(Instant::now()) {
            Permit::Closed => cfg.batch,
            Permit::Probe => 1,
            Permit::WaitUntil(t) => {
                if pause(t.saturating_duration_since(Instant::now()), &mut stopped).await {
                    break;
                }
                continue;
            }
        };
        let due = match inner.queue.due(&s.name, limit).await {
            Ok(due) => due,
            Err(e) => {
                warn!(store = %s.name, error = %format!("{e:#}"), "reading the outbox failed");
                Vec::new()
            }
        };
        if due.is_empty() {
            if pause(cfg.idle_poll, &mut stopped).await {
                break;
            }
            continue;
        }
        // Set when the breaker opens mid-batch: the rest of the batch is left for later
        // without an attempt being counted against it.
        let open = AtomicBool::new(false);
        let mut results = stream::iter(due)
            .map(|u| {
                let (inner, s, open) = (&inner, &s, &open);
                async move {
                    if open.load(Ordering::Relaxed) {
                        Attempt::Skipped
                    } else {
                        inner.upload(s, u).await
                    }
                }
            })
            .buffer_unordered(cfg.concurrency);
        while let Some(attempt) = results.next().await {
            match attempt {
                Attempt::Stored => breaker.success(),
                Attempt::StoreFailed => {
                    if breaker.failure(Instant::now()) {
                        open.store(true, Ordering::Relaxed);
                        warn!(store = %s.name, cool_down = ?cfg.breaker.cool_down, "circuit breaker opened: pausing uploads to this store");
                    }
                }
                Attempt::Refused | Attempt::Skipped => {}
            }
            gauge.set(i64::from(breaker.is_open()));
        }
    }
    debug!(store = %s.name, "outbox store task stopped");
}

async fn backlog_loop<Q>(
    inner: Arc<Inner<Q>>,
    backlog: BacklogFn,
    names: Vec<String>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        match backlog().await {
            Ok(counts) => {
                for name in &names {
                    let n = counts.get(name).copied().unwrap_or(0);
                    inner
                        .metrics
                        .pending
                        .with_label_values(&[name])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            Err(e) => warn!(error = %format!("{e:#}"), "counting the outbox backlog failed"),
        }
        if pause(inner.config.backlog_interval, &mut stopped).await {
            break;
        }
    }
}

impl<Q: OutboxQueue> Inner<Q> {
    async fn upload(&self, s: &NamedStore, u: PendingUpload) -> Attempt {
        let key = bundle_key(&u.bundle.digest);
        let put = tokio::time::timeout(
            self.config.upload_timeout,
            s.store
                .put(&key, Bytes::from(u.bundle.ciphertext), &u.bundle.digest),
        )
        .await;
        let err = match put {
            Ok(Ok(put)) => {
                // Recorded only now: a crash before this line leaves the copy pending,
                // and the retry finds it in the store.
                if let Err(e) = self.queue.uploaded(u.id, &put.location).await {
                    warn!(store = %s.name, id = u.id, error = %format!("{e:#}"), "the upload is in the store but could not be recorded; it will be on the next attempt");
                    return Attempt::Stored;
                }
                self.metrics
                    .uploads
                    .with_label_values(&[&s.name, put.outcome.label()])
                    .inc();
                debug!(store = %s.name, id = u.id, location = %put.location, outcome = put.outcome.label(), "bundle uploaded");
                return Attempt::Stored;
            }
            Ok(Err(e)) => e,
            Err(_) => ObjectError::Request {
                op: "put",
                location: s.store.location(&key),
                message: format!("no answer within {:?}", self.config.upload_timeout),
            },
        };
        let delay = self.config.backoff.delay(u.attempts, &mut rand::rng());
        let retry_at = jiff::SignedDuration::try_from(delay)
            .ok()
            .and_then(|d| jiff::Timestamp::now().checked_add(d).ok())
            .unwrap_or_else(jiff::Timestamp::now);
        let message = err.to_string();
        warn!(store = %s.name, id = u.id, attempts = u.attempts + 1, retry_in = ?delay, error = %message, "bundle upload failed");
        self.metrics
            .uploads
            .with_label_values(&[&s.name, "failed"])
            .inc();
        if let Err(e) = self.queue.failed(u.id, &message, retry_at).await {
            warn!(store = %s.name, id = u.id, error = %format!("{e:#}"), "recording the failed upload failed");
        }
        match err {
            ObjectError::Request { .. } => Attempt::StoreFailed,
            _ => Attempt::Refused,
        }
    }
}

#[cfg(test)]
mod tests;
