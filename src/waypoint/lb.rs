//! Per-request load balancing and outlier ejection for the waypoint, one `Balancer` per shard.
//!
//! Owns: per endpoint key, the active request count, the run of consecutive failures and the
//! ejection state; per service, the round-robin cursor and the last candidate set (for the
//! ejection cap). Pure: no clock reads (`now` is passed in), no randomness of its own (`r` is
//! passed in), no I/O, nothing shared between shards. Must not filter by health: the caller
//! passes only healthy endpoints; this module only skips outlier-ejected ones.
//!
//! Envoy's behaviour, as Istio configures it (waypoint-facts §3):
//! - `LeastRequest` (Istio's default): power of two choices. Two *distinct* candidates are drawn
//!   from `r` (Envoy draws with replacement; distinct draws never waste the second choice), the
//!   one with fewer active requests wins, a tie goes to the first draw.
//! - `RoundRobin`: a cursor per service, started at `r % n` on the service's first pick (as
//!   Envoy randomises the start so that shards and replicas do not move in lock step).
//! - Ejected endpoints are skipped; when every candidate is ejected, all of them are used
//!   (Envoy's panic mode: ejection alone never makes a request fail).
//! - Consecutive errors (`consecutive_5xx`, where local-origin connect failures count as 5xx):
//!   the `consecutive_errors`-th failure in a row attempts an ejection and restarts the run. The
//!   attempt succeeds if no endpoint of the service is ejected, or if after it at most
//!   `max_ejection_percent` of the service's endpoints are (so at least one can always be).
//!   The ejection lasts `base_ejection * times_ejected`, capped at
//!   `max(max_ejection, base_ejection)`.
//! - Decay (Envoy's "ejection time multiplier decreases with time"): for every full `interval`
//!   an endpoint spends un-ejected after its return, `times_ejected` drops by one. Computed
//!   lazily from `now` when the endpoint's state is next touched, not by a timer.
//! - `consecutive_errors == 0` turns ejection off (Istio without a DestinationRule
//!   `outlierDetection`: use `OutlierConfig::disabled()`).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How one request chooses among a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    RoundRobin,
    /// Envoy's default: power of two choices, fewer active requests wins.
    #[default]
    LeastRequest,
}

/// How a request to an endpoint ended, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any response that is not a 5xx.
    Success,
    /// A 5xx response: 502, 503, 504 and other 5xx.
    Status5xx,
    /// The upstream connection (or CONNECT tunnel) could not be established.
    ConnectFailure,
}

/// Outlier detection settings (Istio's DestinationRule `outlierDetection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_errors: u32,
    /// Ejection time for the first ejection; the n-th in a row lasts n times this.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// Most endpoints of a service ejected at once, in percent (one is always allowed).
    pub max_ejection_percent: u32,
    /// Time an endpoint stays un-ejected for its ejection multiplier to drop by one (Envoy's
    /// `interval`, default 10 s).
    pub interval: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_errors: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
            interval: Duration::from_secs(10),
        }
    }
}

impl OutlierConfig {
    /// No outlier detection (Istio's default without a DestinationRule).
    pub fn disabled() -> Self {
        OutlierConfig {
            consecutive_errors: 0,
            ..Default::default()
        }
    }
}

/// One shard's balancing and ejection state, keyed by endpoint `K` (e.g. its address).
#[derive(Debug)]
pub struct Balancer<K: Hash + Eq + Clone> {
    config: OutlierConfig,
    endpoints: HashMap<K, Endpoint>,
    services: HashMap<String, ServiceState<K>>,
}

