//! HBONE's TLS on a runtime socket, the "direct" record layer: rustls runs the handshake
//! (its unbuffered API) and logs the application traffic secrets (`tls::capture`); from
//! then on our key schedule (`tls::schedule`) derives the keys — KeyUpdate too — and
//! `tls::record` seals application data straight into the buffer the socket sends from and
//! opens records in the buffer they were received into. Holding the secrets (not just
//! rustls's opaque `KernelConnection`) is what lets a connection move to another process.
//!
//! Owns: driving the handshake over a `Stream` (encode, transmit, read, with the alert rustls
//! queues on failure), the hand-over (application data that arrived with the handshake's
//! last flight is kept), and the data phase as `AsyncRead`/`AsyncWrite` for h2: record
//! framing on reads, sealing and zero-copy hand-off on writes with a bound on what is
//! queued, KeyUpdate both ways (the peer's — capped by `record::PeerLimits`, answered with
//! at most one reply waiting for the socket however many ask, and never after our
//! close_notify or alert — and ours before the cipher's confidentiality limit),
//! NewSessionTicket (ignored: resumption is off), close_notify on shutdown and as a clean end
//! on reads, user_canceled taken in stride, and an alert before closing on a bad record,
//! on the wire before the read returns its error (on uring a closed socket drops what is
//! still queued for it).
//!
//! Copies per byte: received — on uring, records are opened where the ring received them
//! and their plaintext is copied once, into h2's buffer (a record split across two ring
//! buffers is gathered first); on epoll, the socket reads into `rx`, records are opened
//! there and handed on; sent — h2's frames into the record (fused with sealing), then the
//! record buffer goes to the socket without another copy. rustls's
//! buffered API adds a plaintext `Vec` on receive and a record `Vec` plus a copy into the
//! socket's buffer on send (`bench/README.md`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::runtime::net::Stream;
use crate::tls::capture;
use crate::tls::record::{self, Alert, Keys, PostHandshake, RecordError};
use crate::tls::schedule::{ScheduleError, Suite, TrafficSecret};
use crate::tls::state::TlsState;

/// Sealed bytes a connection queues before `poll_write` waits for the socket.
const TX_MAX: usize = 256 * 1024;
/// Sealed bytes that make a send of their own before h2 flushes.
const PUSH_AT: usize = 64 * 1024;
/// A bulk send buffer: one `poll_write` batch of full records.
const BULK_BUF: usize =
    TX_MAX + (TX_MAX / record::MAX_PLAIN + 1) * (record::HEADER + 1 + record::TAG);
/// Room reserved for each read from the socket while data streams (several records).
const RX_CHUNK: usize = 128 * 1024;
/// Room for reads while the connection is quiet (one full record).
const SMALL_RX: usize = record::MAX_CIPHER + record::HEADER;
/// Buffers kept for reuse are dropped if nothing was sent for this long.
const SPARE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// A TLS 1.3 connection past its handshake, read and written by h2.
pub struct TlsStream {
    io: Stream,
    /// Our application traffic secret (the next generation is derived from it at a KeyUpdate).
    tx_secret: TrafficSecret,
    /// The peer's.
    rx_secret: TrafficSecret,
    /// Which end we are (what a server may not receive: NewSessionTicket).
    client: bool,
    tx_keys: Keys,
    rx_keys: Keys,
    /// Records one key may seal before we switch keys (KeyUpdate).
    rekey_after: u64,
    /// Received bytes not yet opened (whole and partial records).
    rx: BytesMut,
    /// How much room the next read gets (adaptive: large while reads fill it).
    rx_size: usize,
    /// Opened plaintext h2 has not read yet.
    plain: BytesMut,
    /// Sealed records not yet handed to the socket.
    tx: BytesMut,
    /// Records handed to the socket but not yet accepted by it.
    out: Option<Bytes>,
    /// Buffers handed to the socket earlier, kept to be refilled once the socket has sent
    /// them (then they are ours alone): a reused buffer is in cache and faulted in.
    spares: [Option<Bytes>; 2],
    /// When records last went to the socket (stale spares are dropped, not kept forever).
    last_push: std::time::Instant,
    /// Whether the last records handed to the socket were a bulk push (≥ `PUSH_AT`): data
    /// is streaming, so the next buffer is a bulk one even if h2 writes it frame by frame.
    streaming: bool,
    peer_certs: Vec<CertificateDer<'static>>,
    /// close_notify received: reads return end of stream.
    read_closed: bool,
    /// A fatal error on the read side, repeated to every later read.
    read_err: Option<(io::ErrorKind, String)>,
    /// Our close_notify or an alert is sealed: nothing more is.
    close_sent: bool,
    /// The read path sealed an alert that has not reached the socket yet.
    alert_unsent: bool,
    /// The peer asked for a KeyUpdate we have not sent yet.
    key_update_owed: bool,
    /// KeyUpdates and warning alerts the peer may still send.
    limits: record::PeerLimits,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tx_seq", &self.tx_keys.seq())
            .field("rx_seq", &self.rx_keys.seq())
            .finish()
    }
}

