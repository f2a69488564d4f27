//! Tests of `waypoint::lb`: picking, ejection, its cap and decay, forgetting.

use std::time::{Duration, Instant};

use super::*;

const SVC: &str = "reviews.default.svc.cluster.local";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn keys(n: u32) -> Vec<u32> {
    (0..n).collect()
}

/// Picks round-robin once per candidate so that every endpoint belongs to `SVC`.
fn register(b: &mut Balancer<u32>, cands: &[u32], now: Instant) {
    for _ in cands {
        b.pick(SVC, cands, LbPolicy::RoundRobin, now, 0);
    }
}

fn fail(b: &mut Balancer<u32>, k: u32, times: u32, now: Instant) {
    for _ in 0..times {
        b.start(&k);
        b.finish(&k, Outcome::Status5xx, now);
    }
}

#[test]
fn round_robin_cycles_from_a_start_given_by_r() {
    let now = Instant::now();
    let c = keys(3);
    let mut b = Balancer::new(OutlierConfig::default());
    let got: Vec<_> = (0..7)
        .map(|i| b.pick(SVC, &c, LbPolicy::RoundRobin, now, 99 + i).unwrap())
        .collect();
    assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
    let mut b = Balancer::new(OutlierConfig::default());
    let got: Vec<_> = (0..4)
        .map(|_| b.pick("other", &c, LbPolicy::RoundRobin, now, 1).unwrap())
        .collect();
    assert_eq!(got, [1, 2, 0, 1]);
}

#[test]
fn round_robin_cursor_is_per_service() {
    let now = Instant::now();
    let c = keys(2);
    let mut b = Balancer::new(OutlierConfig::default());
    assert_eq!(b.pick("a", &c, LbPolicy::RoundRobin, now, 0), Some(0));
    assert_eq!(b.pick("b", &c, LbPolicy::RoundRobin, now, 0), Some(0));
    assert_eq!(b.pick("a", &c, LbPolicy::RoundRobin, now, 0), Some(1));
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let now = Instant::now();
    let mut b = Balancer::new(OutlierConfig::default());
    let c = keys(2);
    b.start(&0);
    b.start(&0);
    for r in 0..50u64 {
        let r = r.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        assert_eq!(b.pick(SVC, &c, LbPolicy::LeastRequest, now, r), Some(1));
    }
    // Three endpoints: the busiest can never win a two-way contest.
    let c = keys(3);
    b.start(&1);
    let mut seen = [0u32; 3];
    for r in 0..300u64 {
        let r = r.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let k = b.pick(SVC, &c, LbPolicy::LeastRequest, now, r).unwrap();
        seen[k as usize] += 1;
    }
    assert_eq!(seen[0], 0, "{seen:?}");
    assert!(seen[2] > seen[1] && seen[1] > 0, "{seen:?}");
}

#[test]
fn least_request_tie_goes_to_the_first_choice_and_finish_frees() {
    let now = Instant::now();
    let mut b = Balancer::new(OutlierConfig::default());
    let c = keys(2);
    assert_eq!(b.pick(SVC, &c, LbPolicy::LeastRequest, now, 0), Some(0));
    assert_eq!(b.pick(SVC, &c, LbPolicy::LeastRequest, now, 1), Some(1));
    b.start(&0);
    assert_eq!(b.active(&0), 1);
    assert_eq!(b.pick(SVC, &c, LbPolicy::LeastRequest, now, 0), Some(1));
    b.finish(&0, Outcome::Success, now);
    assert_eq!(b.active(&0), 0);
    assert_eq!(b.pick(SVC, &c, LbPolicy::LeastRequest, now, 0), Some(0));
}

#[test]
fn single_candidate_and_no_candidate() {
    let now = Instant::now();
    let mut b = Balancer::new(OutlierConfig::default());
    for p in [LbPolicy::LeastRequest, LbPolicy::RoundRobin] {
        assert_eq!(b.pick(SVC, &[7], p, now, 12345), Some(7));
        assert_eq!(b.pick(SVC, &[], p, now, 12345), None);
    }
}

#[test]
fn two_choices_are_distinct_and_in_range() {
    for n in 2..9usize {
        for r in 0..200u64 {
            let r = r.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let (i, j) = two_choices(r, n);
            assert!(i < n && j < n && i != j, "n={n} r={r} → {i},{j}");
        }
    }
}