impl<K: Hash + Eq + Clone> Balancer<K> {
    pub fn new(config: OutlierConfig) -> Self {
        Balancer {
            config,
            endpoints: HashMap::new(),
            services: HashMap::new(),
        }
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Chooses the endpoint for one request of `service` among its healthy `candidates`
    /// (`None` only when there are none). Deterministic given `r`.
    pub fn pick(
        &mut self,
        service: &str,
        candidates: &[K],
        policy: LbPolicy,
        now: Instant,
        r: u64,
    ) -> Option<K> {
        if candidates.is_empty() {
            return None;
        }
        let svc = self.service_entry(service, candidates, r);
        let cursor = svc.cursor;
        if policy == LbPolicy::RoundRobin {
            svc.cursor = svc.cursor.wrapping_add(1);
        }
        let ejected = |k: &K| self.endpoints.get(k).is_some_and(|e| e.is_ejected(now));
        let open = candidates.iter().filter(|k| !ejected(k)).count();
        // Panic mode: every candidate ejected → use them all.
        let use_all = open == 0;
        let n = if use_all { candidates.len() } else { open };
        // cannot panic: `candidates` is not empty (checked above), and `n` (≥ 1) is the
        // number of candidates `nth` chooses among, so every index below is below it.
        let nth = |i: usize| -> &K {
            if use_all {
                &candidates[i]
            } else {
                candidates
                    .iter()
                    .filter(|k| !ejected(k))
                    .nth(i)
                    .unwrap_or(&candidates[0])
            }
        };
        let chosen = match policy {
            LbPolicy::RoundRobin => nth(cursor % n),
            LbPolicy::LeastRequest if n == 1 => nth(0),
            LbPolicy::LeastRequest => {
                let (i, j) = two_choices(r, n);
                let (a, b) = (nth(i), nth(j));
                if self.active(b) < self.active(a) {
                    b
                } else {
                    a
                }
            }
        }
        .clone();
        let e = self.endpoints.entry(chosen.clone()).or_default();
        if e.service != service {
            e.service = service.to_string();
        }
        Some(chosen)
    }

    /// A request to `k` started (counts towards least-request).
    pub fn start(&mut self, k: &K) {
        let e = self.endpoints.entry(k.clone()).or_default();
        e.active = e.active.saturating_add(1);
    }

    /// A request to `k` ended with `outcome`; may eject `k`. Unknown keys (forgotten since
    /// `start`) are ignored.
    pub fn finish(&mut self, k: &K, outcome: Outcome, now: Instant) {
        let cfg = self.config;
        let Some(e) = self.endpoints.get_mut(k) else {
            return;
        };
        e.active = e.active.saturating_sub(1);
        e.decay(now, cfg.interval);
        if outcome == Outcome::Success || cfg.consecutive_errors == 0 || e.is_ejected(now) {
            // Failures while ejected do not count: an ejected endpoint cannot be ejected again.
            e.failures = 0;
            return;
        }
        e.failures += 1;
        if e.failures < cfg.consecutive_errors {
            return;
        }
        e.failures = 0;
        let service = e.service.clone();
        if !self.may_eject(&service, k, now) {
            return;
        }
        if let Some(e) = self.endpoints.get_mut(k) {
            e.eject(now, &cfg);
        }
    }

    /// The endpoints ejected at `now`, in no particular order.
    pub fn ejected(&self, now: Instant) -> Vec<K> {
        self.endpoints
            .iter()
            .filter(|(_, e)| e.is_ejected(now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Requests to `k` in flight.
    pub fn active(&self, k: &K) -> u32 {
        self.endpoints.get(k).map_or(0, |e| e.active)
    }

    /// The ejection multiplier of `k` (consecutive ejections, less decay) as of `now`.
    pub fn times_ejected(&self, k: &K, now: Instant) -> u32 {
        self.endpoints.get(k).map_or(0, |e| {
            let mut e = e.clone();
            e.decay(now, self.config.interval);
            e.times_ejected
        })
    }

    /// Drops the state of every endpoint `keep` rejects (it left the config).
    pub fn forget(&mut self, keep: impl Fn(&K) -> bool) {
        self.endpoints.retain(|k, _| keep(k));
        self.services.retain(|_, s| {
            s.members.retain(|k| keep(k));
            !s.members.is_empty()
        });
    }

    fn service_entry(&mut self, service: &str, candidates: &[K], r: u64) -> &mut ServiceState<K> {
        if !self.services.contains_key(service) {
            self.services.insert(
                service.to_string(),
                ServiceState {
                    // Truncation is fine: only the start position varies.
                    cursor: r as usize,
                    members: Vec::new(),
                },
            );
        }
        let s = self.services.get_mut(service).expect("inserted just above");
        if s.members != candidates {
            s.members = candidates.to_vec();
        }
        s
    }

    /// Envoy's cap: eject if none of the service's endpoints is ejected, or if afterwards at
    /// most `max_ejection_percent` are.
    fn may_eject(&self, service: &str, k: &K, now: Instant) -> bool {
        let Some(s) = self.services.get(service) else {
            return true;
        };
        let active = s
            .members
            .iter()
            .filter(|m| *m != k && self.endpoints.get(m).is_some_and(|e| e.is_ejected(now)))
            .count() as u64;
        let total = s.members.len().max(1) as u64;
        active == 0 || 100 * (active + 1) <= u64::from(self.config.max_ejection_percent) * total
    }
}

/// Two distinct indices below `n` (≥ 2) from one random number.
fn two_choices(r: u64, n: usize) -> (usize, usize) {
    let n64 = n as u64;
    let i = (r & 0xffff_ffff) % n64;
    let j = (i + 1 + (r >> 32) % (n64 - 1)) % n64;
    (i as usize, j as usize)
}

#[derive(Debug, Clone, Default)]
struct Endpoint {
    active: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    /// Where decay counts from: the return from ejection, advanced by whole intervals.
    decay_from: Option<Instant>,
    /// The service of the last pick (whose endpoint count caps ejection).
    service: String,
}

impl Endpoint {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|u| now < u)
    }

    fn eject(&mut self, now: Instant, cfg: &OutlierConfig) {
        let cap = cfg.max_ejection.max(cfg.base_ejection);
        // Stop growing once at the cap, so that decay brings it down in a bounded time.
        if cfg.base_ejection.saturating_mul(self.times_ejected) < cap {
            self.times_ejected = self.times_ejected.saturating_add(1);
        }
        let t = cfg
            .base_ejection
            .saturating_mul(self.times_ejected)
            .min(cap);
        // The ejection time is operator input (`--outlier-base-ejection`): one past what an
        // `Instant` holds ejects for as long as one can.
        self.ejected_until = Some(later(now, t));
        self.decay_from = self.ejected_until;
    }

    fn decay(&mut self, now: Instant, interval: Duration) {
        let Some(from) = self.decay_from else { return };
        if self.times_ejected == 0 || now <= from || interval.is_zero() {
            return;
        }
        let steps = (now - from).as_nanos() / interval.as_nanos();
        let steps = u32::try_from(steps).unwrap_or(u32::MAX);
        let taken = steps.min(self.times_ejected);
        self.times_ejected -= taken;
        // cannot panic: `taken` whole intervals after `from` is at most `now`.
        self.decay_from = Some(from + interval.saturating_mul(taken));
    }
}

/// `now + d`, or a century ahead when that overflows the clock (a century always fits: the
/// monotonic clock counts 2^63 s).
fn later(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

#[derive(Debug)]
struct ServiceState<K> {
    cursor: usize,
    members: Vec<K>,
}

#[cfg(test)]
#[path = "lb_tests.rs"]
mod tests;