impl TlsStream {
    /// Readies the connection for the next process (hitless upgrade): what is sealed goes to
    /// the wire, the socket stops receiving, and what was received and not yet opened or read
    /// travels in the state. The caller stops reading and writing first and bounds the wait
    /// (a peer that does not read keeps the send queue full). A connection whose read side
    /// already failed is not worth continuing: an error.
    pub async fn export(mut self) -> io::Result<(std::os::fd::OwnedFd, TlsState)> {
        if let Some((kind, msg)) = &self.read_err {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        std::future::poll_fn(|cx| self.poll_push(cx)).await?;
        let TlsStream {
            io,
            tx_secret,
            rx_secret,
            client,
            tx_keys,
            rx_keys,
            rekey_after,
            mut rx,
            plain,
            tx,
            peer_certs,
            read_closed,
            close_sent,
            key_update_owed,
            limits,
            ..
        } = self;
        let (fd, more, unsent) = io.detach().await?;
        rx.extend_from_slice(&more);
        // Records the socket had queued go first, then those sealed after them.
        let mut tx_all = unsent;
        tx_all.extend_from_slice(&tx);
        let st = TlsState {
            client,
            tx_secret,
            tx_seq: tx_keys.seq(),
            rx_secret,
            rx_seq: rx_keys.seq(),
            rekey_after,
            key_update_owed,
            read_closed,
            close_sent,
            limits,
            rx: rx.to_vec(),
            plain: plain.to_vec(),
            tx: tx_all,
            peer_certs: peer_certs.iter().map(|c| c.to_vec()).collect(),
        };
        Ok((fd, st))
    }

    /// Continues a connection another process exported, on `io` (its socket, received with
    /// the state). Records sealed there and not yet sent go first.
    pub fn import(io: Stream, st: TlsState) -> io::Result<TlsStream> {
        Ok(TlsStream {
            io,
            tx_keys: st.tx_secret.keys(st.tx_seq).map_err(schedule_error)?,
            rx_keys: st.rx_secret.keys(st.rx_seq).map_err(schedule_error)?,
            tx_secret: st.tx_secret,
            rx_secret: st.rx_secret,
            client: st.client,
            rekey_after: st.rekey_after,
            rx: BytesMut::from(&st.rx[..]),
            rx_size: SMALL_RX,
            plain: BytesMut::from(&st.plain[..]),
            tx: BytesMut::from(&st.tx[..]),
            out: None,
            spares: [None, None],
            last_push: std::time::Instant::now(),
            streaming: false,
            peer_certs: st
                .peer_certs
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            read_closed: st.read_closed,
            read_err: None,
            close_sent: st.close_sent,
            alert_unsent: false,
            key_update_owed: st.key_update_owed,
            limits: st.limits,
        })
    }

    /// The peer's certificate chain, as the handshake verified it.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        (!self.peer_certs.is_empty()).then_some(&self.peer_certs[..])
    }

    fn fail_read(&mut self, kind: io::ErrorKind, msg: String) -> io::Error {
        self.read_err = Some((kind, msg.clone()));
        io::Error::new(kind, msg)
    }

    /// A bad record: seal the alert the peer is owed and fail this and every later read
    /// (the read returns the error once the alert is on the wire: `finish_read`).
    fn bad_record(&mut self, e: RecordError) -> io::Error {
        self.alert_unsent |= self.seal_last(e.alert());
        self.fail_read(io::ErrorKind::InvalidData, format!("TLS: {e}"))
    }

