//! Tests of a link tunnel's end on a real shard (either engine), with a real link and a
//! loopback app socket: a policy change resets the tunnel through the re-check registry
//! (whose entry the end removes, from inside the re-check) and the end logs, counts and gives
//! back the live count and the connection bound; a link that goes away without ending its
//! tunnels still ends them, logged; a moved tunnel is neither logged nor counted closed; a
//! stream refused unprocessed is tried again from its end.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::hbone::h2::{Config, Conn, Role, StreamId};
use crate::io::link::Link;
use crate::proxy::conns::Kill;
use crate::proxy::links::{PolicyMeta, unix_ms_ago};
use crate::proxy::test_shard::*;
use crate::runtime::Engine;

fn meta(direction: &str) -> TunnelMeta {
    TunnelMeta {
        direction: direction.into(),
        pod: "srv".into(),
        src: "127.0.0.2:40000".parse().unwrap(),
        src_id: Some("spiffe://cluster.local/ns/default/sa/client".into()),
        dst: "127.0.0.1:15008".parse().unwrap(),
        hbone_addr: Some("127.0.0.1:9000".parse().unwrap()),
        dst_id: Some("spiffe://cluster.local/ns/default/sa/server".into()),
        service: None,
        labels: Arc::new(labels()),
        started_unix_ms: unix_ms_ago(std::time::Duration::ZERO),
        policy: Some(PolicyMeta {
            dst_uid: "srv".into(),
            src: "127.0.0.2:40000".parse().unwrap(),
            dst: "127.0.0.1:9000".parse().unwrap(),
            src_identity: None,
        }),
    }
}

/// A tunnel on a link with no task (nothing moves; its end is what is tested), holding the
/// shard's live count and a connection-bound slot, and registered for the policy re-check
/// if `registered`.
fn tunnel(ctx: &Rc<ShardCtx>, direction: &str, registered: bool) -> (Link, StreamId) {
    let (ours, _far) = pair();
    let link = Link::new(Conn::new(
        Role::Client,
        Config::hbone(Role::Client, &ctx.cfg.h2),
    ));
    let m = Rc::new(meta(direction));
    let mut done = done(ctx, m.clone());
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("127.0.0.1:9000")
        .body(())
        .unwrap();
    let fields = crate::hbone::h2::request_fields(&req);
    let app = Stream::from_fd(ours).unwrap();
    let id = link
        .open_tunnel(&fields, app, done.counters.clone(), m.clone())
        .unwrap();
    done.conn = registered
        .then(|| ctx.conns.add_tunnel(&m, Kill::Reset(link.clone(), id)))
        .flatten();
    link.on_end(id, done.on_end());
    (link, id)
}

/// A tunnel's end on `m`, holding the shard's live count and a connection-bound slot.
fn done(ctx: &Rc<ShardCtx>, m: Rc<TunnelMeta>) -> TunnelDone {
    let metrics = ConnMetrics::open(ctx, labels());
    let outbound = m.is_outbound();
    TunnelDone {
        ctx: ctx.clone(),
        counters: metrics.counters(outbound),
        meta: m,
        metrics,
        before: (0, 0),
        holds: Holds {
            live: ctx.live_guard(),
            slot: Some(ctx.limit.take()),
            share: None,
        },
        conn: None,
        outbound,
        retry: None,
    }
}

/// (registered for the re-check, live, within the connection bound).
fn held(p: &Proc) -> (usize, u64, usize) {
    let live = p.metrics.live.load(Ordering::Relaxed);
    let (c, l) = p.call(|ctx| (ctx.conns.len(), ctx.limit.open()));
    (c, live, l)
}

fn closed_failed(p: &Proc) -> (u64, u64) {
    let c = p.metrics.counters_for(labels());
    (
        c.closed.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    )
}

fn a_policy_change_ends_a_tunnel_logged(engine: Engine) {
    let p = process(engine);
    // The link stays alive through the registry's entry only (no task, no other handle).
    p.call(|ctx| drop(tunnel(ctx, "inbound", true)));
    assert_eq!(
        held(&p),
        (1, 1, 1),
        "an idle tunnel holds its entry, live count, slot"
    );
    assert_eq!(closed_failed(&p), (0, 0));
    let snap = crate::config::snapshot_from_str("t.yaml", CFG_GONE, 2).unwrap();
    p.state.store(Arc::new(snap));
    assert_eq!(p.call(|ctx| ctx.conns.recheck(&ctx.state.load())), 1);
    assert_eq!(held(&p), (0, 0, 0), "the end gave everything back");
    assert_eq!(closed_failed(&p), (1, 0));
    let log = p.log.text();
    assert!(
        log.contains("connection closed due to policy change") && log.contains("inbound"),
        "{log}"
    );
}

fn a_link_that_goes_away_ends_its_tunnels_logged(engine: Engine) {
    let p = process(engine);
    let ended = p.call(|ctx| {
        let (link, _) = tunnel(ctx, "outbound", false);
        let before = ctx.limit.open();
        drop(link);
        (before, ctx.limit.open())
    });
    assert_eq!(ended, (1, 0));
    assert_eq!(held(&p), (0, 0, 0));
    // No byte moved: an outbound tunnel that ends in error counts as failed.
    assert_eq!(closed_failed(&p), (1, 1));
    let log = p.log.text();
    assert!(
        log.contains("HBONE stream to 127.0.0.1:15008: the HBONE connection went away"),
        "{log}"
    );
}

fn a_moved_tunnel_is_not_logged_or_counted_closed(engine: Engine) {
    let p = process(engine);
    p.call(|ctx| {
        let (link, id) = tunnel(ctx, "inbound", true);
        // As the link's export ends each tunnel it moved.
        link.reset_with(id, TunnelEnd::Moved);
    });
    assert_eq!(held(&p), (0, 0, 0));
    assert_eq!(closed_failed(&p), (0, 0));
    assert!(!p.log.text().contains("inbound"), "{}", p.log.text());
}

/// A stream the peer refused unprocessed, ended with its app socket back and a first
/// attempt's route, is tried again from the end's call (a task of its own): here the retry
/// finds no certificate (the shard has none) and ends the tunnel with that error, logged,
/// counted failed, everything given back. Without the retry it would end as refused.
fn a_stream_refused_unprocessed_is_tried_again(engine: Engine) {
    let p = process(engine);
    p.call(|ctx| {
        let (ours, _far) = pair();
        let mut d = done(ctx, Rc::new(meta("outbound")));
        let snap = ctx.state.load_full();
        d.retry = Some(Box::new(Retry {
            pod: Arc::new(Pod::new("srv", Arc::new(crate::inpod::Netns::current()))),
            src: snap.workload_by_uid("srv").unwrap().clone(),
            expected: Vec::new(),
        }));
        d.ended(TunnelEnd::Unprocessed, Some(Stream::from_fd(ours).unwrap()));
    });
    assert_eq!(held(&p), (0, 1, 1), "the retry holds the tunnel's shares");
    let t0 = std::time::Instant::now();
    while held(&p) != (0, 0, 0) {
        assert!(t0.elapsed() < WAIT, "the retry did not end: {:?}", held(&p));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(closed_failed(&p), (1, 1));
    let log = p.log.text();
    assert!(
        log.contains("no certificate for") && !log.contains("refused unprocessed"),
        "{log}"
    );
}

on_both_engines!(
    a_stream_refused_unprocessed_is_tried_again,
    a_policy_change_ends_a_tunnel_logged,
    a_link_that_goes_away_ends_its_tunnels_logged,
    a_moved_tunnel_is_not_logged_or_counted_closed,
);
