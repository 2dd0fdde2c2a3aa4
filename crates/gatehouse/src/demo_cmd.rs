//! `gatehouse demo`: the whole farm on loopback in one process, without root
//! and without a file to write: two built-in web servers, the proxy balancing
//! them with health checks, the log server receiving everyone's access logs,
//! the backup server with a generated user, and the admin listener with the
//! status page. It runs the embedded `demo.toml` through the same supervisor
//! as `serve`, so what a newcomer sees is what production runs.
//!
//! The web servers answer the seed's pages ("My Website Number 1" and "2")
//! and log each request over syslog from their own loopback address
//! (127.0.0.11, 127.0.0.12), so the log server names them web1 and web2 as
//! it would name real web servers. Typing `stop 2` stops web2 (listener and
//! open connections), to watch the health checks take it out.

use std::io::{BufRead, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use gatehouse_config::Farm;
use gatehouse_lab::web::{self, Answered, Page};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Failure;

/// The farm the demo runs; `{name}` marks are filled with the chosen addresses.
const TEMPLATE: &str = include_str!("demo.toml");

/// The one backup user the demo makes.
const USER: &str = "demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Print the config the demo runs (with the ports chosen) and exit.
    #[arg(long)]
    print_config: bool,
    /// Keep the config, logs and backups in this directory (kept at exit);
    /// default: a new temporary directory, removed at exit.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The proxy's port (the farm's front door).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    proxy_port: u16,
    /// The admin listener's port: the status page, metrics, the logs API.
    #[arg(long, value_name = "PORT", default_value_t = 9900)]
    admin_port: u16,
    /// The backup server's port (restic's REST protocol).
    #[arg(long, value_name = "PORT", default_value_t = 8000)]
    backup_port: u16,
    /// The log server's port, UDP and TCP (syslog).
    #[arg(long, value_name = "PORT", default_value_t = 5514)]
    log_port: u16,
    /// The two built-in web servers' ports.
    #[arg(long, value_name = "PORT,PORT", value_delimiter = ',', num_args = 1, default_values_t = [8081, 8082])]
    web_ports: Vec<u16>,
}

/// Every address the demo listens on, all on 127.0.0.1.
struct Ports {
    proxy: u16,
    admin: u16,
    backup: u16,
    log: u16,
    web: [u16; 2],
}

impl Ports {
    fn from_args(args: &DemoArgs) -> Result<Ports, Failure> {
        let [web1, web2] = args.web_ports[..] else {
            return Err(Failure::BadInput(format!(
                "error: --web-ports takes two ports, one per web server (got {})\n  \
                 help: for example --web-ports 8081,8082",
                args.web_ports.len()
            )));
        };
        let ports = Ports {
            proxy: args.proxy_port,
            admin: args.admin_port,
            backup: args.backup_port,
            log: args.log_port,
            web: [web1, web2],
        };
        let named = ports.named();
        for (i, (port, flag, _)) in named.iter().enumerate() {
            if *port == 0 {
                return Err(Failure::BadInput(format!(
                    "error: {flag} 0: the demo prints its addresses, so give a port number"
                )));
            }
            if let Some((_, other, _)) = named[..i].iter().find(|(p, _, _)| p == port) {
                return Err(Failure::BadInput(format!(
                    "error: {flag} and {other} are both {port}\n  help: give each listener its own port"
                )));
            }
        }
        Ok(ports)
    }

    /// (port, the flag that sets it, what listens there).
    fn named(&self) -> [(u16, &'static str, &'static str); 6] {
        [
            (self.proxy, "--proxy-port", "the proxy"),
            (self.admin, "--admin-port", "the admin listener"),
            (self.backup, "--backup-port", "the backup server"),
            (self.log, "--log-port", "the log server"),
            (self.web[0], "--web-ports", "web server 1"),
            (self.web[1], "--web-ports", "web server 2"),
        ]
    }

    fn config(&self) -> String {
        let at = |port: u16| format!("127.0.0.1:{port}");
        TEMPLATE
            .replace("{proxy}", &at(self.proxy))
            .replace("{admin}", &at(self.admin))
            .replace("{backup}", &at(self.backup))
            .replace("{log}", &at(self.log))
            .replace("{web1}", &at(self.web[0]))
            .replace("{web2}", &at(self.web[1]))
    }

