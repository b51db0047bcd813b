//! Per-object exponential backoff for the controllers' error policies: 2 s, 4 s, … up to
//! 5 min after consecutive failures of one object; a success resets it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::reflector::{Lookup, ObjectRef};

/// Longest delay between two attempts on a failing object.
const MAX_DELAY: Duration = Duration::from_secs(300);

/// Consecutive failures per object.
pub struct Backoff<K: Lookup>
where
    K::DynamicType: Eq + Hash + Clone,
{
    failures: Mutex<HashMap<ObjectRef<K>, u32>>,
}

impl<K: Lookup> Default for Backoff<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn default() -> Self {
        Self {
            failures: Mutex::default(),
        }
    }
}

impl<K: Lookup> Backoff<K>
where
    K::DynamicType: Eq + Hash + Clone + Default,
{
    /// Counts a failure of `obj`: how long to wait before trying it again.
    pub fn failed(&self, obj: &K) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(ObjectRef::from_obj(obj)).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(2u64.saturating_pow((*n).min(9))).min(MAX_DELAY)
    }

    /// `obj` reconciled: its next failure starts again at 2 s.
    pub fn succeeded(&self, obj: &K) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ObjectRef::from_obj(obj));
    }
}
