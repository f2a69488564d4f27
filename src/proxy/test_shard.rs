//! A stand-in node proxy for the proxy's unit tests: one real shard (either engine) with
//! its state, metrics and the access log it writes, and loopback socket pairs. Used by the
//! relay and link-tunnel tests.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::certs::store::CertSnapshot;
use crate::proxy::{ProxyConfig, ShardCtx};
use crate::runtime::{Engine, Shard, UringOpts, engine};
use crate::state::StateHandle;
use crate::telemetry::metrics::{ShardMetrics, TcpLabels};

pub(crate) const CFG: &str = r#"
workloads:
- {uid: srv, name: srv, namespace: default, serviceAccount: server, workloadIps: ["127.0.0.1"], protocol: HBONE, services: {}}
"#;

/// The same mesh without the server's workload: every connection to it is now denied.
pub(crate) const CFG_GONE: &str = "workloads: []\n";

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A stand-in for one node proxy: one shard, its state, metrics and log lines.
pub(crate) struct Proc {
    pub shard: Shard<ShardCtx>,
    pub state: StateHandle,
    pub metrics: Arc<ShardMetrics>,
    pub log: Log,
}

/// What the shard thread logged.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub(crate) fn process(engine: Engine) -> Proc {
    let snap = crate::config::snapshot_from_str("t.yaml", CFG, 1).unwrap();
    let state: StateHandle = Arc::new(ArcSwap::from_pointee(snap));
    let metrics = Arc::new(ShardMetrics::default());
    let (st, m) = (state.clone(), metrics.clone());
    let shard = crate::runtime::spawn_shards(1, false, engine, &UringOpts::default(), move |id| {
        ShardCtx::new(
            id,
            Arc::new(ProxyConfig::default()),
            st.clone(),
            Arc::new(ArcSwap::from_pointee(CertSnapshot::default())),
            m.clone(),
        )
    })
    .unwrap()
    .pop()
    .unwrap();
    let p = Proc {
        shard,
        state,
        metrics,
        log: Log::default(),
    };
    // The shard thread's own subscriber, so that its access lines can be read back.
    let w = p.log.clone();
    p.call(move |_| {
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        std::mem::forget(tracing::subscriber::set_default(sub));
    });
    p
}

impl Proc {
    /// Runs `f` on the shard and returns what it returned.
    pub(crate) fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Rc<ShardCtx>) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        self.shard
            .send(Box::new(move |ctx| {
                let _ = tx.send(f(ctx));
            }))
            .unwrap();
        rx.recv_timeout(WAIT).expect("the shard answers")
    }

    /// Runs the future `f` makes as a task on the shard; its output comes on the channel.
    pub(crate) fn spawn<T, F>(
        &self,
        f: impl FnOnce(Rc<ShardCtx>) -> F + Send + 'static,
    ) -> mpsc::Receiver<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.shard
            .send(Box::new(move |ctx| {
                let fut = f(ctx.clone());
                engine::spawn(async move {
                    let _ = tx.send(fut.await);
                });
            }))
            .unwrap();
        rx
    }

    /// (relays registered, connections registered for the policy re-check, live).
    pub(crate) fn books(&self) -> (usize, usize, u64) {
        let live = self.metrics.live.load(Ordering::Relaxed);
        let (r, c) = self.call(|ctx| (ctx.relays.len(), ctx.conns.len()));
        (r, c, live)
    }

    /// Waits until the books say `want` (an adopted relay registers once its task runs).
    pub(crate) fn wait_books(&self, want: (usize, usize, u64), what: &str) {
        let t0 = Instant::now();
        while self.books() != want {
            assert!(
                t0.elapsed() < WAIT,
                "{what}: {:?}, want {want:?}",
                self.books()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until nothing is live on the shard.
    pub(crate) fn wait_idle(&self) {
        self.wait_books((0, 0, 0), "still live");
    }
}

/// Two connected loopback sockets: ours (for the relay) and the far end's (blocking).
pub(crate) fn pair() -> (OwnedFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let far = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    far.set_read_timeout(Some(WAIT)).unwrap();
    (ours.into(), far)
}

/// Metric labels for a test connection (all unknown, plaintext).
pub(crate) fn labels() -> TcpLabels {
    TcpLabels::new(
        "destination",
        &Default::default(),
        &Default::default(),
        None,
        false,
        "-",
    )
}
