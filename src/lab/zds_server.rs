//! The CNI side of ZDS, as the lab plays istio-cni: listens on a node's ZDS socket, and for
//! every node proxy that connects sends the node's ambient pods (`Add` with the pod's netns
//! fd), then `SnapshotSent`, waiting for each ack, as istio-cni does. Stays connected; a proxy
//! that connects later (a restart, or a rolling update while the old one still runs) gets
//! the snapshot too.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;

use crate::inpod::seqpacket::{SeqPacket, SeqPacketListener};
use crate::inpod::zds::{
    self, AddWorkload, Payload, SnapshotSent, WorkloadInfo, WorkloadRequest, WorkloadResponse,
    ZdsHello,
};

/// A pod the server enrols.
#[derive(Debug, Clone)]
pub struct ZdsPod {
    pub uid: String,
    pub info: WorkloadInfo,
    pub netns: PathBuf,
}

/// A running ZDS server; stops (and removes its socket) on drop.
pub struct ZdsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    /// Log of what happened (for status output and tests).
    pub events: Arc<Mutex<Vec<String>>>,
}

impl ZdsServer {
    pub fn start(path: PathBuf, pods: Vec<ZdsPod>) -> std::io::Result<ZdsServer> {
        let l = SeqPacketListener::bind(&path)?;
        l.set_accept_timeout(Duration::from_millis(200))?;
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (stop.clone(), events.clone());
        let thread = std::thread::Builder::new()
            .name("lab-zds".into())
            .spawn(move || serve(l, pods, s, e))?;
        Ok(ZdsServer {
            stop,
            thread: Some(thread),
            path,
            events,
        })
    }

    /// How many times a node proxy has taken the whole snapshot (one per connection).
    pub fn snapshots(&self) -> usize {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.starts_with("snapshot acked"))
            .count()
    }

    /// Whether a node proxy has taken the whole snapshot at least once.
    pub fn synced(&self) -> bool {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|e| e.starts_with("snapshot acked"))
    }
}

impl Drop for ZdsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn note(events: &Mutex<Vec<String>>, s: String) {
    tracing::debug!("lab zds: {s}");
    events.lock().unwrap_or_else(|e| e.into_inner()).push(s);
}

fn serve(
    l: SeqPacketListener,
    pods: Vec<ZdsPod>,
    stop: Arc<AtomicBool>,
    ev: Arc<Mutex<Vec<String>>>,
) {
    let pods = Arc::new(pods);
    let mut sessions = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let conn = match l.accept() {
            Ok(c) => c,
            Err(_) => continue, // timeout: check stop
        };
        // Every node proxy that connects gets the snapshot at once, also while an older one
        // is still connected (a rolling update), as istio-cni does.
        let (pods, stop2, ev2) = (pods.clone(), stop.clone(), ev.clone());
        let t = std::thread::Builder::new()
            .name("lab-zds-session".into())
            .spawn(move || match session(&conn, &pods, &stop2, &ev2) {
                Ok(()) => note(&ev2, "proxy disconnected".into()),
                Err(e) => note(&ev2, format!("session failed: {e}")),
            });
        match t {
            Ok(t) => sessions.push(t),
            Err(e) => note(&ev, format!("cannot start a session: {e}")),
        }
        sessions.retain(|t| !t.is_finished());
    }
    for t in sessions {
        let _ = t.join();
    }
}

/// Sends one request and waits for its ack.
pub fn request(conn: &SeqPacket, req: &WorkloadRequest, fd: Option<&File>) -> Result<(), String> {
    let fds: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
    conn.send(&zds::encode(req), &fds)
        .map_err(|e| e.to_string())?;
    let rec = conn
        .recv(zds::MAX_MESSAGE)
        .map_err(|e| format!("no ack: {e}"))?
        .ok_or("connection closed before the ack")?;
    let resp = WorkloadResponse::decode(&rec.data[..]).map_err(|e| format!("bad ack: {e}"))?;
    match resp.error() {
        None => Ok(()),
        Some(e) => Err(format!("NACK: {e}")),
    }
}

fn session(
    conn: &SeqPacket,
    pods: &[ZdsPod],
    stop: &AtomicBool,
    ev: &Mutex<Vec<String>>,
) -> Result<(), String> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let hello = conn
        .recv(zds::MAX_MESSAGE)
        .map_err(|e| format!("no hello: {e}"))?
        .ok_or("closed before hello")?;
    let h = ZdsHello::decode(&hello.data[..]).map_err(|e| format!("bad hello: {e}"))?;
    note(ev, format!("hello version {}", h.version));
    for p in pods {
        let f = File::open(&p.netns).map_err(|e| format!("{}: {e}", p.netns.display()))?;
        let req = WorkloadRequest {
            payload: Some(Payload::Add(AddWorkload {
                uid: p.uid.clone(),
                workload_info: Some(p.info.clone()),
            })),
        };
        match request(conn, &req, Some(&f)) {
            Ok(()) => note(ev, format!("add {} acked", p.info.name)),
            Err(e) => note(ev, format!("add {} refused: {e}", p.info.name)),
        }
    }
    let snap = WorkloadRequest {
        payload: Some(Payload::SnapshotSent(SnapshotSent {})),
    };
    request(conn, &snap, None)?;
    note(ev, format!("snapshot acked ({} pods)", pods.len()));
    // Stay connected until the proxy goes away or we stop.
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    while !stop.load(Ordering::Relaxed) {
        match conn.recv(zds::MAX_MESSAGE) {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => note(ev, "unexpected message from the proxy".into()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