    /// Every port free now, or which one is not and the flag to move it.
    /// (The servers bind again a moment later; this is for the message.)
    fn check_free(&self) -> anyhow::Result<()> {
        for (port, flag, what) in self.named() {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let taken = TcpListener::bind(addr).err().or_else(|| {
                (flag == "--log-port")
                    .then(|| UdpSocket::bind(addr).err())
                    .flatten()
            });
            if let Some(e) = taken {
                let example = if flag == "--web-ports" {
                    format!("--web-ports {},{}", self.web[0] + 10000, self.web[1] + 10000)
                } else {
                    format!("{flag} {}", port.checked_add(10000).unwrap_or(port - 10000))
                };
                anyhow::bail!(
                    "{addr} ({what}) is not free: {e}\n  help: choose another port with {flag}, e.g. \
                     `gatehouse demo {example}`"
                );
            }
        }
        Ok(())
    }
}

pub fn run(args: &DemoArgs) -> Result<ExitCode, Failure> {
    let ports = Ports::from_args(args)?;
    let config = ports.config();
    if args.print_config {
        print!("{config}");
        return Ok(ExitCode::SUCCESS);
    }
    ports.check_free()?;
    let place = Place::new(args.dir.as_deref())?;
    let path = place.dir.join("gatehouse.toml");
    std::fs::write(&path, &config).with_context(|| format!("writing {}", path.display()))?;
    let password = make_user(&place.dir.join("htpasswd"))?;
    // The embedded file is checked by a unit test; this is for a broken build.
    let farm = Farm::load(&path)?;
    crate::serve::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gatehouse")
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async {
        let webs = WebServers::start(&ports).await?;
        let controls = webs.controls();
        crate::serve::run_farm(path.clone(), farm, || {
            print!("{}", welcome(&ports, &place, &path, password.as_deref()));
            spawn_stdin_reader(controls);
        })
        .await
    });
    drop(runtime);
    if place.temporary {
        let _ = std::fs::remove_dir_all(&place.dir);
    }
    outcome.map(|()| ExitCode::SUCCESS)
}

/// Where the demo keeps its files, and whether they go at exit.
struct Place {
    dir: PathBuf,
    temporary: bool,
}

impl Place {
    fn new(dir: Option<&Path>) -> anyhow::Result<Place> {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir = dir
                .canonicalize()
                .with_context(|| format!("reading {}", dir.display()))?;
            return Ok(Place {
                dir,
                temporary: false,
            });
        }
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let dir = base.join(format!("gatehouse-demo-{}-{attempt}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Place { dir, temporary: true }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        anyhow::bail!(
            "cannot make a directory under {}; give one with --dir",
            base.display()
        )
    }
}

/// An htpasswd file with the demo user and a new random password, which is
/// returned to be printed once (only its bcrypt hash is kept). A file that
/// is already there (a `--dir` used before) is kept as it is: None.
fn make_user(htpasswd: &Path) -> anyhow::Result<Option<String>> {
    if htpasswd.exists() {
        return Ok(None);
    }
    let mut random = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("reading /dev/urandom for the backup password")?;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let password: String = random
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    // Cost 10: a demo's first request should not wait a second for bcrypt.
    let hash = bcrypt::hash(&password, 10).context("hashing the backup password")?;
    std::fs::write(htpasswd, format!("{USER}:{hash}\n"))
        .with_context(|| format!("writing {}", htpasswd.display()))?;
    Ok(Some(password))
}

/// How the demo's commands are typed here: `gatehouse` when that is this
/// binary on PATH, else the path it was started by (`target/release/gatehouse`).
fn command_name() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "gatehouse".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            dir.join("gatehouse")
                .canonicalize()
                .is_ok_and(|found| exe.canonicalize().is_ok_and(|exe| exe == found))
        })
    });
    if on_path {
        return "gatehouse".into();
    }
    let here = std::env::current_dir().ok();
    match here.as_deref().and_then(|here| exe.strip_prefix(here).ok()) {
        Some(relative) => relative.display().to_string(),
        None => exe.display().to_string(),
    }
}