    /// Seals `alert` (close_notify or an error alert) as the last record we send (RFC 8446
    /// §6): nothing is sealed after it, not even a KeyUpdate the peer asked for. False if
    /// one was sealed already (or this key has no sequence numbers left).
    fn seal_last(&mut self, alert: [u8; 2]) -> bool {
        if self.close_sent {
            return false;
        }
        self.close_sent = true;
        self.key_update_owed = false;
        self.tx_keys
            .seal(record::ALERT, &alert, &mut self.tx)
            .is_ok()
    }

    /// Seals `parts` (together at most one record's worth) as application data, switching
    /// to a fresh key first when the peer asked for it or this one has sealed its share.
    fn seal(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        if self.key_update_owed || self.tx_keys.seq() >= self.rekey_after {
            self.rekey_tx()?;
        }
        self.tx_keys
            .seal_parts(record::APPLICATION_DATA, parts, &mut self.tx)
            .map_err(record_error)
    }

    /// Sends KeyUpdate (update_not_requested) under the current key, then switches to the
    /// next one (RFC 8446 §4.6.3).
    fn rekey_tx(&mut self) -> io::Result<()> {
        self.key_update_owed = false;
        self.tx_keys
            .seal(
                record::HANDSHAKE,
                &record::KEY_UPDATE_NOT_REQUESTED,
                &mut self.tx,
            )
            .map_err(record_error)?;
        self.tx_secret = self.tx_secret.next();
        self.tx_keys = self.tx_secret.keys(0).map_err(schedule_error)?;
        Ok(())
    }

    /// Sends the KeyUpdate the peer asked for once all we sealed before has gone to the
    /// socket: however many requests come, at most one reply waits for the socket (RFC 8446
    /// §4.6.3 asks for one before our next application data, which `seal` sees to; rustls,
    /// too, keeps at most one queued: `CommonState::should_update_key`).
    fn answer_key_update(&mut self) -> io::Result<()> {
        if self.key_update_owed && self.tx.is_empty() && self.out.is_none() {
            self.rekey_tx()?;
        }
        Ok(())
    }

