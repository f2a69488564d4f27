//! RequestMirror: a copy of the request — headers and body — sent to the mirror backend,
//! fire and forget, as Envoy's request mirror policy (streaming shadow) sends it.
//!
//! Owns: the decision per request (`percent`, random number from the caller), the tap that
//! copies the client's body to the mirror as the primary request reads it (`Bytes` are
//! shared, not copied), and the mirror request's own task. The primary request never waits
//! for the mirror: the copy queued for a mirror that reads slower than the primary is bounded
//! by `MAX_QUEUED` (Envoy's default per-connection buffer limit, 1 MiB); past it the mirror
//! request is reset and the primary goes on. The mirror's answer is read and dropped; a
//! missing mirror service or endpoint drops only the mirror (a debug line). Like Istio's
//! waypoint, the mirror's `Host` keeps its value (no `-shadow` suffix:
//! `DISABLE_SHADOW_HOST_SUFFIX`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::WaypointShard;
use super::endpoints;
use super::http::{authority_of, service_named, strip_hop_by_hop, upstream_request};
use super::routes;
use super::upstream::{self, UpBody, UpProto};
use crate::state::Snapshot;

/// Body bytes a mirror may fall behind the primary request before it is reset.
pub const MAX_QUEUED: usize = 1 << 20;

/// The primary request's side of a mirror: what it feeds as its body is read.
pub struct Tap {
    shared: Rc<RefCell<Shared>>,
}

/// The mirror request's body: the frames the tap copied, in order.
pub struct MirrorBody {
    shared: Rc<RefCell<Shared>>,
    hint: SizeHint,
}

/// Why a mirror's body ended early.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The mirror fell more than `MAX_QUEUED` bytes behind the primary request.
    #[error("mirror fell {0} bytes behind the primary request; mirror reset")]
    Overrun(usize),
    /// The client's body failed or the primary request was abandoned before its end.
    #[error("the primary request's body did not complete; mirror reset")]
    Aborted,
}

#[derive(Default)]
struct Shared {
    frames: VecDeque<Bytes>,
    queued: usize,
    trailers: Option<HeaderMap>,
    state: State,
    waker: Option<Waker>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    #[default]
    Open,
    Ended,
    Overrun(usize),
    Aborted,
}

/// A connected tap and mirror body; `hint` is the client body's size hint.
pub fn channel(hint: SizeHint) -> (Tap, MirrorBody) {
    let shared = Rc::new(RefCell::new(Shared::default()));
    (
        Tap {
            shared: shared.clone(),
        },
        MirrorBody { shared, hint },
    )
}

impl Tap {
    /// Copies a data frame to the mirror (a no-op once the mirror is gone or reset).
    pub fn data(&self, b: &Bytes) {
        if Rc::strong_count(&self.shared) < 2 {
            return;
        }
        let mut s = self.shared.borrow_mut();
        if s.state != State::Open {
            return;
        }
        s.queued += b.len();
        if s.queued > MAX_QUEUED {
            s.state = State::Overrun(s.queued);
            s.frames.clear();
        } else {
            s.frames.push_back(b.clone());
        }
        s.wake();
    }

    /// Copies the trailers.
    pub fn trailers(&self, t: &HeaderMap) {
        let mut s = self.shared.borrow_mut();
        if s.state == State::Open && Rc::strong_count(&self.shared) > 1 {
            s.trailers = Some(t.clone());
        }
    }

    /// The client's body ended.
    pub fn end(&self) {
        self.shared.borrow_mut().finish(State::Ended);
    }

    /// The client's body failed.
    pub fn abort(&self) {
        self.shared.borrow_mut().finish(State::Aborted);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // A primary request dropped before its body ended: the mirror cannot complete.
        self.shared.borrow_mut().finish(State::Aborted);
    }
}

