//! `gatehouse`: the command line. Thin by design: every command parses its
//! arguments, calls into the crate that owns the concern, and maps the outcome to
//! an exit code (0 done, 1 the system refused or failed, 2 bad input).

mod demo_cmd;
mod kernel_cmd;
mod lab_cmd;
mod logs_cmd;
mod probe_cmd;
mod serve;
mod serve_cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The proxy allocates and frees a few small buffers per request; mimalloc's
/// per-thread free lists make that measurably cheaper than glibc's malloc
/// (about a tenth of the proxy's CPU per request in bench/proxy.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gateway, firewall and load balancer for a web farm, from one config file",
    after_help = "Config file: -c FILE, else $GATEHOUSE_CONFIG, else /etc/gatehouse/gatehouse.toml.\n\
                  Exit status: 0 done, 1 the system refused or failed, 2 bad input (the file or the arguments)."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

/// Options every command understands.
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalOpts {
    /// Operate inside this network namespace (as `ip netns exec NAME` would).
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    /// Where apply keeps the previous ruleset for rollback and confirm.
    /// Default: /var/lib/gatehouse, or /var/lib/gatehouse/netns/NAME with --netns.
    #[arg(long, global = true, env = "GATEHOUSE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file and summarise the farm it describes.
    Check(kernel_cmd::ConfigArg),
    /// Print the nftables ruleset apply would install, or what it would change.
    Plan(kernel_cmd::PlanArgs),
    /// Install the ruleset in one transaction (gatehouse's own table only).
    Apply(kernel_cmd::ApplyArgs),
    /// Keep a ruleset applied with --confirm (cancel the automatic rollback).
    Confirm,
    /// Restore the table as it was before the last apply.
    Rollback,
    /// Remove gatehouse's table (other tables are left alone).
    Down,
    /// Run the farm: health checks, kernel map updates, proxies, admin listener.
    Serve(serve::ServeArgs),
    /// Ask a running serve to re-read its config (errors are shown, the old config stays).
    Reload(serve_cmd::ReloadArgs),
    /// Show services and backends of a running serve: up/down, since when, load.
    Status(serve_cmd::StatusArgs),
    /// Search and follow the log server's logs: `web1 | <the line>`, oldest first.
    Logs(logs_cmd::LogsArgs),
    /// The whole farm on loopback, in one process, no root: web servers, proxy, logs, backups, status page.
    Demo(demo_cmd::DemoArgs),
    /// Build the seed's farm in network namespaces on this machine (root).
    Lab(lab_cmd::LabArgs),
    /// Send N requests and show which backend answered each, with latency percentiles.
    Probe(probe_cmd::ProbeArgs),
    /// Roll back unless confirmed in time (started by apply --confirm).
    #[command(hide = true)]
    ConfirmWatchdog(kernel_cmd::WatchdogArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check(args) => kernel_cmd::check(&args),
        Command::Plan(args) => kernel_cmd::plan(&cli.global, &args),
        Command::Apply(args) => kernel_cmd::apply(&cli.global, &args),
        Command::Confirm => kernel_cmd::confirm(&cli.global),
        Command::Rollback => kernel_cmd::rollback(&cli.global),
        Command::Down => kernel_cmd::down(&cli.global),
        Command::ConfirmWatchdog(args) => kernel_cmd::watchdog(&cli.global, &args),
        Command::Lab(args) => lab_cmd::run(&cli.global, args).map_err(Failure::Failed),
        // Probing from a namespace (the lab's client) is probing as that host.
        Command::Probe(args) => match &cli.global.netns {
            Some(ns) => serve::enter_netns(ns)
                .map_err(Failure::Failed)
                .and_then(|()| probe_cmd::run(&args)),
            None => probe_cmd::run(&args),
        },
        Command::Serve(args) => serve::run(&cli.global, &args),
        Command::Reload(args) => serve_cmd::reload(&args),
        Command::Status(args) => serve_cmd::status(&args),
        Command::Logs(args) => logs_cmd::run(&args),
        Command::Demo(args) => demo_cmd::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(Failure::BadInput(text)) => {
            eprintln!("{}", text.trim_end());
            ExitCode::from(2)
        }
        Err(Failure::Failed(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// How a command failed, which decides the exit status.
pub enum Failure {
    /// The user's input is wrong (exit 2); the text is ready to print.
    BadInput(String),
    /// The system refused or something broke (exit 1).
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Failed(e)
    }
}

impl From<gatehouse_config::LoadError> for Failure {
    fn from(e: gatehouse_config::LoadError) -> Failure {
        match e {
            gatehouse_config::LoadError::Invalid(d) => d.into(),
            unreadable => Failure::BadInput(format!("error: {unreadable}")),
        }
    }
}

impl From<gatehouse_config::Diagnostics> for Failure {
    fn from(d: gatehouse_config::Diagnostics) -> Failure {
        Failure::BadInput(d.render(std::io::stderr().is_terminal()))
    }
}