#[test]
fn picks_are_deterministic_given_r() {
    let now = Instant::now();
    let c = keys(5);
    let run = || {
        let mut b = Balancer::new(OutlierConfig::default());
        (0..20u64)
            .map(|r| {
                let k = b
                    .pick(SVC, &c, LbPolicy::LeastRequest, now, r * 7919)
                    .unwrap();
                b.start(&k);
                k
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn ejects_after_n_consecutive_5xx_and_not_before() {
    let now = Instant::now();
    let c = keys(10);
    let mut b = Balancer::new(OutlierConfig::default());
    register(&mut b, &c, now);
    fail(&mut b, 3, 4, now);
    assert!(b.ejected(now).is_empty());
    fail(&mut b, 3, 1, now);
    assert_eq!(b.ejected(now), vec![3]);
    for r in 0..100 {
        for p in [LbPolicy::LeastRequest, LbPolicy::RoundRobin] {
            assert_ne!(b.pick(SVC, &c, p, now, r), Some(3));
        }
    }
}

#[test]
fn connect_failures_count_like_5xx() {
    let now = Instant::now();
    let c = keys(10);
    let mut b = Balancer::new(OutlierConfig::default());
    register(&mut b, &c, now);
    fail(&mut b, 0, 2, now);
    for _ in 0..3 {
        b.start(&0);
        b.finish(&0, Outcome::ConnectFailure, now);
    }
    assert_eq!(b.ejected(now), vec![0]);
}

#[test]
fn success_resets_the_run() {
    let now = Instant::now();
    let c = keys(10);
    let mut b = Balancer::new(OutlierConfig::default());
    register(&mut b, &c, now);
    fail(&mut b, 1, 4, now);
    b.start(&1);
    b.finish(&1, Outcome::Success, now);
    fail(&mut b, 1, 4, now);
    assert!(b.ejected(now).is_empty());
    fail(&mut b, 1, 1, now);
    assert_eq!(b.ejected(now), vec![1]);
}

#[test]
fn disabled_never_ejects() {
    let now = Instant::now();
    let c = keys(10);
    let mut b = Balancer::new(OutlierConfig::disabled());
    register(&mut b, &c, now);
    fail(&mut b, 1, 100, now);
    assert!(b.ejected(now).is_empty());
}

#[test]
fn ejection_expires_and_grows_with_repeats_up_to_the_cap() {
    let t0 = Instant::now();
    let c = keys(10);
    let mut b = Balancer::new(OutlierConfig::default());
    register(&mut b, &c, t0);
    fail(&mut b, 2, 5, t0);
    assert_eq!(b.ejected(t0 + secs(29)), vec![2]);
    assert!(b.ejected(t0 + secs(30)).is_empty());
    assert_eq!(b.times_ejected(&2, t0 + secs(30)), 1);
    // Back at 30 s, ejected again within one interval: twice as long.
    let t1 = t0 + secs(31);
    assert_eq!(b.pick(SVC, &[2], LbPolicy::LeastRequest, t1, 0), Some(2));
    register(&mut b, &c, t1);
    fail(&mut b, 2, 5, t1);
    assert_eq!(b.times_ejected(&2, t1), 2);
    assert_eq!(b.ejected(t1 + secs(59)), vec![2]);
    assert!(b.ejected(t1 + secs(60)).is_empty());
    // Repeated ejections stop growing at max_ejection (300 s).
    let mut t = t1 + secs(60);
    for _ in 0..15 {
        fail(&mut b, 2, 5, t);
        let until = (0..=400)
            .map(|s| t + secs(s))
            .find(|at| b.ejected(*at).is_empty())
            .unwrap();
        assert!(until - t <= secs(300), "{:?}", until - t);
        t = until;
    }
    assert!(b.ejected(t).is_empty());
    fail(&mut b, 2, 5, t);
    assert_eq!(b.ejected(t + secs(299)), vec![2]);
    assert!(b.ejected(t + secs(300)).is_empty());
}

#[test]
fn times_ejected_decays_one_per_healthy_interval() {
    let t0 = Instant::now();
    let c = keys(10);
    let mut b = Balancer::new(OutlierConfig::default());
    register(&mut b, &c, t0);
    fail(&mut b, 4, 5, t0); // until 30 s
    fail(&mut b, 4, 5, t0 + secs(30)); // ×2: until 90 s
    assert_eq!(b.times_ejected(&4, t0 + secs(90)), 2);
    assert_eq!(b.times_ejected(&4, t0 + secs(99)), 2);
    assert_eq!(b.times_ejected(&4, t0 + secs(100)), 1);
    // Failures short of an ejection do not stop the decay; the next ejection starts from it.
    fail(&mut b, 4, 3, t0 + secs(105));
    assert_eq!(b.times_ejected(&4, t0 + secs(110)), 0);
    fail(&mut b, 4, 2, t0 + secs(110));
    assert_eq!(b.times_ejected(&4, t0 + secs(110)), 1);
    assert_eq!(b.ejected(t0 + secs(139)), vec![4]);
    assert!(b.ejected(t0 + secs(140)).is_empty());
}

#[test]
fn all_ejected_still_picks() {
    let now = Instant::now();
    let cfg = OutlierConfig {
        max_ejection_percent: 100,
        ..Default::default()
    };
    let mut b = Balancer::new(cfg);
    let c = keys(2);
    register(&mut b, &c, now);
    fail(&mut b, 0, 5, now);
    fail(&mut b, 1, 5, now);
    let mut e = b.ejected(now);
    e.sort();
    assert_eq!(e, [0, 1]);
    for p in [LbPolicy::LeastRequest, LbPolicy::RoundRobin] {
        assert!(b.pick(SVC, &c, p, now, 3).is_some());
    }
    // A lone endpoint is always ejectable and still picked.
    let mut b = Balancer::new(OutlierConfig::default());
    register(&mut b, &[9], now);
    fail(&mut b, 9, 5, now);
    assert_eq!(b.ejected(now), vec![9]);
    assert_eq!(b.pick(SVC, &[9], LbPolicy::LeastRequest, now, 0), Some(9));
}

#[test]
fn max_ejection_percent_with_at_least_one() {
    let now = Instant::now();
    // 3 endpoints, 10 %: the first ejection is allowed anyway, the second not.
    let mut b = Balancer::new(OutlierConfig::default());
    let c = keys(3);
    register(&mut b, &c, now);
    fail(&mut b, 0, 5, now);
    fail(&mut b, 1, 5, now);
    assert_eq!(b.ejected(now), vec![0]);
    // The refused attempt restarted the run: 4 more do not eject once room frees up.
    let later = now + secs(30);
    fail(&mut b, 1, 4, later);
    assert!(b.ejected(later).is_empty());
    fail(&mut b, 1, 1, later);
    assert_eq!(b.ejected(later), vec![1]);

    // 20 endpoints, 10 %: two at once.
    let mut b = Balancer::new(OutlierConfig::default());
    let c = keys(20);
    register(&mut b, &c, now);
    for k in 0..3 {
        fail(&mut b, k, 5, now);
    }
    let mut e = b.ejected(now);
    e.sort();
    assert_eq!(e, [0, 1]);
}

#[test]
fn forget_drops_state_of_departed_endpoints() {
    let now = Instant::now();
    let c = keys(10);
    let mut b = Balancer::new(OutlierConfig::default());
    register(&mut b, &c, now);
    fail(&mut b, 5, 5, now);
    b.start(&6);
    b.start(&5);
    assert_eq!(b.ejected(now), vec![5]);
    b.forget(|k| *k != 5);
    assert!(b.ejected(now).is_empty());
    assert_eq!(b.active(&5), 0);
    assert_eq!(b.active(&6), 1);
    assert_eq!(b.times_ejected(&5, now), 0);
    // A late finish for a forgotten endpoint is ignored, not resurrected.
    b.finish(&5, Outcome::Status5xx, now);
    assert_eq!(b.active(&5), 0);
    // The kept endpoints' state survives.
    fail(&mut b, 6, 5, now);
    assert_eq!(b.ejected(now), vec![6]);
}

#[test]
fn an_ejection_time_past_the_clock_ejects_without_panicking() {
    // `--outlier-base-ejection` is operator input: an ejection that would end past what an
    // `Instant` holds must not panic the request that triggers it.
    let cfg = OutlierConfig {
        consecutive_errors: 1,
        base_ejection: Duration::MAX,
        max_ejection: Duration::MAX,
        max_ejection_percent: 100,
        interval: secs(10),
    };
    let mut b = Balancer::new(cfg);
    let now = Instant::now();
    register(&mut b, &keys(2), now);
    fail(&mut b, 0, 1, now);
    assert_eq!(b.ejected(now), vec![0]);
    assert_eq!(b.ejected(now + secs(99 * 365 * 24 * 3600)), vec![0]);
    assert_eq!(b.times_ejected(&0, now), 1);
}