fn welcome(ports: &Ports, place: &Place, config: &Path, password: Option<&str>) -> String {
    let gh = command_name();
    let [web1, web2] = ports.web;
    let kept = if place.temporary {
        "removed when the demo stops"
    } else {
        "kept when the demo stops"
    };
    let (credentials, restic_password) = match password {
        Some(p) => (
            format!("user {USER}, password {p} (shown only now)"),
            p.to_string(),
        ),
        None => (
            format!(
                "user {USER}, with the password printed when {} was made",
                place.dir.join("htpasswd").display()
            ),
            "PASSWORD".to_string(),
        ),
    };
    format!(
        "\n\
         gatehouse demo: the seed's web farm on loopback (files in {dir}, {kept})\n\
         \n\
         \x20 web1, web2   http://127.0.0.1:{web1}/ and http://127.0.0.1:{web2}/ (\"My Website Number 1\" and \"2\")\n\
         \x20 proxy        http://127.0.0.1:{proxy}/  round-robin over web1 and web2, checked every second\n\
         \x20 log server   127.0.0.1:{log} (syslog over UDP and TCP): the proxy's and the web servers' access logs\n\
         \x20 backups      http://127.0.0.1:{backup}/  restic's REST protocol; {credentials}\n\
         \x20 status page  http://127.0.0.1:{admin}/\n\
         \n\
         Try:\n\
         \x20 curl -s http://127.0.0.1:{proxy}/ | grep title      (twice: Number 1, then Number 2)\n\
         \x20 {gh} probe http://127.0.0.1:{proxy}/ -n 10\n\
         \x20 {gh} logs -c {config} -f\n\
         \x20 logger -n 127.0.0.1 -P {log} -d 'hello from my web server'\n\
         \x20 RESTIC_PASSWORD=choose-a-key restic -r rest:http://{USER}:{restic_password}@127.0.0.1:{backup}/{USER}/site init\n\
         \x20 type `stop 2` and Enter here: web2 stops and the status page turns it red; `start 2` brings it back\n\
         \x20 {gh} demo --print-config > gatehouse.toml      (this farm as a file, to grow into your own)\n\
         \n\
         Ctrl-C stops everything.\n\n",
        dir = place.dir.display(),
        config = config.display(),
        proxy = ports.proxy,
        log = ports.log,
        backup = ports.backup,
        admin = ports.admin,
    )
}

/// What the stdin reader asks of the web servers.
enum Control {
    Stop(usize),
    Start(usize),
}

/// The two built-in web servers, each a task that can be stopped (its
/// listener and its connections end) and started again on the same port.
struct WebServers {
    control: mpsc::Sender<Control>,
}

impl WebServers {
    async fn start(ports: &Ports) -> anyhow::Result<WebServers> {
        let mut tasks: [Option<JoinHandle<()>>; 2] = [None, None];
        for (i, task) in tasks.iter_mut().enumerate() {
            *task = Some(spawn_web(i + 1, ports.web[i], ports.log).await?);
        }
        let (control, mut requests) = mpsc::channel(8);
        let (web, log) = (ports.web, ports.log);
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                match request {
                    Control::Stop(k) => match tasks[k - 1].take() {
                        Some(task) => {
                            task.abort();
                            println!("web{k} stopped (its port is closed); `start {k}` starts it again");
                        }
                        None => println!("web{k} is already stopped"),
                    },
                    Control::Start(k) if tasks[k - 1].is_some() => println!("web{k} is already running"),
                    Control::Start(k) => match spawn_web(k, web[k - 1], log).await {
                        Ok(task) => {
                            tasks[k - 1] = Some(task);
                            println!("web{k} started on 127.0.0.1:{}", web[k - 1]);
                        }
                        Err(e) => println!("web{k}: {e:#}"),
                    },
                }
            }
        });
        Ok(WebServers { control })
    }

    fn controls(&self) -> mpsc::Sender<Control> {
        self.control.clone()
    }
}

