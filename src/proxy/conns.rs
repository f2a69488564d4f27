//! Live inbound connections of one shard, kept so that a policy change can close the ones it
//! now denies (ztunnel's PolicyWatcher / AuthorizationPolicyLateRejection).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tokio::sync::Notify;

use super::links::TunnelMeta;
use crate::io::link::{Link, TunnelEnd};
use crate::policy::{ConnFacts, evaluate};
use crate::state::Snapshot;

#[derive(Default)]
pub struct Registry {
    next: Cell<u64>,
    live: RefCell<HashMap<u64, Live>>,
}

struct Live {
    what: Subject,
    kill: Kill,
}

/// What a live connection's policy is checked on.
enum Subject {
    /// Boxed: the tunnels' entries, most of them, stay small.
    Conn(Box<(String, ConnFacts)>),
    /// A link tunnel: its bookkeeping (`policy`), shared with the tunnel instead of copied
    /// (every idle tunnel has an entry; the facts are made when a re-check needs them).
    Tunnel(Rc<TunnelMeta>),
}

impl Subject {
    fn allowed(&self, snap: &Snapshot) -> bool {
        match self {
            Subject::Conn(c) => allowed(snap, &c.0, &c.1),
            Subject::Tunnel(m) => match &m.policy {
                Some(p) => {
                    let facts = ConnFacts {
                        src: p.src,
                        dst: p.dst,
                        src_identity: p.src_identity.as_deref().and_then(|s| s.parse().ok()),
                    };
                    allowed(snap, &p.dst_uid, &facts)
                }
                None => true,
            },
        }
    }
}

/// How a connection a policy change denies is closed.
#[derive(Clone)]
pub enum Kill {
    /// Its task waits on this.
    Notify(Rc<Notify>),
    /// A tunnel on the link task (no task of its own): reset, ended with
    /// [`POLICY_CLOSED`].
    Reset(Link, crate::hbone::h2::StreamId),
}

/// The access log's error for a connection a policy change closed.
pub use super::relays::POLICY_CLOSED;

impl Kill {
    fn kill(&self) {
        match self {
            Kill::Notify(n) => n.notify_one(),
            Kill::Reset(link, id) => link.reset_with(*id, TunnelEnd::Link(POLICY_CLOSED.into())),
        }
    }
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
        let kill = Rc::new(Notify::new());
        let id = self.add(dst_uid, facts, Kill::Notify(kill.clone()));
        Registration {
            reg: self,
            id,
            kill,
        }
    }

    /// Registers a connection that `kill` closes (its [`Registration`] removes it).
    fn add(&self, dst_uid: &str, facts: ConnFacts, kill: Kill) -> u64 {
        let what = Subject::Conn(Box::new((dst_uid.to_string(), facts)));
        self.insert(Live { what, kill })
    }

    /// As [`add`](Self::add), for a link tunnel checked on its bookkeeping's `policy`
    /// (None: it has none, nothing to check).
    pub fn add_tunnel(&self, meta: &Rc<TunnelMeta>, kill: Kill) -> Option<u64> {
        meta.policy.as_ref()?;
        let what = Subject::Tunnel(meta.clone());
        Some(self.insert(Live { what, kill }))
    }

    fn insert(&self, l: Live) -> u64 {
        let id = self.next.get();
        self.next.set(id + 1);
        self.live.borrow_mut().insert(id, l);
        id
    }

    pub fn remove(&self, id: u64) {
        self.live.borrow_mut().remove(&id);
    }

    /// Checks connection `id` against `snap` now (one continued from another process, which
    /// may not have seen a change this one has): closed if denied, as a later change would.
    pub fn check_now(&self, id: u64, snap: &Snapshot) {
        let denied = self
            .live
            .borrow()
            .get(&id)
            .is_some_and(|l| !l.what.allowed(snap));
        if denied {
            self.kill(id);
        }
    }

    fn kill(&self, id: u64) {
        // Not under the borrow: a tunnel's end removes its entry.
        let k = self.live.borrow().get(&id).map(|l| l.kill.clone());
        if let Some(k) = k {
            k.kill();
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
        let denied: Vec<u64> = self
            .live
            .borrow()
            .iter()
            .filter(|(_, l)| !l.what.allowed(snap))
            .map(|(id, _)| *id)
            .collect();
        for id in &denied {
            self.kill(*id);
        }
        denied.len()
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
