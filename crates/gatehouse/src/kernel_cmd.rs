//! The kernel data plane's commands: check, plan, apply, confirm, rollback,
//! down, and the confirm watchdog that apply starts.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use gatehouse_config::Farm;
use gatehouse_netfilter::apply::{self, WatchdogOutcome};
use gatehouse_netfilter::plan::{self, LiveMaps};
use gatehouse_netfilter::{Host, StateDir, diff, host, iptables, live};

use crate::{Failure, GlobalOpts};

#[derive(clap::Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }
}

#[derive(clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// nft: the ruleset for nftables (default); iptables: iptables-restore input.
    #[arg(long, value_enum, default_value_t = Format::Nft)]
    format: Format,
    /// Do not look at this host: no interface checks, no live table.
    #[arg(long)]
    offline: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Format {
    Nft,
    Iptables,
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Restore the previous ruleset after SECONDS unless `gatehouse confirm` runs first.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    confirm: Option<u64>,
}

#[derive(clap::Args)]
pub struct WatchdogArgs {
    #[arg(long)]
    token: String,
}

fn load(arg: &ConfigArg) -> Result<(PathBuf, Farm), Failure> {
    let path = gatehouse_config::resolve_path(arg.config.as_deref());
    let farm = Farm::load(&path)?;
    Ok((path, farm))
}

fn host(global: &GlobalOpts) -> Host {
    global.netns.as_deref().map_or_else(Host::local, Host::in_netns)
}

fn state_dir(global: &GlobalOpts) -> StateDir {
    match &global.state_dir {
        Some(dir) => StateDir::new(dir),
        None => StateDir::default_for(global.netns.as_deref()),
    }
}

pub fn check(arg: &ConfigArg) -> Result<ExitCode, Failure> {
    let (path, farm) = load(arg)?;
    println!("{}: valid", path.display());
    print!("{}", farm.summary());
    if farm.gateway.is_some() {
        println!(
            "(plan and apply also check this host: the interfaces exist and nat backends are on the LAN)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn plan(global: &GlobalOpts, args: &PlanArgs) -> Result<ExitCode, Failure> {
    let (path, farm) = load(&args.config)?;
    let host = host(global);
    let facts = if args.offline {
        None
    } else {
        let facts = host.facts()?;
        let problems = host::check(&farm, &facts, &host);
        if !problems.is_empty() {
            return Err(farm.diagnostics(problems).into());
        }
        Some(facts)
    };

    if args.format == Format::Iptables {
        let lan_networks = match (&farm.gateway, &facts) {
            (Some(g), Some(facts)) => facts.ipv4_networks(&g.lan),
            (Some(g), None) => g.lan_subnet.iter().map(|s| s.value).collect(),
            (None, _) => Vec::new(),
        };
        let ruleset = plan::ruleset(&farm, &LiveMaps::new());
        let export = iptables::render(&ruleset, &lan_networks, &path.display().to_string())?;
        for warning in &export.warnings {
            eprintln!("warning: {warning}");
        }
        print!("{}", export.text);
        return Ok(ExitCode::SUCCESS);
    }

    let live = if args.offline {
        None
    } else {
        match live::read(&host) {
            Ok(live) => live,
            Err(e) => {
                eprintln!("note: cannot read the live table ({e:#}); showing the whole ruleset");
                None
            }
        }
    };
    let (ruleset, definition) = apply::definition(&farm, live.as_ref());
    if definition.is_empty() {
        println!(
            "# {}: no [gateway] section, so apply installs nothing in the kernel",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    match live {
        Some(live) => {
            let changes = diff::diff(&live, &definition, &ruleset)?;
            if changes.is_empty() {
                println!(
                    "No changes: table inet gatehouse on {} is what apply would install.",
                    host.describe()
                );
            } else {
                println!(
                    "# apply would change table inet gatehouse on {} as follows:",
                    host.describe()
                );
                print!("{changes}");
            }
        }
        None => {
            println!(
                "# table inet gatehouse as apply would install it from {}",
                path.display()
            );
            print!("{definition}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn apply(global: &GlobalOpts, args: &ApplyArgs) -> Result<ExitCode, Failure> {
    let (path, farm) = load(&args.config)?;
    let host = host(global);
    let state = state_dir(global);
    let confirm = args.confirm.map(Duration::from_secs);
    let applied = match apply::apply(&farm, &host, &state, confirm) {
        Ok(applied) => applied,
        Err(apply::Error::Invalid(d)) => return Err(d.into()),
        Err(apply::Error::Failed(e)) => return Err(Failure::Failed(e)),
    };
    let what = if applied.changed {
        "installed"
    } else {
        "unchanged (already live)"
    };
    println!(
        "{}: table inet gatehouse {what} on {}",
        path.display(),
        host.describe()
    );
    let confirm_command = format!(
        "gatehouse{} confirm",
        global
            .netns
            .as_ref()
            .map(|ns| format!(" --netns {ns}"))
            .unwrap_or_default()
    );
    match (&applied.pending, applied.changed) {
        (Some(pending), true) => {
            spawn_watchdog(global, &state, &pending.token)?;
            println!(
                "the previous ruleset comes back in {} s unless you run `{confirm_command}`",
                pending.remaining().as_secs_f64().round()
            );
        }
        (Some(pending), false) => println!(
            "an earlier apply is still on probation: the ruleset before it comes back in {} s \
             unless you run `{confirm_command}`",
            pending.remaining().as_secs_f64().round()
        ),
        (None, false) if args.confirm.is_some() => {
            println!("nothing changed, so there is nothing to confirm")
        }
        (None, _) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Start the watchdog as its own process, in its own process group with no
/// terminal, so losing the SSH session (the thing it guards against) does not
/// take it down.
fn spawn_watchdog(global: &GlobalOpts, state: &StateDir, token: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this gatehouse binary")?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.path().join("watchdog.log"))
        .context("opening the watchdog log")?;
    let mut command = Command::new(exe);
    if let Some(ns) = &global.netns {
        command.args(["--netns", ns]);
    }
    command
        .arg("--state-dir")
        .arg(state.path())
        .args(["confirm-watchdog", "--token", token])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    command.spawn().context("starting the confirm watchdog")?;
    Ok(())
}

pub fn confirm(global: &GlobalOpts) -> Result<ExitCode, Failure> {
    if apply::confirm(&state_dir(global))? {
        println!("confirmed: the applied ruleset stays");
    } else {
        println!("nothing to confirm: no apply --confirm is waiting");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(global: &GlobalOpts) -> Result<ExitCode, Failure> {
    let host = host(global);
    apply::rollback(&host, &state_dir(global))?;
    println!(
        "restored table inet gatehouse on {} as it was before the last change (rollback again to undo)",
        host.describe()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn down(global: &GlobalOpts) -> Result<ExitCode, Failure> {
    let host = host(global);
    if apply::down(&host, &state_dir(global))? {
        println!(
            "removed table inet gatehouse from {} (`gatehouse rollback` puts it back)",
            host.describe()
        );
    } else {
        println!(
            "table inet gatehouse is not installed on {}; nothing to do",
            host.describe()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn watchdog(global: &GlobalOpts, args: &WatchdogArgs) -> Result<ExitCode, Failure> {
    let host = host(global);
    match apply::watchdog(&host, &state_dir(global), &args.token)? {
        WatchdogOutcome::Settled => {}
        WatchdogOutcome::RolledBack => {
            eprintln!(
                "gatehouse: not confirmed in time; restored the previous table on {}",
                host.describe()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
