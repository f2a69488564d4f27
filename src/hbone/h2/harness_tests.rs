//! Test harness (no tests of its own): drives a codec over a tokio duplex stream, and
//! h2-crate peers to run against it. Named `*_tests.rs` because it uses tokio, which the
//! codec itself must not.

use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use super::*;

/// Our codec on one end of a duplex.
pub(super) struct Driver {
    pub conn: Conn,
    pub rd: ReadHalf<DuplexStream>,
    pub wr: WriteHalf<DuplexStream>,
    pub events: Vec<Event>,
    /// At most this many octets per read (small values leave partial frames buffered).
    pub max_read: usize,
    pub eof: bool,
    buf: Vec<u8>,
}

impl Driver {
    pub fn new(conn: Conn, io: DuplexStream) -> Driver {
        let (rd, wr) = tokio::io::split(io);
        Driver::from_halves(conn, rd, wr)
    }

    pub fn from_halves(
        conn: Conn,
        rd: ReadHalf<DuplexStream>,
        wr: WriteHalf<DuplexStream>,
    ) -> Driver {
        Driver {
            conn,
            rd,
            wr,
            events: Vec::new(),
            max_read: 64 * 1024,
            eof: false,
            buf: vec![0; 256 * 1024],
        }
    }

    /// One write or one read, whichever is ready first (writes first).
    pub async fn step(&mut self) -> Result<(), ConnError> {
        let pending = !self.conn.pending_output().is_empty();
        let max = self.max_read.min(self.buf.len());
        tokio::select! {
            biased;
            r = self.wr.write(self.conn.pending_output()), if pending => {
                let n = r.expect("duplex write");
                self.conn.advance_output(n);
            }
            r = self.rd.read(&mut self.buf[..max]), if !self.eof => {
                let n = r.expect("duplex read");
                if n == 0 {
                    self.eof = true;
                } else {
                    self.conn.recv(&self.buf[..n], &mut self.events)?;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(5)), if !pending && self.eof => {}
        }
        Ok(())
    }

    /// Steps until `f` (which may drain events and send) says done.
    pub async fn until(&mut self, mut f: impl FnMut(&mut Conn, &mut Vec<Event>) -> bool) {
        let fut = async {
            loop {
                if f(&mut self.conn, &mut self.events) {
                    return;
                }
                self.step().await.expect("codec error");
            }
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .expect("test timed out");
    }

    /// Writes all pending output.
    pub async fn flush(&mut self) {
        while !self.conn.pending_output().is_empty() {
            let n = self
                .wr
                .write(self.conn.pending_output())
                .await
                .expect("duplex write");
            self.conn.advance_output(n);
        }
    }
}

/// A duplex pair with a small buffer, so backpressure shows.
pub(super) fn duplex() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(64 * 1024)
}

/// Deterministic test payload.
pub(super) fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(super) fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// The h2 crate's client builder with ztunnel's HBONE settings.
pub(super) fn h2_client_builder() -> h2::client::Builder {
    let s = crate::hbone::H2Settings::default();
    let mut b = h2::client::Builder::new();
    b.initial_window_size(s.stream_window)
        .initial_connection_window_size(s.connection_window)
        .max_frame_size(s.frame_size)
        .max_header_list_size(s.max_header_list_size)
        .enable_push(false);
    b
}

/// The h2 crate's server builder with ztunnel's HBONE settings.
pub(super) fn h2_server_builder() -> h2::server::Builder {
    let s = crate::hbone::H2Settings::default();
    let mut b = h2::server::Builder::new();
    b.initial_window_size(s.stream_window)
        .initial_connection_window_size(s.connection_window)
        .max_frame_size(s.frame_size)
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(s.server_max_streams);
    b
}

/// Reads an h2 body to the end, releasing capacity as it goes.
pub(super) async fn read_body(body: &mut h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        got.extend_from_slice(&chunk);
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(got)
}

/// Sends `data` on an h2 stream respecting its capacity, then ends it.
pub(super) async fn write_body(
    send: &mut h2::SendStream<Bytes>,
    data: &[u8],
) -> Result<(), h2::Error> {
    let mut rest = Bytes::copy_from_slice(data);
    while !rest.is_empty() {
        send.reserve_capacity(rest.len().min(1 << 20));
        let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .ok_or_else(|| h2::Error::from(h2::Reason::CANCEL))??;
        let chunk = rest.split_to(cap.min(rest.len()));
        send.send_data(chunk, false)?;
    }
    send.send_data(Bytes::new(), true)
}

/// Collects `Data` events per stream and releases them; returns ended stream ids.
pub(super) fn take_data(
    conn: &mut Conn,
    events: &mut Vec<Event>,
    bodies: &mut std::collections::HashMap<StreamId, Vec<u8>>,
    ended: &mut Vec<StreamId>,
) -> Vec<Event> {
    let mut rest = Vec::new();
    for e in events.drain(..) {
        match e {
            Event::Data { id, data } => {
                bodies.entry(id).or_default().extend_from_slice(&data);
                conn.release(id, data.len());
            }
            Event::StreamEnd { id } => ended.push(id),
            other => rest.push(other),
        }
    }
    rest
}