/// Web server `k` on `port`, logging each request to the log server from
/// 127.0.0.1{k} (a source address of its own, as a real web server has).
async fn spawn_web(k: usize, port: u16, log_port: u16) -> anyhow::Result<JoinHandle<()>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("web server {k}: cannot listen on {addr}"))?;
    let log = SyslogSender::new(k, log_port);
    let on_answer: web::OnAnswer = Arc::new(move |answered| log.send(answered));
    Ok(tokio::spawn(web::serve_on(
        listener,
        Page::Site(k),
        Some(on_answer),
    )))
}

/// A web server's access log as nginx sends it (`access_log syslog:...`):
/// one datagram per request, the combined format after a syslog header.
struct SyslogSender {
    name: String,
    socket: Option<UdpSocket>,
    to: SocketAddr,
}

impl SyslogSender {
    fn new(k: usize, log_port: u16) -> SyslogSender {
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, log_port));
        // 127.0.0.11 for web1: all of 127/8 is loopback on Linux. Where
        // that bind fails the lines still arrive, from 127.0.0.1.
        let own = Ipv4Addr::new(127, 0, 0, 10 + k as u8);
        let socket = UdpSocket::bind(SocketAddrV4::new(own, 0))
            .or_else(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
            .ok();
        SyslogSender {
            name: format!("web{k}"),
            socket,
            to,
        }
    }

    fn send(&self, a: &Answered<'_>) {
        // The proxy's health checks, once a second each, would bury the
        // visitors' lines: left out, as nginx users do with a `map` on
        // $http_user_agent and `access_log ... if=$loggable`.
        if a.user_agent == Some(gatehouse_health::CHECK_USER_AGENT) {
            return;
        }
        let Some(socket) = &self.socket else { return };
        let now = SystemTime::now();
        // <190>: facility local7, severity info, as nginx's default.
        let line = format!(
            "<190>1 {time} {name} nginx - - - {ip} - - [{clf}] \"{method} {target} {version:?}\" {status} {bytes} \"{referer}\" \"{agent}\"",
            time = humantime::format_rfc3339_seconds(now),
            name = self.name,
            ip = a.peer.ip(),
            clf = gatehouse_proxy::apache_time(now),
            method = a.method,
            target = a.target.escape_debug(),
            version = a.version,
            status = a.status,
            bytes = a.bytes,
            referer = a.referer.unwrap_or("-").escape_debug(),
            agent = a.user_agent.unwrap_or("-").escape_debug(),
        );
        // A log server that is not listening loses a line, as with nginx.
        let _ = socket.send_to(line.as_bytes(), self.to);
    }
}