    /// The end of every `poll_read`: what the read path sealed goes to the socket now, not
    /// only with h2's next flush — the KeyUpdate the peer asked for, the alert a bad record
    /// is owed. A read failing with such an alert returns its error only once the socket has
    /// taken the alert: h2 drops the connection right after the error, and a uring socket
    /// drops what is still queued when it closes (the peer would never learn why).
    fn finish_read(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.answer_key_update() {
            let msg = format!("TLS: cannot update our traffic key: {e}");
            return Poll::Ready(Err(self.fail_read(io::ErrorKind::InvalidData, msg)));
        }
        match r {
            Poll::Ready(Err(e)) if self.alert_unsent => {
                match self.poll_push(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                // Sent, or the socket failed: either way the error is next.
                let _ = ready!(Pin::new(&mut self.io).poll_flush(cx));
                self.alert_unsent = false;
                Poll::Ready(Err(e))
            }
            r => {
                if !self.tx.is_empty() {
                    let _ = self.poll_push(cx);
                }
                r
            }
        }
    }

    /// Hands sealed records to the socket; Ready once nothing is left unaccepted.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.out.is_some() {
                ready!(self.io.poll_write_bytes(cx, &mut self.out))?;
            }
            if self.tx.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let now = std::time::Instant::now();
            if now.duration_since(self.last_push) > SPARE_TTL {
                self.spares = [None, None];
            }
            self.last_push = now;
            self.streaming = self.tx.len() >= PUSH_AT;
            let bulk = self.tx.capacity() >= BULK_BUF;
            let b = std::mem::take(&mut self.tx).freeze();
            if bulk {
                let slot = self.spares.iter().position(|s| s.is_none()).unwrap_or(0);
                self.spares[slot] = Some(b.clone());
            }
            self.out = Some(b);
        }
    }

    /// An empty buffer for at least `need` bytes: a spare the socket is done with, else new.
    fn take_spare(&mut self, need: usize) -> BytesMut {
        if need < PUSH_AT && !self.streaming {
            // Control frames and small writes on a quiet connection: a small buffer, not
            // kept once sent. (While data streams, h2 writes one frame per call: a small
            // buffer would be grown, and copied, several times before each push.)
            return BytesMut::with_capacity(need.max(record::MAX_PLAIN));
        }
        for slot in &mut self.spares {
            if let Some(b) = slot.take() {
                match b.try_into_mut() {
                    Ok(mut m) if m.capacity() >= need => {
                        m.clear();
                        return m;
                    }
                    Ok(_) => {}
                    Err(b) => *slot = Some(b),
                }
            }
        }
        BytesMut::with_capacity(need.max(BULK_BUF))
    }

    fn queued(&self) -> usize {
        self.tx.len() + self.out.as_ref().map_or(0, |b| b.len())
    }

    /// Opens the next whole record in `rx`, if one is there. Application data lands in
    /// `plain`; post-handshake messages and alerts are handled here.
    fn open_next(&mut self) -> io::Result<Option<()>> {
        let len = match record::record_len(&self.rx) {
            Ok(Some(len)) if self.rx.len() >= len => len,
            Ok(_) => return Ok(None),
            Err(e) => return Err(self.bad_record(e)),
        };
        let mut rec = self.rx.split_to(len);
        let (typ, n) = match self.rx_keys.open(&mut rec) {
            Ok(x) => x,
            Err(e) => return Err(self.bad_record(e)),
        };
        rec.advance(record::HEADER);
        rec.truncate(n);
        if typ == record::APPLICATION_DATA {
            self.limits.app_data();
            if self.plain.is_empty() {
                self.plain = rec;
            } else {
                self.plain.extend_from_slice(&rec);
            }
        } else {
            self.control(typ, &rec)?;
        }
        Ok(Some(()))
    }

    /// A record that is not application data, opened: post-handshake messages and alerts.
    fn control(&mut self, typ: u8, body: &[u8]) -> io::Result<()> {
        match typ {
            record::HANDSHAKE => {
                let msgs = match record::post_handshake(body) {
                    Ok(m) => m,
                    Err(e) => return Err(self.bad_record(e)),
                };
                for m in msgs {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => return Err(self.bad_record(e)),
                    };
                    match m {
                        PostHandshake::KeyUpdate { update_requested } => {
                            if let Err(e) = self.limits.key_update() {
                                return Err(self.bad_record(e));
                            }
                            self.rx_secret = self.rx_secret.next();
                            self.rx_keys = self.rx_secret.keys(0).map_err(schedule_error)?;
                            // Answered later (`answer_key_update`, `seal`), once however
                            // many ask; never after our close_notify.
                            self.key_update_owed |= update_requested && !self.close_sent;
                        }
                        // Resumption is off: a client keeps no ticket.
                        PostHandshake::NewSessionTicket(_) if self.client => {}
                        PostHandshake::NewSessionTicket(_) => {
                            return Err(self.bad_record(RecordError::UnexpectedHandshake(4)));
                        }
                    }
                }
                Ok(())
            }
            record::ALERT => match record::alert(body) {
                Ok(Alert::CloseNotify) => {
                    self.read_closed = true;
                    Ok(())
                }
                // Not an error (RFC 8446 §6.1); a close_notify should follow.
                Ok(Alert::UserCanceled) => {
                    self.limits.warning_alert().map_err(|e| self.bad_record(e))
                }
                Ok(a) => Err(self.fail_read(io::ErrorKind::ConnectionAborted, a.to_string())),
                Err(e) => Err(self.bad_record(e)),
            },
            t => Err(self.bad_record(RecordError::UnexpectedType(t))),
        }
    }

    /// uring: opens whole records where the ring received them and copies their plaintext
    /// straight into `buf` (the only user-space copy of received data); a record the ring
    /// split across buffers is gathered in `rx` first. `None`: the engine has no such reads.
    fn poll_read_in_place(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Option<Poll<io::Result<()>>> {
        let mut ctrl: Option<(u8, Vec<u8>)> = None;
        let mut bad: Option<RecordError> = None;
        let TlsStream {
            io,
            rx_keys,
            rx,
            plain,
            limits,
            ..
        } = self;
        let start = buf.filled().len();
        let polled = io.poll_read_in_place(cx, |chunk| {
            let mut used = 0;
            if !rx.is_empty() {
                // Complete the record begun in an earlier buffer, and no more.
                let want = match record::record_len(rx) {
                    Ok(Some(len)) => len - rx.len(),
                    Ok(None) => record::HEADER - rx.len(),
                    Err(e) => {
                        bad = Some(e);
                        return 0;
                    }
                };
                let n = want.min(chunk.len());
                rx.extend_from_slice(&chunk[..n]);
                return n;
            }
            while used < chunk.len() && ctrl.is_none() && bad.is_none() && plain.is_empty() {
                // Stop before a record that may not fit once this call has delivered some
                // plaintext (the caller's buffer may come partly filled: measure from here).
                if buf.remaining() < record::MAX_PLAIN && buf.filled().len() > start {
                    break;
                }
                let rest = &mut chunk[used..];
                let len = match record::record_len(rest) {
                    Ok(Some(len)) if rest.len() >= len => len,
                    Ok(_) => {
                        rx.extend_from_slice(rest);
                        used = chunk.len();
                        break;
                    }
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                };
                match rx_keys.open(&mut rest[..len]) {
                    Ok((typ, n)) => {
                        let body = &rest[record::HEADER..record::HEADER + n];
                        if typ == record::APPLICATION_DATA {
                            limits.app_data();
                            let k = n.min(buf.remaining());
                            buf.put_slice(&body[..k]);
                            plain.extend_from_slice(&body[k..]);
                        } else {
                            ctrl = Some((typ, body.to_vec()));
                        }
                        used += len;
                    }
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                }
            }
            used
        })?;
        if let Some(e) = bad {
            return Some(Poll::Ready(Err(self.bad_record(e))));
        }
        if let Some((typ, body)) = ctrl
            && let Err(e) = self.control(typ, &body)
        {
            return Some(Poll::Ready(Err(e)));
        }
        Some(match polled {
            Poll::Ready(Ok(0)) if buf.filled().len() == start => Poll::Ready(Err(self.eof())),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        })
    }

    /// `poll_read` but for what it sends (`finish_read`): plaintext already opened, else
    /// the records that have arrived, else a read from the socket.
    fn poll_read_records(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self;
        loop {
            if !me.plain.is_empty() {
                let n = me.plain.len().min(buf.remaining());
                buf.put_slice(&me.plain[..n]);
                me.plain.advance(n);
                if me.plain.is_empty() {
                    // Let go of the read buffer so `rx` can reuse it.
                    me.plain = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if let Some((kind, msg)) = &me.read_err {
                return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
            }
            if me.read_closed {
                return Poll::Ready(Ok(()));
            }
            if me.open_next()?.is_some() {
                continue;
            }
            let before = buf.filled().len();
            match me.poll_read_in_place(cx, buf) {
                Some(Poll::Ready(Ok(()))) => {
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                    // Took a partial record into `rx`, or a control record: look again.
                    continue;
                }
                Some(other) => return other,
                None => {}
            }
            let want = match record::record_len(&me.rx) {
                Ok(Some(len)) => len - me.rx.len(),
                _ => record::HEADER,
            };
            if me.rx.is_empty() && me.rx_size == SMALL_RX && me.rx.capacity() > 2 * SMALL_RX {
                // Quiet again: give the large buffer back (an idle connection holds ≈ 16 KiB).
                me.rx = BytesMut::new();
            }
            if me.rx.capacity() - me.rx.len() < want.max(record::MAX_CIPHER) {
                me.rx.reserve(me.rx_size.max(want));
            }
            let room = me.rx.capacity() - me.rx.len();
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut me.io),
                cx,
                &mut me.rx
            ))?;
            if n == 0 {
                return Poll::Ready(Err(me.eof()));
            }
            // Large reads while data streams, a small buffer once it is quiet.
            me.rx_size = if n * 2 >= room { RX_CHUNK } else { SMALL_RX };
        }
    }

    /// The socket ended without close_notify.
    fn eof(&mut self) -> io::Error {
        let msg = if self.rx.is_empty() {
            "peer closed the connection without sending TLS close_notify"
        } else {
            "peer closed the connection in the middle of a TLS record"
        };
        self.fail_read(io::ErrorKind::UnexpectedEof, msg.into())
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = me.poll_read_records(cx, buf);
        me.finish_read(cx, r)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if me.queued() >= TX_MAX {
            // Wait for the socket unless it took enough to make room.
            let pushed = me.poll_push(cx)?;
            if pushed.is_pending() && me.queued() >= TX_MAX {
                return Poll::Pending;
            }
        }
        let room = TX_MAX.saturating_sub(me.queued()).max(record::MAX_PLAIN);
        // Room for every record up front: growing `tx` record by record would copy it over
        // and over.
        let total = bufs.iter().map(|b| b.len()).sum::<usize>().min(room);
        let records = total.div_ceil(record::MAX_PLAIN);
        let need = total + records * (record::HEADER + 1 + record::TAG);
        if me.tx.is_empty() && me.tx.capacity() < need {
            me.tx = me.take_spare(need);
        }
        me.tx.reserve(need);
        let mut taken = 0;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(4);
        let mut part_len = 0;
        for b in bufs {
            let mut b: &[u8] = b;
            while !b.is_empty() && taken < room {
                let n = b.len().min(record::MAX_PLAIN - part_len).min(room - taken);
                parts.push(&b[..n]);
                part_len += n;
                taken += n;
                b = &b[n..];
                if part_len == record::MAX_PLAIN {
                    me.seal(&parts)?;
                    parts.clear();
                    part_len = 0;
                }
            }
        }
        if part_len > 0 {
            me.seal(&parts)?;
        }
        // Send in large pieces: h2 writes frame by frame and flushes at the end of a batch.
        if me.tx.len() >= PUSH_AT {
            let _ = me.poll_push(cx)?;
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_push(cx))?;
        me.answer_key_update()?;
        ready!(me.poll_push(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.seal_last(record::CLOSE_NOTIFY);
        ready!(me.poll_push(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn record_error(e: RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn schedule_error(e: ScheduleError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The unbuffered API of either side, so one handshake loop drives both.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// What the handshake leaves for the data phase.
struct Handover {
    /// Received bytes after the handshake's last record (encrypted under the traffic key).
    rest: BytesMut,
    /// Application data rustls already opened (it arrived with the peer's last flight).
    plain: BytesMut,
    /// The first application traffic secrets, as rustls logged them.
    secrets: capture::Captured,
}

/// Drives `conn` through the handshake on `io`. On a failure it sends the alert rustls
/// queued (best effort) and returns the error.
async fn handshake<C: Unbuffered>(io: &mut Stream, conn: &mut C) -> io::Result<Handover> {
    let mut secrets = capture::Captured::default();
    let mut inbuf = vec![0u8; 0];
    let mut used = 0usize;
    let mut outbuf: Vec<u8> = Vec::new();
    let mut out_used = 0usize;
    let mut plain = BytesMut::new();
    let mut failed: Option<io::Error> = None;
    loop {
        enum Next {
            Again,
            Transmit,
            Read,
            Done,
        }
        // rustls logs the traffic secrets inside these calls (`tls::capture`).
        let UnbufferedStatus { mut discard, state } =
            capture::during(&mut secrets, || conn.process(&mut inbuf[..used]));
        let next = match state {
            Err(e) => {
                if failed.is_some() {
                    // The alert (if any) went out; stop.
                    break;
                }
                failed = Some(tls_error(e));
                Next::Again
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                loop {
                    match capture::during(&mut secrets, || enc.encode(&mut outbuf[out_used..])) {
                        Ok(n) => {
                            out_used += n;
                            break;
                        }
                        Err(EncodeError::InsufficientSize(s)) => {
                            outbuf.resize(out_used + s.required_size, 0);
                        }
                        Err(EncodeError::AlreadyEncoded) => break,
                    }
                }
                Next::Again
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Next::Transmit
            }
            Ok(ConnectionState::BlockedHandshake) => Next::Read,
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(tls_error)?;
                    discard += rec.discard;
                    plain.extend_from_slice(rec.payload);
                }
                Next::Again
            }
            Ok(ConnectionState::WriteTraffic(_)) => Next::Done,
            Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
                failed.get_or_insert_with(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection during the TLS handshake",
                    )
                });
                Next::Transmit
            }
            Ok(_) => {
                failed.get_or_insert_with(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS early data")
                });
                Next::Transmit
            }
        };
        if discard > 0 {
            inbuf.copy_within(discard..used, 0);
            used -= discard;
        }
        match next {
            Next::Again => {}
            Next::Transmit | Next::Done => {
                if out_used > 0 {
                    let sent = io.write_all(&outbuf[..out_used]).await;
                    out_used = 0;
                    if let Err(e) = sent {
                        return Err(failed.unwrap_or(e));
                    }
                }
                if let Some(e) = failed.take() {
                    return Err(e);
                }
                if matches!(next, Next::Done) {
                    break;
                }
            }
            Next::Read => {
                if let Some(e) = failed.take() {
                    return Err(e);
                }
                if inbuf.len() - used < record::MAX_CIPHER + record::HEADER {
                    inbuf.resize(used + record::MAX_CIPHER + record::HEADER, 0);
                }
                let n = io.read(&mut inbuf[used..]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection during the TLS handshake",
                    ));
                }
                used += n;
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Handover {
        rest: BytesMut::from(&inbuf[..used]),
        plain,
        secrets,
    })
}

fn finish(
    io: Stream,
    mut over: Handover,
    peer_certs: Vec<CertificateDer<'static>>,
    suite: Option<rustls::SupportedCipherSuite>,
    secrets: rustls::ExtractedSecrets,
    client: bool,
) -> io::Result<TlsStream> {
    let suite = suite.ok_or_else(|| tls_bug("no cipher suite after the handshake"))?;
    let limit = suite
        .tls13()
        .map(|s| s.common.confidentiality_limit)
        .unwrap_or(1 << 24);
    let suite = Suite::from_rustls(suite.suite())
        .ok_or_else(|| tls_bug("a cipher suite the direct record layer does not know"))?;
    let (ours, theirs) = if client {
        (over.secrets.client.take(), over.secrets.server.take())
    } else {
        (over.secrets.server.take(), over.secrets.client.take())
    };
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        return Err(tls_bug(
            "the handshake's traffic secrets were not logged (the rustls config lacks tls::capture::Capture as its key_log)",
        ));
    };
    let tx_secret = TrafficSecret::new(suite, &ours).map_err(schedule_error)?;
    let rx_secret = TrafficSecret::new(suite, &theirs).map_err(schedule_error)?;
    // Our schedule starts where rustls's keys are (records it already protected count).
    let (tx_seq, rx_seq) = (secrets.tx.0, secrets.rx.0);
    Ok(TlsStream {
        io,
        tx_keys: tx_secret.keys(tx_seq).map_err(schedule_error)?,
        rx_keys: rx_secret.keys(rx_seq).map_err(schedule_error)?,
        tx_secret,
        rx_secret,
        client,
        rekey_after: record::key_update_after(limit),
        rx: over.rest,
        rx_size: SMALL_RX,
        plain: over.plain,
        tx: BytesMut::new(),
        out: None,
        spares: [None, None],
        last_push: std::time::Instant::now(),
        streaming: false,
        peer_certs,
        read_closed: false,
        read_err: None,
        close_sent: false,
        alert_unsent: false,
        key_update_owed: false,
        limits: record::PeerLimits::default(),
    })
}

fn tls_bug(msg: &str) -> io::Error {
    io::Error::other(format!("TLS: {msg}"))
}

/// The client handshake. `cfg` must have `enable_secret_extraction`.
pub async fn connect(
    mut io: Stream,
    cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<TlsStream> {
    let mut conn = UnbufferedClientConnection::new(cfg, name).map_err(tls_error)?;
    let over = handshake(&mut io, &mut conn).await?;
    let certs = peer_certs(conn.peer_certificates());
    let suite = conn.negotiated_cipher_suite();
    let (secrets, _) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    finish(io, over, certs, suite, secrets, true)
}

/// The server handshake. `cfg` must have `enable_secret_extraction`.
pub async fn accept(mut io: Stream, cfg: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let mut conn = UnbufferedServerConnection::new(cfg).map_err(tls_error)?;
    let over = handshake(&mut io, &mut conn).await?;
    let certs = peer_certs(conn.peer_certificates());
    let suite = conn.negotiated_cipher_suite();
    let (secrets, _) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    finish(io, over, certs, suite, secrets, false)
}

fn peer_certs(c: Option<&[CertificateDer<'static>]>) -> Vec<CertificateDer<'static>> {
    c.map(|c| c.to_vec()).unwrap_or_default()
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
