//! Tests of `benchmark` (the run's pure parts): tuning profiles, `--peer`, and how a
//! contender's rounds become its figures.

use super::*;

#[test]
fn profiles_parse() {
    let (ns, global) = parse_profile(
        "# comment\nnet.core.somaxconn = 4096\n\nnet.ipv4.tcp_rmem = 4096 131072 16777216 # x\nvm.swappiness=0\n",
    )
    .unwrap();
    assert_eq!(ns[0], ("net.core.somaxconn".into(), "4096".into()));
    assert_eq!(ns[1].1, "4096 131072 16777216");
    assert_eq!(global, vec!["vm.swappiness".to_string()]);
    assert!(parse_profile("nonsense").is_err());
    assert!(parse_profile("a b = c").is_err());
}

fn round(idle: f64, with: f64, rr_us: &[u64]) -> Round {
    let mut l = Latency::default();
    for us in rr_us {
        l.record_us(*us);
    }
    Round {
        rss_idle: Some(idle),
        rss_tunnels: Some(with),
        rr_1k: Some(l),
        ..Default::default()
    }
}

#[test]
fn summaries_are_per_round_then_the_median() {
    let sizes = Sizes {
        tunnels: 1000,
        ..Sizes::full()
    };
    // Per tunnel: 10 000, 30 000 and 0 (RSS fell: nothing counted, not negative).
    let rounds = [
        round(50e6, 60e6, &[100; 10]),
        round(40e6, 70e6, &[200; 10]),
        round(90e6, 80e6, &[300; 10]),
    ];
    let c = summarize(&rounds, &sizes);
    let d = &c.detail;
    let b = d.bytes_per_tunnel.unwrap();
    assert_eq!((b.min, b.median, b.max, b.n), (0.0, 10_000.0, 30_000.0, 3));
    assert_eq!(c.bytes_per_tunnel, Some(10_000.0));
    assert_eq!(d.tunnels, Some(1000));
    // Pooled p50 over all 30 requests, and each round's own.
    assert_eq!(c.rr_p50_us, Some(200.0));
    let p50 = d.rr_1k_p50_us.unwrap();
    assert_eq!((p50.min, p50.max, p50.n), (100.0, 300.0, 3));
    assert_eq!(d.fixed_rate_per_s, None, "no fixed-rate rounds");
    let fixed = Round {
        rr_fixed: Some(Latency::default()),
        ..Default::default()
    };
    let c = summarize(&[fixed], &sizes);
    assert_eq!(c.detail.fixed_rate_per_s, Some(2000.0));
    assert_eq!(c.bytes_per_tunnel, None);
    // Quick runs the full run's fixed rate, for less time.
    assert_eq!(Sizes::quick().fixed_rate, Sizes::full().fixed_rate);
}

#[test]
fn peers_parse() {
    assert_eq!(
        parse_peer("zt=env A=1 ztunnel").unwrap(),
        Contender::Peer {
            name: "zt".into(),
            command: "env A=1 ztunnel".into()
        }
    );
    assert!(parse_peer("raw=x").is_err());
    assert!(parse_peer("relay=x").is_err());
    assert!(parse_peer("relay-tls=x").is_err());
    assert!(parse_peer("noequals").is_err());
    assert!(parse_peer("x=  ").is_err());
}
