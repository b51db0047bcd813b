//! The worker against an in-memory queue and stores that can be taken down.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize},
    },
};

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::{
    SealedBundle,
    bundle::{KeyRing, seal},
    objects::{Put, PutOutcome},
};

#[derive(Debug)]
struct Row {
    id: i64,
    store: String,
    bundle: SealedBundle,
    attempts: i32,
    next: Timestamp,
    location: Option<String>,
}

/// The outbox in memory, with the same semantics as the PostgreSQL one.
#[derive(Debug, Default)]
struct MemQueue {
    rows: Mutex<Vec<Row>>,
}

impl MemQueue {
    fn add(&self, bundle: &SealedBundle, stores: &[&str]) {
        let mut rows = self.rows.lock().unwrap();
        for store in stores {
            let id = rows.len() as i64 + 1;
            rows.push(Row {
                id,
                store: store.to_string(),
                bundle: bundle.clone(),
                attempts: 0,
                next: Timestamp::UNIX_EPOCH,
                location: None,
            });
        }
    }

    fn uploaded_count(&self, store: &str) -> usize {
        let rows = self.rows.lock().unwrap();
        rows.iter()
            .filter(|r| r.store == store && r.location.is_some())
            .count()
    }

    fn backlog(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for r in self.rows.lock().unwrap().iter() {
            if r.location.is_none() {
                *m.entry(r.store.clone()).or_default() += 1;
            }
        }
        m
    }
}

impl OutboxQueue for MemQueue {
    async fn due(&self, store: &str, limit: i64) -> anyhow::Result<Vec<PendingUpload>> {
        let now = Timestamp::now();
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .iter()
            .filter(|r| r.store == store && r.location.is_none() && r.next <= now)
            .take(limit as usize)
            .map(|r| PendingUpload {
                id: r.id,
                store: r.store.clone(),
                bundle: r.bundle.clone(),
                attempts: r.attempts,
            })
            .collect())
    }

    async fn uploaded(&self, id: i64, location: &str) -> anyhow::Result<()> {
        let mut rows = self.rows.lock().unwrap();
        let r = rows.iter_mut().find(|r| r.id == id).unwrap();
        r.attempts += 1;
        r.location = Some(location.to_string());
        Ok(())
    }

    async fn failed(&self, id: i64, _error: &str, retry_at: Timestamp) -> anyhow::Result<()> {
        let mut rows = self.rows.lock().unwrap();
        let r = rows.iter_mut().find(|r| r.id == id).unwrap();
        if r.location.is_none() {
            r.attempts += 1;
            r.next = retry_at;
        }
        Ok(())
    }
}

/// A store in memory that can be taken down (every call fails like a refused
/// connection) and counts the puts it was asked for.
#[derive(Debug, Default)]
struct FlakyStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
    down: AtomicBool,
    puts: AtomicUsize,
}

