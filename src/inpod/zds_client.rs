//! The node proxy's side of ZDS: connects to istio-cni's socket, says hello, and turns each
//! request into an event for the control thread, answering with its ACK or NACK. Reconnects
//! with backoff (10 ms doubling to `max_backoff`). Runs on a thread of its own (blocking
//! SEQPACKET I/O); the control thread does the work and replies through a channel.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use super::seqpacket::SeqPacket;
use super::zds::{self, Action, Session, Version, WorkloadResponse, ZdsHello};

/// What the ZDS client tells the control thread.
#[derive(Debug)]
pub enum ZdsEvent {
    /// Connected and said hello: a new snapshot follows.
    Connected,
    /// A request to carry out; reply `Ok` to ACK, `Err(reason)` to NACK.
    Request {
        action: Action,
        netns: Option<File>,
        reply: std_mpsc::Sender<Result<(), String>>,
    },
    /// The connection ended (reconnecting).
    Disconnected(String),
}

/// Starts the client thread. It ends when `events` is closed.
pub fn spawn(
    path: PathBuf,
    events: tokio::sync::mpsc::UnboundedSender<ZdsEvent>,
    max_backoff: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("zds".into())
        .spawn(move || run(path, events, max_backoff))
}

fn run(path: PathBuf, events: tokio::sync::mpsc::UnboundedSender<ZdsEvent>, max: Duration) {
    let mut backoff = Duration::from_millis(10);
    let mut warned = false;
    loop {
        if events.is_closed() {
            return;
        }
        let sock = match SeqPacket::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                if !warned {
                    tracing::warn!(socket = %path.display(), "cannot reach the CNI node agent (ZDS): {e}; retrying");
                    warned = true;
                }
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2).min(max);
                continue;
            }
        };
        warned = false;
        if let Err(e) = sock.send(
            &zds::encode(&ZdsHello {
                version: Version::V1 as i32,
            }),
            &[],
        ) {
            tracing::warn!("ZDS hello failed: {e}");
            std::thread::sleep(backoff);
            backoff = backoff.saturating_mul(2).min(max);
            continue;
        }
        backoff = Duration::from_millis(10);
        tracing::info!(socket = %path.display(), "connected to the CNI node agent (ZDS)");
        if events.send(ZdsEvent::Connected).is_err() {
            return;
        }
        let why = serve(&sock, &events);
        tracing::warn!("ZDS connection ended: {why}; reconnecting");
        if events.send(ZdsEvent::Disconnected(why)).is_err() {
            return;
        }
        std::thread::sleep(backoff);
    }
}

/// Handles requests until the connection ends; returns why it ended.
fn serve(sock: &SeqPacket, events: &tokio::sync::mpsc::UnboundedSender<ZdsEvent>) -> String {
    let mut session = Session::default();
    loop {
        let rec = match sock.recv(zds::MAX_MESSAGE) {
            Ok(Some(r)) => r,
            Ok(None) => return "closed by the CNI".into(),
            Err(e) => return format!("receive failed: {e}"),
        };
        let nfds = rec.fds.len();
        let result = match session.handle(&rec.data, nfds, rec.truncated) {
            Err(e) => Err(e.to_string()),
            Ok(action) => {
                let netns = rec.fds.into_iter().next().map(File::from);
                let (tx, rx) = std_mpsc::channel();
                let ev = ZdsEvent::Request {
                    action,
                    netns,
                    reply: tx,
                };
                if events.send(ev).is_err() {
                    return "node proxy stopping".into();
                }
                rx.recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| Err("node proxy did not answer in 30s".into()))
            }
        };
        let resp = match &result {
            Ok(()) => WorkloadResponse::ack(),
            Err(e) => {
                tracing::warn!("ZDS request refused: {e}");
                WorkloadResponse::nack(e.clone())
            }
        };
        if let Err(e) = sock.send(&zds::encode(&resp), &[]) {
            return format!("ack failed: {e}");
        }
    }
}
