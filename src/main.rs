//! `ringmesh`: parse the command line and hand over to `app`, `demo` or `lab`. No logic here.

use clap::Parser;

#[cfg(feature = "lab")]
use ringmesh::config::flags::LabCommand;
use ringmesh::config::flags::{CaCommand, Cli, Command};

/// mimalloc: per-thread free lists suit shard threads; the system allocator mmaps and faults
/// in every large copy buffer (seen in `perf` as page faults on the bulk path).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "lab")]
fn bench(b: ringmesh::config::flags::BenchFlags) -> Result<i32, String> {
    use ringmesh::benchmark::{self, BenchArgs, Contender, Sizes};
    if b.l7 {
        let mut phases = if b.quick {
            benchmark::l7::Phases::quick()
        } else {
            benchmark::l7::Phases::full()
        };
        if let Some(r) = b.rounds {
            phases.rounds = r.max(1);
        }
        let args = benchmark::l7::L7Args {
            phases,
            quick: b.quick,
            json: b.json,
            out_dir: b.out,
            state_dir: b.state_dir,
            ringmesh_args: b.ringmesh_args,
            waypoint_args: b.waypoint_args,
            waypoint_log: b.waypoint_log,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        };
        return benchmark::l7::run(&args).map(|_| 0);
    }
    let mut contenders = Vec::new();
    if !b.no_raw {
        contenders.push(Contender::Raw);
    }
    if b.relay {
        contenders.push(Contender::Relay { tls: false });
        contenders.push(Contender::Relay { tls: true });
    }
    if !b.no_ringmesh {
        contenders.extend(benchmark::ringmesh_contenders(&b.engines, &b.modes)?);
    }
    for p in &b.peers {
        contenders.push(benchmark::parse_peer(p)?);
    }
    let mut sizes = if b.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(r) = b.rounds {
        sizes.rounds = r.max(1);
    }
    let args = BenchArgs {
        contenders,
        sizes,
        quick: b.quick,
        json: b.json,
        out_dir: b.out,
        state_dir: b.state_dir,
        ringmesh_args: b.ringmesh_args,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        tuning: b.tuning,
    };
    benchmark::run(&args).map(|_| 0)
}

fn main() -> std::process::ExitCode {
    ringmesh::telemetry::init();
    // mimalloc's purge options, before the shards start (runtime/alloc.rs says why).
    ringmesh::runtime::alloc::configure();
    // The node's variables are checked before the flags parse them, so a bad value is
    // refused with the variable's name.
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("node") | Some("proxy") | Some("waypoint")
    ) {
        let errs = ringmesh::config::env::check(&ringmesh::config::env::vars());
        if !errs.is_empty() {
            eprintln!("ringmesh: invalid environment:\n  {}", errs.join("\n  "));
            return std::process::ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    let result: Result<i32, String> = match cli.command {
        Command::Node(args) => ringmesh::app::run(*args, false)
            .map(|_| 0)
            .map_err(|e| e.to_string()),
        Command::Proxy(p) => match Cli::try_parse_from(["ringmesh", "node"]) {
            // `proxy ztunnel` takes no flags: every setting comes from the environment.
            Ok(Cli {
                command: Command::Node(mut args),
            }) => {
                args.dry_run = p.dry_run;
                ringmesh::app::run(*args, true)
            }
            .map(|_| 0)
            .map_err(|e| e.to_string()),
            Ok(_) => Err("internal: `node` did not parse as the node command".into()),
            Err(e) => Err(e.to_string()),
        },
        Command::Waypoint(a) => ringmesh::app::waypoint::run(*a)
            .map(|_| 0)
            .map_err(|e| e.to_string()),
        Command::Ca(CaCommand::Init { cert, key }) => ringmesh::app::ca_init(&cert, &key)
            .map(|_| 0)
            .map_err(|e| e.to_string()),
        #[cfg(feature = "lab")]
        Command::Demo(d) => ringmesh::demo::run(&ringmesh::demo::DemoArgs {
            keep: d.keep,
            bulk_bytes: d.bulk_bytes,
            pings: d.pings,
            json: d.json,
            local_config: d.local_config,
            state_dir: d.state_dir,
        })
        .map(|r| if r.ok { 0 } else { 2 }),
        #[cfg(feature = "lab")]
        Command::Bench(b) => bench(b),
        #[cfg(feature = "lab")]
        Command::Lab(l) => {
            use ringmesh::lab::cli;
            let r = match l {
                LabCommand::Up {
                    file,
                    no_proxies,
                    local_config,
                    state_dir,
                } => cli::up(&file, no_proxies, local_config, &state_dir).map(|_| 0),
                LabCommand::Down { lab, state_dir } => cli::down(&lab, &state_dir).map(|_| 0),
                LabCommand::Exec {
                    target,
                    lab,
                    state_dir,
                    cmd,
                } => cli::exec(&target, lab.as_deref(), &state_dir, &cmd),
                LabCommand::Status { state_dir } => cli::status(&state_dir).map(|_| 0),
                LabCommand::Relay {
                    threads,
                    tls,
                    ca_cert,
                    ca_key,
                } => {
                    let n = threads.unwrap_or_else(|| ringmesh::runtime::allowed_cpus().len());
                    let ca = match (tls, &ca_cert, &ca_key) {
                        (true, Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                        _ => None,
                    };
                    return match ringmesh::lab::relay::serve(n, ca) {
                        Ok(()) => std::process::ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("ringmesh lab relay: {e}");
                            std::process::ExitCode::FAILURE
                        }
                    };
                }
                LabCommand::Serve {
                    file,
                    no_proxies,
                    local_config,
                    state_dir,
                } => cli::serve(&file, no_proxies, local_config, &state_dir).map(|_| 0),
            };
            r.map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("ringmesh: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