impl Shared {
    fn finish(&mut self, to: State) {
        if self.state == State::Open {
            self.state = to;
            self.wake();
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = MirrorError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MirrorError>>> {
        let mut s = self.shared.borrow_mut();
        match s.state {
            State::Overrun(n) => return Poll::Ready(Some(Err(MirrorError::Overrun(n)))),
            State::Aborted => return Poll::Ready(Some(Err(MirrorError::Aborted))),
            State::Open | State::Ended => {}
        }
        if let Some(b) = s.frames.pop_front() {
            s.queued -= b.len();
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if s.state == State::Ended {
            return Poll::Ready(s.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.borrow();
        s.state == State::Ended && s.frames.is_empty() && s.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Starts the mirror request for `m` when this request is mirrored; returns the tap the
/// primary request's body feeds (None: not mirrored, or no body to copy).
#[allow(clippy::too_many_arguments)]
pub fn start(
    ctx: &Rc<WaypointShard>,
    snap: &Arc<Snapshot>,
    m: &routes::Mirror,
    parts: &http::request::Parts,
    proto: UpProto,
    body_hint: Option<SizeHint>,
    client: SocketAddr,
    r: u64,
) -> Option<Tap> {
    if !routes::mirror_hit(m.percent, r) {
        return None;
    }
    let Some(svc) = service_named(snap, &m.backend.namespace, &m.backend.name) else {
        tracing::debug!(
            "mirror backend {}/{} not found",
            m.backend.namespace,
            m.backend.name
        );
        return None;
    };
    let port = m.backend.port.unwrap_or(80);
    let picked = match endpoints::pick(ctx, snap, &svc, port, client.ip(), &[]) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("mirror to {}: {e}", svc.hostname);
            return None;
        }
    };
    let mut p = parts.clone();
    strip_hop_by_hop(&mut p.headers);
    let authority = authority_of(&p.uri, &p.headers);
    let (tap, body): (Option<Tap>, UpBody) = match body_hint {
        Some(hint) => {
            let (tap, body) = channel(hint);
            (
                Some(tap),
                http_body_util::Either::Right(http_body_util::Either::Right(body)),
            )
        }
        None => (None, super::http::empty_body()),
    };
    let ctx = ctx.clone();
    crate::runtime::engine::spawn(async move {
        let host = svc.hostname.clone();
        let ready =
            match upstream::connect(&ctx, &picked.transport, proto, client, Some(&host)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("mirror to {host}: {e}");
                    return;
                }
            };
        let req = upstream_request(&p, proto, body, &authority);
        match ready.send(&ctx, req).await {
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!("mirror to {host}: {e}"),
        }
    });
    tap
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    fn next(b: &mut MirrorBody) -> Poll<Option<Result<Frame<Bytes>, MirrorError>>> {
        let w = futures_noop_waker();
        let mut cx = Context::from_waker(&w);
        Pin::new(b).poll_frame(&mut cx)
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }

    #[test]
    fn frames_and_trailers_reach_the_mirror_in_order() {
        let (tap, mut body) = channel(SizeHint::with_exact(6));
        assert!(next(&mut body).is_pending());
        tap.data(&Bytes::from_static(b"abc"));
        tap.data(&Bytes::from_static(b"def"));
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        tap.trailers(&t);
        tap.end();
        let mut got = Vec::new();
        loop {
            match next(&mut body) {
                Poll::Ready(Some(Ok(f))) if f.is_data() => {
                    got.extend_from_slice(&f.into_data().unwrap())
                }
                Poll::Ready(Some(Ok(f))) => {
                    assert_eq!(f.into_trailers().unwrap()["grpc-status"], "0")
                }
                Poll::Ready(None) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, b"abcdef");
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(6));
    }

    #[test]
    fn a_slow_mirror_is_reset_not_buffered_without_bound() {
        let (tap, mut body) = channel(SizeHint::default());
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        for _ in 0..(MAX_QUEUED / chunk.len() + 1) {
            tap.data(&chunk);
        }
        assert!(tap.shared.borrow().frames.is_empty(), "queue dropped");
        match next(&mut body) {
            Poll::Ready(Some(Err(MirrorError::Overrun(n)))) => assert!(n > MAX_QUEUED),
            other => panic!("expected overrun, got {other:?}"),
        }
        // Later frames are not queued either.
        tap.data(&chunk);
        assert!(tap.shared.borrow().frames.is_empty());
    }

    #[test]
    fn a_dropped_primary_resets_the_mirror_and_a_dropped_mirror_stops_the_copy() {
        let (tap, mut body) = channel(SizeHint::default());
        tap.data(&Bytes::from_static(b"x"));
        drop(tap);
        assert!(matches!(
            next(&mut body),
            Poll::Ready(Some(Err(MirrorError::Aborted)))
        ));

        let (tap, body) = channel(SizeHint::default());
        drop(body);
        tap.data(&Bytes::from_static(b"x"));
        assert!(tap.shared.borrow().frames.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_mirror_waits_for_the_primary_and_is_woken() {
        let (tap, mut body) = channel(SizeHint::default());
        let reader = async move {
            let mut got = Vec::new();
            while let Some(f) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                got.extend_from_slice(&f.unwrap().into_data().unwrap());
            }
            got
        };
        let writer = async move {
            for c in [&b"one "[..], b"two"] {
                tokio::task::yield_now().await;
                tap.data(&Bytes::copy_from_slice(c));
            }
            tap.end();
        };
        let (got, ()) = tokio::join!(reader, writer);
        assert_eq!(got, b"one two");
    }
}
