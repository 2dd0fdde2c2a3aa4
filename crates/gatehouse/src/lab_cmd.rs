//! `gatehouse lab`: builds the seed's farm in network namespaces on this machine,
//! applies the seed's config to it through the same code path as `gatehouse
//! apply`, and leaves it running for the user to poke at until `gatehouse lab down`.
//!
//! Persisted labs live under /run/gatehouse/lab-NAME (tmpfs: a reboot, which also
//! removes the namespaces, removes their records too).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use gatehouse_lab::web::{self, Page};
use gatehouse_lab::{GATEWAY_WAN_ADDR, Lab, LabSpec, WebKind, web_addr};

use crate::GlobalOpts;

/// Where `lab up` keeps each lab's run directory.
const LAB_ROOT: &str = "/run/gatehouse";
/// The farm `lab up` applies: the seed's, with the backends line rewritten for N.
const SEED_FARM: &str = include_str!("../../../examples/seed-farm.toml");

#[derive(clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(clap::Subcommand)]
enum LabCommand {
    /// Build the farm (client, gateway, switch, N web servers) and apply the seed's config.
    Up(UpArgs),
    /// Tear a lab down: its processes, namespaces and run directory.
    Down(NameArg),
    /// Show which of a lab's namespaces exist and which of its processes run
    /// (exit status 1 if anything is missing).
    Status(NameArg),
    /// Serve one web page (the lab's builtin web server).
    #[command(hide = true)]
    Web(WebArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// Number of web servers (10.0.0.11, 10.0.0.12, ...).
    #[arg(long, value_name = "N", default_value_t = 2)]
    backends: usize,
    /// Lab name: prefix of its namespaces (NAME-client, NAME-gw, ...).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Web server to run on each backend.
    #[arg(long, value_enum, default_value_t = WebChoice::Auto)]
    web: WebChoice,
    /// Build the farm but do not apply the config to the gateway.
    #[arg(long)]
    no_apply: bool,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum WebChoice {
    /// nginx if installed, else the builtin server
    Auto,
    Nginx,
    Builtin,
}

#[derive(clap::Args)]
struct NameArg {
    /// Which lab (default: the only one that is up).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("page").required(true).args(["number", "whoami"])))]
struct WebArgs {
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Serve the seed's page "My Website Number K".
    #[arg(long, value_name = "K")]
    number: Option<usize>,
    /// Answer with the address the request came from.
    #[arg(long)]
    whoami: bool,
}

pub fn run(global: &GlobalOpts, args: LabArgs) -> Result<ExitCode> {
    if let LabCommand::Web(web_args) = args.command {
        let page = match web_args.number {
            Some(k) => Page::Site(k),
            None => Page::WhoAmI,
        };
        web::serve(web_args.listen, page)?;
        return Ok(ExitCode::SUCCESS);
    }
    if global.netns.is_some() {
        bail!("--netns does not apply to `gatehouse lab`: the lab creates its own namespaces");
    }
    match args.command {
        LabCommand::Up(up_args) => up(up_args),
        LabCommand::Down(which) => down(which),
        LabCommand::Status(which) => status(which),
        LabCommand::Web(_) => unreachable!("handled above"),
    }
}

fn run_dir_of(name: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(format!("lab-{name}"))
}

/// Names of the labs whose run directory holds a lab record.
fn persisted_labs() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(LAB_ROOT) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {LAB_ROOT}")),
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("lab.json").is_file())
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("lab-")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn up(args: UpArgs) -> Result<ExitCode> {
    gatehouse_lab::ensure_root("gatehouse lab up")?;
    let existing = persisted_labs()?;
    let args_named = args.name.is_some();
    let name = match args.name {
        Some(name) => {
            if existing.contains(&name) {
                bail!("lab {name} is already up; remove it first with `gatehouse lab down --name {name}`");
            }
            name
        }
        None => {
            if let Some(other) = existing.first() {
                bail!(
                    "a lab is already up: {} (under {LAB_ROOT}); remove it with \
                     `gatehouse lab down --name {other}`, or pass --name to build another one",
                    existing.join(", ")
                );
            }
            format!("ghlab{}", std::process::id() % 100_000)
        }
    };
    gatehouse_lab::validate_name(&name)?;

    let exe = std::env::current_exe().context("finding this gatehouse binary")?;
    let run_dir = run_dir_of(&name);
    let spec = LabSpec {
        name: name.clone(),
        backends: args.backends,
        web: match args.web {
            WebChoice::Auto => WebKind::Auto,
            WebChoice::Nginx => WebKind::Nginx,
            WebChoice::Builtin => WebKind::Builtin,
        },
        builtin_web: vec![exe.clone().into_os_string(), "lab".into(), "web".into()],
        run_dir: run_dir.clone(),
    };
    spec.validate()?;
    eprintln!("building lab {name} with {} web server(s) ...", args.backends);
    let lab = Lab::up(spec)?;

    let config = run_dir.join("gatehouse.toml");
    // On error `lab` is dropped, which tears it down.
    std::fs::write(
        &config,
        farm_config(args.backends) + &log_server_config(args.backends, &run_dir),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let state_dir = run_dir.join("state");
    if !args.no_apply {
        eprintln!("applying {} to {} ...", config.display(), lab.gateway_ns());
        let status = Command::new(&exe)
            .arg("--netns")
            .arg(lab.gateway_ns())
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("apply")
            .arg("-c")
            .arg(&config)
            .status()
            .with_context(|| format!("running {} apply", exe.display()))?;
        if !status.success() {
            drop(lab);
            bail!("`gatehouse apply` failed ({status}) on lab {name}; the lab has been torn down");
        }
    }

    // A default-named lab is the only one up (others make `up` refuse), so plain
    // `lab down` finds it; a named one may have company.
    let down_hint = if args_named {
        format!("gatehouse lab down --name {name}")
    } else {
        "gatehouse lab down".to_owned()
    };
    let summary = summary(&lab, &config, &state_dir, !args.no_apply, &down_hint);
    lab.persist().context("recording the lab in its run directory")?;
    print!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// Part 2 of the seed: the gateway keeps every web server's access log (the
/// lab's nginx send theirs over syslog to the gateway's LAN address), each
/// line prefixed with its server's name, and their backups (restic over the
/// REST protocol). Serve runs both; `lab up` only applies the firewall,
/// which lets them in from the LAN.
fn log_server_config(backends: usize, run_dir: &Path) -> String {
    let hosts: Vec<String> = (1..=backends)
        .map(|k| format!("\"{}\" = \"web{k}\"", web_addr(k)))
        .collect();
    format!(
        "\n# Part 2 of the seed: every web server's access log in one place.\n\
         [log_server]\n\
         udp = \"{}:514\"\n\
         dir = \"{}\"\n\
         hosts = {{ {} }}\n\
         \n# ... and a copy of every web server: restic backs up to the gateway.\n\
         [backup_server]\n\
         listen = \"{}:8000\"\n\
         dir = \"{}\"\n\
         append_only = true\n",
        gatehouse_lab::GATEWAY_LAN_ADDR,
        run_dir.join("logs").display(),
        hosts.join(", "),
        gatehouse_lab::GATEWAY_LAN_ADDR,
        run_dir.join("backups").display(),
    )
}

/// The seed's farm with its `backends = [...]` line listing the lab's N servers.
fn farm_config(backends: usize) -> String {
    if backends == 2 {
        return SEED_FARM.to_owned();
    }
    let list: Vec<String> = (1..=backends)
        .map(|k| format!("\"{}:80\"", web_addr(k)))
        .collect();
    let line = if backends <= 4 {
        format!("backends = [{}]", list.join(", "))
    } else {
        format!("backends = [\n    {},\n]", list.join(",\n    "))
    };
    let mut out: Vec<String> = SEED_FARM
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("backends") {
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    out.push(String::new());
    out.join("\n")
}

fn summary(lab: &Lab, config: &Path, state_dir: &Path, applied: bool, down: &str) -> String {
    let name = lab.name();
    let n = lab.backends();
    let (webs, addrs) = if n == 1 {
        (lab.web_ns(1), web_addr(1).to_string())
    } else {
        let ns = format!("{}..web{n}", lab.web_ns(1));
        (ns, format!("{}..{}", web_addr(1), web_addr(n)))
    };
    let gw = lab.gateway_ns();
    let c = config.display();
    let width = webs.len().max(lab.client_ns().len());
    let mut s = format!(
        "lab {name} is up (run dir {}):\n\
         \x20 {:<width$}  eth0 198.51.100.2/24, routes 10.0.0.0/24 via the gateway (\"the internet\")\n\
         \x20 {gw:<width$}  eth0 198.51.100.1/24 (WAN), eth1 10.0.0.1/24 (LAN)\n\
         \x20 {:<width$}  bridge br0 (the switch)\n\
         \x20 {webs:<width$}  {addrs} port 80, {} (\"My Website Number K\")\n\
         farm config: {c} ({})\n\n\
         try:\n",
        lab.run_dir().display(),
        lab.client_ns(),
        lab.switch_ns(),
        lab.web_kind(),
        if applied {
            "applied"
        } else {
            "not applied: --no-apply"
        },
    );
    if !applied {
        s.push_str(&format!(
            "  gatehouse --netns {gw} --state-dir {} apply -c {c}\n",
            state_dir.display()
        ));
    }
    s.push_str(&format!(
        "  ip netns exec {client} curl -s http://{GATEWAY_WAN_ADDR}/     # twice: round-robin\n\
         \x20 ip netns exec {client} curl -s http://{GATEWAY_WAN_ADDR}/\n\
         \x20 gatehouse --netns {client} probe http://{GATEWAY_WAN_ADDR}/ -n 10     # the seed's wget loop\n\
         \x20 gatehouse --netns {gw} plan -c {c}\n\
         \x20 ip netns exec {gw} nft list table inet gatehouse\n\
         \x20 gatehouse --netns {gw} --state-dir {state} serve -c {c}     # health checks keep dead servers out\n\
         \x20 gatehouse logs -c {c} -f     # with serve running: each web server's access log, prefixed\n\
         \x20 ip netns exec {web1} restic -r rest:http://{lan}:8000/web1/www init     # with serve running; RESTIC_PASSWORD set\n\
         \x20 gatehouse lab status\n\
         \x20 {down}\n",
        client = lab.client_ns(),
        state = state_dir.display(),
        web1 = lab.web_ns(1),
        lan = gatehouse_lab::GATEWAY_LAN_ADDR,
    ));
    s
}

/// The run directory of the lab the user means: the named one, or the only one up.
/// `None` if no lab is up and none was named.
fn chosen_lab(name: Option<String>) -> Result<Option<(String, PathBuf)>> {
    let labs = persisted_labs()?;
    match name {
        Some(name) => {
            gatehouse_lab::validate_name(&name)?;
            if !labs.contains(&name) {
                let up = if labs.is_empty() {
                    "none".to_owned()
                } else {
                    labs.join(", ")
                };
                bail!("no lab named {name} under {LAB_ROOT} (labs up: {up})");
            }
            let dir = run_dir_of(&name);
            Ok(Some((name, dir)))
        }
        None => match labs.as_slice() {
            [] => Ok(None),
            [only] => Ok(Some((only.clone(), run_dir_of(only)))),
            several => bail!(
                "several labs are up ({}): choose one with --name",
                several.join(", ")
            ),
        },
    }
}

fn down(which: NameArg) -> Result<ExitCode> {
    gatehouse_lab::ensure_root("gatehouse lab down")?;
    let Some((name, run_dir)) = chosen_lab(which.name)? else {
        println!("no lab is up under {LAB_ROOT}; nothing to do");
        return Ok(ExitCode::SUCCESS);
    };
    Lab::down(&run_dir)?;
    // `gatehouse --netns NAME-gw apply` without --state-dir kept its rollback
    // state under /var/lib/gatehouse/netns/NAME-gw; the gateway is gone now.
    let gateway_state =
        gatehouse_netfilter::StateDir::default_for(Some(&gatehouse_lab::gateway_ns_of(&name)));
    if gateway_state.path().exists() {
        std::fs::remove_dir_all(gateway_state.path())
            .with_context(|| format!("removing {}", gateway_state.path().display()))?;
    }
    println!("lab {name} is down");
    Ok(ExitCode::SUCCESS)
}

fn status(which: NameArg) -> Result<ExitCode> {
    let labs: Vec<(String, PathBuf)> = match which.name {
        Some(name) => chosen_lab(Some(name))?.into_iter().collect(),
        // Without a name, show every lab rather than refuse.
        None => persisted_labs()?
            .into_iter()
            .map(|n| (n.clone(), run_dir_of(&n)))
            .collect(),
    };
    if labs.is_empty() {
        println!("no lab is up under {LAB_ROOT}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut healthy = true;
    for (_, run_dir) in labs {
        let status = Lab::status(&run_dir)?;
        healthy &= status.is_healthy();
        print!("{status}");
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_farm_is_used_as_is_for_two_backends() {
        assert_eq!(farm_config(2), SEED_FARM);
    }

    #[test]
    fn the_backends_line_lists_every_lab_server() {
        let three = farm_config(3);
        assert!(
            three.contains(r#"backends = ["10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:80"]"#),
            "{three}"
        );
        assert_eq!(three.matches("backends").count(), 1);
        let many = farm_config(64);
        assert!(many.contains("\"10.0.0.74:80\",\n]"), "{many}");
        assert!(!many.contains("10.0.0.75"));
        // Everything else is the seed's text, line for line.
        let others = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.contains("10.0.0.") && !l.trim().starts_with(']'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(others(&three), others(SEED_FARM));
    }

    #[test]
    fn the_log_server_names_every_lab_server() {
        let text = log_server_config(3, Path::new("/run/gatehouse/lab-x"));
        assert!(text.contains("udp = \"10.0.0.1:514\"\n"), "{text}");
        assert!(text.contains("dir = \"/run/gatehouse/lab-x/logs\"\n"), "{text}");
        assert!(
            text.contains(r#"hosts = { "10.0.0.11" = "web1", "10.0.0.12" = "web2", "10.0.0.13" = "web3" }"#),
            "{text}"
        );
        let farm = gatehouse_config::Farm::parse("lab.toml", &(farm_config(3) + &text)).expect("valid");
        assert_eq!(farm.log_server.expect("log_server").hosts.len(), 3);
        let backup = farm.backup_server.expect("backup_server");
        assert_eq!(backup.listen.to_string(), "10.0.0.1:8000");
        assert!(backup.append_only);
    }

    #[test]
    fn web_needs_a_page() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: LabCommand,
        }
        assert!(Cli::try_parse_from(["x", "web", "--listen", "10.0.0.11:80"]).is_err());
        assert!(
            Cli::try_parse_from([
                "x",
                "web",
                "--listen",
                "10.0.0.11:80",
                "--number",
                "1",
                "--whoami"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["x", "web", "--listen", "10.0.0.11:80", "--whoami"]).is_ok());
    }
}
