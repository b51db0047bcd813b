//! A watched, cached list of one kind of object, with a wake-up on every change: what
//! the attestation loop (GpuAttestations) and the behavioural-probe launches
//! (ModelAttestations) both poll, and are woken by.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The objects of `api`, kept current by a watch in the background.
pub struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// The cache.
    pub store: Store<K>,
    /// Notified on every event of the watch (a change, a relist).
    pub changed: Arc<Notify>,
    /// The watch; it ends only if its stream does.
    pub task: JoinHandle<()>,
}

/// Starts watching `api` (with the default backoff on errors).
pub fn watch<K>(api: Api<K>) -> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    let task = tokio::spawn(
        reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(move |_| {
                notify.notify_one();
                async {}
            }),
    );
    Watched {
        store,
        changed,
        task,
    }
}
