//! Logging setup: `tracing` to stderr, level from RUST_LOG (default `info`), access lines on
//! target `access` (ztunnel's scope name), one JSON object per line with `LOG_FORMAT=json`
//! (as ztunnel's chart sets for `logAsJson`). Passive: nothing here touches the data path.

pub mod metrics;

/// Installs the global subscriber once; later calls are no-ops.
pub fn init() {
    use crate::config::flags::env;
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var(env::LOG_FORMAT).as_deref() == Ok("json") {
        let _ = b.json().flatten_event(true).try_init();
    } else {
        let _ = b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
}

/// A Unix time in seconds as RFC 3339 UTC (`2026-12-01T09:00:00Z`), as ztunnel's dumps write
/// times.
pub fn rfc3339(unix_secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Seconds since the Unix epoch of a `SystemTime` (0 before it).
pub fn unix_secs(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
