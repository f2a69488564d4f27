//! Logging setup: `tracing` to stderr, level from RUST_LOG (default `info`), access lines on
//! target `access` (ztunnel's scope name). Passive: nothing here touches the data path.

pub mod metrics;

/// Installs the global subscriber once; later calls are no-ops.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::config::flags::env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