/// Lines typed into the demo: `stop N`, `start N`, `help`. A thread of its
/// own, as reading a terminal blocks; it ends with stdin (EOF).
fn spawn_stdin_reader(controls: mpsc::Sender<Control>) {
    let spawned = std::thread::Builder::new()
        .name("gh-demo-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { return };
                match parse_control(&line) {
                    Ok(Some(control)) => {
                        if controls.blocking_send(control).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(help) => println!("{help}"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("demo: cannot read commands from stdin: {e}");
    }
}

fn parse_control(line: &str) -> Result<Option<Control>, String> {
    const HELP: &str =
        "commands: `stop 1`, `stop 2` (a web server goes down), `start 1`, `start 2`; Ctrl-C ends the demo";
    let words: Vec<&str> = line.split_whitespace().collect();
    let server = |word: &str| match word.trim_start_matches("web") {
        "1" => Ok(1),
        "2" => Ok(2),
        _ => Err(format!("no web server \"{word}\": there are 1 and 2")),
    };
    match words[..] {
        [] => Ok(None),
        ["stop", which] => server(which).map(|k| Some(Control::Stop(k))),
        ["start", which] => server(which).map(|k| Some(Control::Start(k))),
        _ => Err(HELP.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_lab::loopback::TempDir;

    fn ports() -> Ports {
        Ports {
            proxy: 8080,
            admin: 9900,
            backup: 8000,
            log: 5514,
            web: [8081, 8082],
        }
    }

    #[test]
    fn the_embedded_config_is_valid_and_filled_in() {
        let text = ports().config();
        for mark in ["{proxy}", "{admin}", "{backup}", "{log}", "{web1}", "{web2}"] {
            assert!(!text.contains(mark), "{mark} left unfilled:\n{text}");
        }
        // As the demo runs it: the file and its htpasswd side by side.
        let dir = TempDir::new("demo-config");
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        make_user(&dir.path().join("htpasswd")).unwrap_or_else(|e| panic!("{e}"));
        let farm = match Farm::load(&path) {
            Ok(farm) => farm,
            Err(gatehouse_config::LoadError::Invalid(d)) => panic!("{}", d.render(false)),
            Err(e) => panic!("{e}"),
        };
        let web = &farm.services[0];
        assert_eq!(web.listen.value.to_string(), "127.0.0.1:8080");
        assert_eq!(web.backends.len(), 2);
        assert!(farm.log_server.is_some() && farm.backup_server.is_some() && farm.admin.is_some());
        assert!(farm.gateway.is_none(), "the demo needs no root: no [gateway]");
        assert_eq!(
            farm.log_server.map(|l| l.dir.value),
            Some(dir.path().join("logs"))
        );
        assert!(text.contains("gatehouse lab web --listen 127.0.0.1:8082 --number 2"));
    }

    #[test]
    fn ports_must_differ_and_web_ports_come_in_two() {
        let args = |extra: &[&str]| {
            use clap::Parser;
            #[derive(clap::Parser)]
            struct Cli {
                #[command(flatten)]
                demo: DemoArgs,
            }
            let mut argv = vec!["demo"];
            argv.extend_from_slice(extra);
            Cli::parse_from(argv).demo
        };
        let message = |extra: &[&str]| match Ports::from_args(&args(extra)) {
            Err(Failure::BadInput(text)) => text,
            Err(Failure::Failed(e)) => panic!("not bad input: {e}"),
            Ok(_) => panic!("accepted {extra:?}"),
        };
        assert!(Ports::from_args(&args(&[])).is_ok());
        assert_eq!(
            message(&["--admin-port", "8080"]),
            "error: --admin-port and --proxy-port are both 8080\n  help: give each listener its own port"
        );
        assert!(message(&["--web-ports", "9001"]).starts_with("error: --web-ports takes two ports"));
        assert!(message(&["--log-port", "0"]).contains("give a port number"));
    }

    #[test]
    fn a_port_in_use_names_the_flag_that_moves_it() {
        // Free ports for everyone, held open until the check, but one.
        let hold = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("{e}"));
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
        let held: Vec<TcpListener> = (0..6).map(|_| hold()).collect();
        let p = Ports {
            proxy: port(&held[0]),
            admin: port(&held[1]),
            backup: port(&held[2]),
            log: port(&held[3]),
            web: [port(&held[4]), port(&held[5])],
        };
        let mut held = held.into_iter();
        let taken = held.nth(2);
        drop(held);
        let e = p.check_free().err().map(|e| e.to_string()).unwrap_or_default();
        drop(taken);
        assert!(
            e.starts_with(&format!("127.0.0.1:{} (the backup server) is not free", p.backup)),
            "{e}"
        );
        assert!(e.contains("choose another port with --backup-port"), "{e}");
    }

    #[test]
    fn commands_typed_into_the_demo() {
        assert!(matches!(parse_control("stop 2"), Ok(Some(Control::Stop(2)))));
        assert!(matches!(
            parse_control("  start web1 "),
            Ok(Some(Control::Start(1)))
        ));
        assert!(matches!(parse_control(""), Ok(None)));
        assert_eq!(
            parse_control("stop 3").err().as_deref(),
            Some("no web server \"3\": there are 1 and 2")
        );
        assert!(
            parse_control("help")
                .err()
                .is_some_and(|h| h.starts_with("commands:"))
        );
    }

    #[test]
    fn the_generated_user_is_a_bcrypt_line_made_once() {
        let dir = TempDir::new("demo-user");
        let file = dir.path().join("htpasswd");
        let password = make_user(&file)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default();
        assert_eq!(password.len(), 18);
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let hash = text.trim_end().strip_prefix("demo:").unwrap_or_default();
        assert!(bcrypt::verify(&password, hash).unwrap_or(false), "{text}");
        assert_eq!(make_user(&file).ok().flatten(), None, "kept, not made again");
    }
}
