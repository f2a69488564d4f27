//! One shard's counters by label set, looked up without a lock on the shard.
//!
//! Owns: the map from a label set to its counters that the scrape reads (`Mutex`-protected,
//! because the scrape runs on another thread), and a thread-local cache in front of it on
//! each thread that looks label sets up (the shard's). A label set is registered (the
//! `Mutex` taken) the first time a thread sees it for a given registry; from then on that
//! thread finds the same `Arc` in its own cache, and counts into it with relaxed atomics,
//! which is what the scrape sums. So the lock is taken on registration and on scrape only,
//! never per connection or per request once a label set is known. A label set is stored
//! once (`Arc<L>`), shared by the map and the caches.
//!
//! The cache is keyed by the registry (each has its own id), so two registries used on one
//! thread — two `ShardMetrics` in a test, or the TCP and HTTP maps of one shard — never share
//! entries. Entries of a dropped registry are pruned on the next registration on that
//! thread. Label sets are never forgotten (as before: a label set seen once is reported
//! until the process ends).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Counters of type `C` by label set `L`, for one shard.
#[derive(Debug)]
pub struct ShardRegistry<L, C> {
    /// Keys this registry's entries in each thread's cache.
    id: u64,
    /// Held only here: a cache whose `Weak` no longer upgrades belongs to a dropped registry.
    alive: Arc<()>,
    /// What the scrape reads; taken on registration and scrape only. The label sets are
    /// shared with the threads' caches, not copied.
    map: Mutex<HashMap<Arc<L>, Arc<C>>>,
}

impl<L, C> Default for ShardRegistry<L, C> {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        ShardRegistry {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<L, C> ShardRegistry<L, C>
where
    L: Hash + Eq + 'static,
    C: Default + 'static,
{
    /// The counters of `labels` (created on first use): from this thread's cache, or
    /// registered under the lock the first time this thread asks this registry for them.
    pub fn get(&self, labels: L) -> Arc<C> {
        self.get_shared(labels).1
    }

    /// As [`get`](Self::get), also giving the registry's own copy of the label set, for a
    /// caller that keeps the labels (one copy per label set, not per connection).
    pub fn get_shared(&self, labels: L) -> (Arc<L>, Arc<C>) {
        let hit = CACHES.try_with(|caches| {
            caches
                .borrow()
                .get(&self.id)
                .and_then(|e| e.map.downcast_ref::<HashMap<Arc<L>, Arc<C>>>())
                .and_then(|m| m.get_key_value(&labels))
                .map(|(l, c)| (l.clone(), c.clone()))
        });
        if let Ok(Some(hit)) = hit {
            return hit;
        }
        let (labels, c) = self.register(labels);
        // Not cached when the thread is exiting (its cache is gone): that is all.
        let _ = CACHES.try_with(|caches| {
            let mut caches = caches.borrow_mut();
            caches.retain(|_, e| e.alive.strong_count() > 0);
            let e = caches.entry(self.id).or_insert_with(|| ThreadCache {
                alive: Arc::downgrade(&self.alive),
                map: Box::new(HashMap::<Arc<L>, Arc<C>>::new()),
            });
            if let Some(m) = e.map.downcast_mut::<HashMap<Arc<L>, Arc<C>>>() {
                m.insert(labels.clone(), c.clone());
            }
        });
        (labels, c)
    }

    /// Calls `f` with every label set and its counters (the scrape), under the lock.
    pub fn for_each(&self, mut f: impl FnMut(&L, &C)) {
        for (l, c) in self.map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            f(l, c);
        }
    }

    /// The shared label set and its counters, created if new; under the lock.
    fn register(&self, labels: L) -> (Arc<L>, Arc<C>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((l, c)) = map.get_key_value(&labels) {
            return (l.clone(), c.clone());
        }
        let (l, c) = (Arc::new(labels), Arc::<C>::default());
        map.insert(l.clone(), c.clone());
        (l, c)
    }
}

/// One registry's entries in one thread's cache: a `HashMap<Arc<L>, Arc<C>>` of that
/// registry's types.
struct ThreadCache {
    alive: Weak<()>,
    map: Box<dyn Any>,
}

thread_local! {
    /// Registry id → that registry's label sets as this thread has seen them.
    static CACHES: RefCell<HashMap<u64, ThreadCache>> = RefCell::default();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    type Reg = ShardRegistry<String, AtomicU64>;

    fn count(r: &Reg, label: &str) -> Option<u64> {
        let mut n = None;
        r.for_each(|l, c| {
            if l == label {
                n = Some(c.load(Ordering::Relaxed));
            }
        });
        n
    }

    /// The shard's thread finds a label set it has seen while the scrape holds the lock; the
    /// first sight of one waits for it (registration).
    #[test]
    fn a_known_label_set_takes_no_lock() {
        let r = Arc::new(Reg::default());
        let (go_tx, go_rx) = mpsc::channel::<&'static str>();
        let (done_tx, done_rx) = mpsc::channel();
        let shard = {
            let r = r.clone();
            std::thread::spawn(move || {
                for label in go_rx {
                    let c = r.get(label.to_string());
                    c.fetch_add(1, Ordering::Relaxed);
                    done_tx.send(c).unwrap();
                }
            })
        };
        go_tx.send("seen").unwrap();
        let first = done_rx.recv().unwrap();
        {
            let _scrape = r.map.lock().unwrap();
            go_tx.send("seen").unwrap();
            let again = done_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("a known label set waited for the lock");
            assert!(Arc::ptr_eq(&first, &again));
            go_tx.send("new").unwrap();
            assert!(
                done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
                "a new label set registers under the lock"
            );
        }
        assert!(done_rx.recv_timeout(Duration::from_secs(5)).is_ok());
        drop(go_tx);
        shard.join().unwrap();
        assert_eq!(count(&r, "seen"), Some(2));
        assert_eq!(count(&r, "new"), Some(1));
    }

    #[test]
    fn registries_on_one_thread_keep_their_own_entries() {
        let (a, b) = (Reg::default(), Reg::default());
        let ca = a.get("x".into());
        let cb = b.get("x".into());
        assert!(!Arc::ptr_eq(&ca, &cb));
        b.get("x".into()).fetch_add(3, Ordering::Relaxed);
        assert!(Arc::ptr_eq(&cb, &b.get("x".into())));
        assert_eq!(count(&a, "x"), Some(0));
        assert_eq!(count(&b, "x"), Some(3));
        // The cache holds the registry's label set, not a copy of it.
        let map = b.map.lock().unwrap();
        assert!(map.keys().all(|k| Arc::strong_count(k) == 2));
    }

    #[test]
    fn a_dropped_registrys_cache_is_pruned_at_the_next_registration() {
        let gone = Reg::default();
        gone.get("x".into());
        let id = gone.id;
        assert!(CACHES.with(|c| c.borrow().contains_key(&id)));
        drop(gone);
        let other = Reg::default();
        other.get("y".into());
        assert!(!CACHES.with(|c| c.borrow().contains_key(&id)));
        assert!(CACHES.with(|c| c.borrow().contains_key(&other.id)));
    }
}
