//! Logging setup: `tracing` to stderr, level from RUST_LOG (default `info`), access lines on
//! target `access` (ztunnel's scope name), one JSON object per line with `LOG_FORMAT=json`
//! (as ztunnel's chart sets for `logAsJson`). Passive: nothing here touches the data path.

pub mod metrics;
pub mod registry;

/// Installs the global subscriber once; later calls are no-ops.
pub fn init() {
    use crate::config::flags::env;
    let filter = filter(std::env::var(env::LOG).ok().as_deref());
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

/// The log filter for a RUST_LOG value: spaces around its directives are allowed (as the
/// node's environment check allows them: `info, ringmesh=debug`); no value, or one that
/// does not parse (the node refuses it before starting), is `info`.
pub fn filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| {
            tracing_subscriber::EnvFilter::try_new(crate::config::env::log_directives(v)).ok()
        })
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"))
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
