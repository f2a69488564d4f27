//! Strings that many connections of a shard carry alike (pod uids, SPIFFE identities,
//! service hostnames, the direction), kept once: every idle tunnel's bookkeeping
//! ([`super::links::TunnelMeta`]) points at them instead of owning seven strings of its own
//! (≈ 250 bytes a tunnel on each node, with the allocator's rounding).
//!
//! Owns: [`Names`]. A name no connection holds any more is forgotten on a later insert
//! (amortized: every time as many names were added as the set holds, at least
//! [`PRUNE_EVERY`]), so the set is bounded by the names in use, not by those ever seen.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::Arc;

/// Inserts between two prunes, at least.
const PRUNE_EVERY: usize = 1024;

/// One shard's shared strings.
#[derive(Default)]
pub struct Names {
    set: RefCell<HashSet<Arc<str>>>,
    added: Cell<usize>,
}

impl Names {
    /// The shard's copy of `s`.
    pub fn get(&self, s: &str) -> Arc<str> {
        let mut set = self.set.borrow_mut();
        if let Some(a) = set.get(s) {
            return a.clone();
        }
        let added = self.added.get() + 1;
        if added >= set.len().max(PRUNE_EVERY) {
            set.retain(|a| Arc::strong_count(a) > 1);
            self.added.set(0);
        } else {
            self.added.set(added);
        }
        let a: Arc<str> = Arc::from(s);
        set.insert(a.clone());
        a
    }

    /// As [`get`](Self::get) for an optional string.
    pub fn opt(&self, s: Option<&str>) -> Option<Arc<str>> {
        s.map(|s| self.get(s))
    }

    /// Names held now.
    pub fn len(&self) -> usize {
        self.set.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_kept_once_and_forgotten_when_no_one_holds_it() {
        let n = Names::default();
        let a = n.get("spiffe://cluster.local/ns/default/sa/client");
        let b = n.get("spiffe://cluster.local/ns/default/sa/client");
        assert!(Arc::ptr_eq(&a, &b), "one copy");
        assert_eq!(n.opt(None), None);
        drop((a, b));
        // Names held by no one go at the next prune; held ones stay.
        let kept = n.get("kept");
        for i in 0..PRUNE_EVERY {
            drop(n.get(&format!("transient-{i}")));
        }
        assert!(n.len() < PRUNE_EVERY / 2, "{} names after a prune", n.len());
        assert!(Arc::ptr_eq(&kept, &n.get("kept")), "a held name survives");
    }
}
