//! Live inbound connections of one shard, kept so that a policy change can close the ones it
//! now denies (ztunnel's PolicyWatcher / AuthorizationPolicyLateRejection).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tokio::sync::Notify;

use crate::policy::{ConnFacts, evaluate};
use crate::state::Snapshot;

#[derive(Default)]
pub struct Registry {
    next: Cell<u64>,
    live: RefCell<HashMap<u64, Live>>,
}

struct Live {
    dst_uid: String,
    facts: ConnFacts,
    kill: Rc<Notify>,
}

/// Keeps a connection registered; unregisters on drop.
pub struct Registration<'a> {
    reg: &'a Registry,
    id: u64,
    pub kill: Rc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.reg.live.borrow_mut().remove(&self.id);
    }
}

impl Registry {
    pub fn register(&self, dst_uid: &str, facts: ConnFacts) -> Registration<'_> {
        let id = self.next.get();
        self.next.set(id + 1);
        let kill = Rc::new(Notify::new());
        self.live.borrow_mut().insert(
            id,
            Live {
                dst_uid: dst_uid.to_string(),
                facts,
                kill: kill.clone(),
            },
        );
        Registration {
            reg: self,
            id,
            kill,
        }
    }

    /// Registers a connection continued from another process and checks it against `snap`
    /// at once: a policy change the previous process did not see before it let go closes
    /// it now, as a later change would (its kill is signalled before anyone waits on it).
    pub fn register_adopted(
        &self,
        dst_uid: &str,
        facts: ConnFacts,
        snap: &Snapshot,
    ) -> Registration<'_> {
        let allowed = allowed(snap, dst_uid, &facts);
        let r = self.register(dst_uid, facts);
        if !allowed {
            r.kill.notify_one();
        }
        r
    }

    pub fn len(&self) -> usize {
        self.live.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evaluates every live connection against `snap`; signals the denied ones to close.
    /// Returns how many were signalled.
    pub fn recheck(&self, snap: &Snapshot) -> usize {
        let live = self.live.borrow();
        let mut n = 0;
        for l in live.values() {
            if !allowed(snap, &l.dst_uid, &l.facts) {
                l.kill.notify_one();
                n += 1;
            }
        }
        n
    }
}

/// Whether `snap`'s policies allow a connection to the workload `dst_uid` (an unknown
/// workload: no).
fn allowed(snap: &Snapshot, dst_uid: &str, facts: &ConnFacts) -> bool {
    match snap.workload_by_uid(dst_uid) {
        Some(w) => evaluate(snap.policies_for(w), facts).is_allow(),
        None => false,
    }
}
