//! `ringmesh`: parse the command line and hand over to `app`. No logic here.

use clap::Parser;

/// mimalloc: per-thread free lists suit shard threads; the system allocator mmaps and faults
/// in every large copy buffer (seen in `perf` as page faults on the bulk path).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ringmesh::config::flags::{CaCommand, Cli, Command};

fn main() -> std::process::ExitCode {
    ringmesh::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => ringmesh::app::run(*args).map_err(|e| e.to_string()),
        Command::Ca(CaCommand::Init { cert, key }) => {
            ringmesh::app::ca_init(&cert, &key).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
