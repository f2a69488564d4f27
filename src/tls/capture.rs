//! Captures a handshake's first application traffic secrets through rustls's `KeyLog`, for
//! the direct record layer's own key schedule (`tls::schedule`).
//!
//! Owns: a `KeyLog` that keeps `CLIENT_TRAFFIC_SECRET_0` and `SERVER_TRAFFIC_SECRET_0` and
//! nothing else, and only while armed. Handshakes on a shard interleave at their awaits, but
//! rustls derives and logs secrets synchronously inside the call that drives one connection,
//! so the secrets go to whichever connection armed the thread's slot around that call
//! (`during`). Outside such a call (rustls's buffered API, the CA client) nothing is kept.

use std::cell::RefCell;

use zeroize::Zeroizing;

/// The secrets one handshake logged so far.
#[derive(Default)]
pub struct Captured {
    pub client: Option<Zeroizing<Vec<u8>>>,
    pub server: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured")
            .field("client", &self.client.is_some())
            .field("server", &self.server.is_some())
            .finish()
    }
}

thread_local! {
    static SLOT: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// The `KeyLog` to set on every rustls config the direct record layer handshakes with.
#[derive(Debug, Default)]
pub struct Capture;

const CLIENT: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER: &str = "SERVER_TRAFFIC_SECRET_0";

impl rustls::KeyLog for Capture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        SLOT.with(|s| {
            if let Some(c) = s.borrow_mut().as_mut() {
                match label {
                    CLIENT => c.client = Some(Zeroizing::new(secret.to_vec())),
                    SERVER => c.server = Some(Zeroizing::new(secret.to_vec())),
                    _ => {}
                }
            }
        });
    }

    fn will_log(&self, label: &str) -> bool {
        (label == CLIENT || label == SERVER) && SLOT.with(|s| s.borrow().is_some())
    }
}

/// Runs `f` (one synchronous call into rustls for one connection) with `acc` receiving the
/// secrets it logs.
pub fn during<R>(acc: &mut Captured, f: impl FnOnce() -> R) -> R {
    let prev = SLOT.with(|s| s.borrow_mut().replace(std::mem::take(acc)));
    let r = f();
    *acc = SLOT
        .with(|s| std::mem::replace(&mut *s.borrow_mut(), prev))
        .unwrap_or_default();
    r
}