impl FlakyStore {
    fn check_up(&self, key: &str) -> Result<(), ObjectError> {
        if self.down.load(Ordering::SeqCst) {
            Err(ObjectError::Request {
                op: "put",
                location: self.location(key),
                message: "connection refused".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ObjectStore for FlakyStore {
    fn location(&self, key: &str) -> String {
        format!("mem://{key}")
    }

    async fn put(&self, key: &str, bytes: Bytes, _sha256: &str) -> Result<Put, ObjectError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.check_up(key)?;
        let mut objects = self.objects.lock().unwrap();
        let outcome = match objects.get(key) {
            Some(b) if *b == bytes => PutOutcome::AlreadyPresent,
            Some(_) => {
                return Err(ObjectError::Conflict {
                    location: self.location(key),
                    expected: String::new(),
                    found: String::new(),
                });
            }
            None => {
                objects.insert(key.to_string(), bytes);
                PutOutcome::Stored
            }
        };
        Ok(Put {
            location: self.location(key),
            outcome,
        })
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        self.check_up(key)?;
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or(ObjectError::NotFound {
                location: self.location(key),
            })
    }

    async fn exists(&self, key: &str) -> Result<bool, ObjectError> {
        self.check_up(key)?;
        Ok(self.objects.lock().unwrap().contains_key(key))
    }
}

fn bundles(n: usize) -> Vec<SealedBundle> {
    let keys = KeyRing::new("k1", [("k1", [7u8; 32].as_slice())]).unwrap();
    (0..n)
        .map(|i| seal(&json!({"bundle": i}), &keys).unwrap())
        .collect()
}

fn fast_config() -> OutboxConfig {
    OutboxConfig {
        batch: 8,
        concurrency: 4,
        idle_poll: Duration::from_millis(10),
        upload_timeout: Duration::from_secs(5),
        backoff: Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(40),
        },
        breaker: BreakerConfig {
            failures: 3,
            cool_down: Duration::from_millis(200),
        },
        backlog_interval: Duration::from_millis(20),
    }
}

/// Waits (up to 10 s) for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let matches = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if matches {
                return if name.ends_with("_total") {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
            }
        }
    }
    panic!("no metric {name} {labels:?}")
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn start(
    queue: &Arc<MemQueue>,
    stores: &[(&str, &Arc<FlakyStore>)],
    registry: &Registry,
) -> Running {
    let named = stores
        .iter()
        .map(|(n, s)| NamedStore::new(*n, Arc::clone(s) as Arc<dyn ObjectStore>))
        .collect();
    let q = queue.clone();
    let worker = OutboxWorker::new(queue.clone(), named, fast_config(), registry)
        .unwrap()
        .with_backlog(Arc::new(move || {
            let q = q.clone();
            Box::pin(async move { Ok(q.backlog()) })
        }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

#[tokio::test]
async fn a_store_that_is_down_delays_only_its_own_copies_and_catches_up() {
    let queue = Arc::new(MemQueue::default());
    let (s3, gcs) = (
        Arc::new(FlakyStore::default()),
        Arc::new(FlakyStore::default()),
    );
    s3.down.store(true, Ordering::SeqCst);
    let n = 40;
    for b in bundles(n) {
        queue.add(&b, &["s3", "gcs"]);
    }
    let registry = Registry::new();
    let run = start(&queue, &[("s3", &s3), ("gcs", &gcs)], &registry);

    eventually("GCS to get every bundle", || {
        queue.uploaded_count("gcs") == n
    })
    .await;
    eventually("the S3 breaker to open", || {
        metric(&registry, "lotabots_store_breaker_open", &[("store", "s3")]) == 1.0
    })
    .await;
    // The breaker keeps a dead store from being hammered: after 400 ms of outage with
    // a 200 ms cool-down, a handful of attempts, not one per bundle per retry.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let attempts_while_down = s3.puts.load(Ordering::SeqCst);
    assert!(
        attempts_while_down < 20,
        "{attempts_while_down} S3 attempts while it was down"
    );
    assert_eq!(queue.uploaded_count("s3"), 0);
    eventually("the pending gauge to show the S3 backlog", || {
        metric(
            &registry,
            "lotabots_store_outbox_pending",
            &[("store", "s3")],
        ) == n as f64
            && metric(
                &registry,
                "lotabots_store_outbox_pending",
                &[("store", "gcs")],
            ) == 0.0
    })
    .await;

    s3.down.store(false, Ordering::SeqCst);
    eventually("S3 to catch up", || queue.uploaded_count("s3") == n).await;
    eventually("the S3 breaker to close", || {
        metric(&registry, "lotabots_store_breaker_open", &[("store", "s3")]) == 0.0
    })
    .await;
    run.stop().await;

    let lost_s3 = n - s3.objects.lock().unwrap().len();
    let lost_gcs = n - gcs.objects.lock().unwrap().len();
    assert_eq!((lost_s3, lost_gcs), (0, 0));
    let count = |store, outcome| {
        metric(
            &registry,
            "lotabots_store_uploads_total",
            &[("store", store), ("outcome", outcome)],
        )
    };
    assert_eq!(count("gcs", "stored"), n as f64);
    assert_eq!(count("gcs", "failed"), 0.0);
    assert_eq!(count("s3", "stored"), n as f64);
    assert!(
        count("s3", "failed") >= 3.0,
        "the failures that opened the breaker"
    );
}

#[tokio::test]
async fn a_new_worker_resumes_from_the_queue_and_finds_copies_already_stored() {
    let queue = Arc::new(MemQueue::default());
    let store = Arc::new(FlakyStore::default());
    let all = bundles(30);
    for b in &all[..10] {
        queue.add(b, &["local"]);
    }
    let run = start(&queue, &[("local", &store)], &Registry::new());
    eventually("the first ten", || queue.uploaded_count("local") == 10).await;
    run.stop().await;

    // Queued while no worker ran, and one copy that reached the store without being
    // recorded (a crash between the put and `uploaded`).
    for b in &all[10..] {
        queue.add(b, &["local"]);
    }
    store
        .put(
            &bundle_key(&all[12].digest),
            Bytes::from(all[12].ciphertext.clone()),
            &all[12].digest,
        )
        .await
        .unwrap();
    let registry = Registry::new();
    let run = start(&queue, &[("local", &store)], &registry);
    eventually("all thirty", || queue.uploaded_count("local") == 30).await;
    run.stop().await;
    assert_eq!(store.objects.lock().unwrap().len(), 30);
    let count = |outcome| {
        metric(
            &registry,
            "lotabots_store_uploads_total",
            &[("store", "local"), ("outcome", outcome)],
        )
    };
    assert_eq!((count("stored"), count("already_present")), (19.0, 1.0));
}

#[tokio::test]
async fn a_conflicting_object_fails_its_upload_without_opening_the_breaker() {
    let queue = Arc::new(MemQueue::default());
    let store = Arc::new(FlakyStore::default());
    let all = bundles(6);
    for b in &all {
        queue.add(b, &["s3"]);
    }
    // Other bytes already under the first bundle's key, four times the breaker's
    // threshold of retries.
    store
        .objects
        .lock()
        .unwrap()
        .insert(bundle_key(&all[0].digest), Bytes::from_static(b"other"));
    let registry = Registry::new();
    let run = start(&queue, &[("s3", &store)], &registry);
    eventually("the five others", || queue.uploaded_count("s3") == 5).await;
    eventually("repeated conflicts", || {
        metric(
            &registry,
            "lotabots_store_uploads_total",
            &[("store", "s3"), ("outcome", "failed")],
        ) >= 4.0
    })
    .await;
    assert_eq!(
        metric(&registry, "lotabots_store_breaker_open", &[("store", "s3")]),
        0.0
    );
    run.stop().await;
    assert_eq!(
        queue.uploaded_count("s3"),
        5,
        "the conflict is never marked stored"
    );
}

#[test]
fn store_names_must_be_unique_and_present() {
    let queue = Arc::new(MemQueue::default());
    let s: Arc<dyn ObjectStore> = Arc::new(FlakyStore::default());
    let dup = vec![NamedStore::new("s3", s.clone()), NamedStore::new("s3", s)];
    let err = OutboxWorker::new(
        queue.clone(),
        dup,
        OutboxConfig::default(),
        &Registry::new(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("unique"), "{err}");
    let err = OutboxWorker::new(queue, vec![], OutboxConfig::default(), &Registry::new())
        .err()
        .unwrap();
    assert!(err.to_string().contains("at least one"), "{err}");
}
