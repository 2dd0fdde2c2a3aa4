//! The seed's Figure 1 built on one machine out of real parts: network namespaces,
//! veth pairs, a Linux bridge and one real web server per backend.
//!
//! ```text
//!   P-client ──veth── P-gw ──veth── P-lan (br0) ──veth── P-web1 .. P-webN
//!   198.51.100.2      .1 | 10.0.0.1                      10.0.0.11 .. 10.0.0.(10+N)
//! ```
//!
//! It is both a user feature (`gatehouse lab up|down|status`) and the harness every
//! end-to-end test builds on. The lab only wires the farm: it leaves the gateway
//! with forwarding off and no firewall, because installing those is `gatehouse
//! apply`'s job and the tests must be able to prove it.
//!
//! Nothing is ever created in, or attached to, the host's own network namespace:
//! every veth pair is created directly between two lab namespaces. A [`Lab`] tears
//! itself down when dropped (processes by pid, then the namespaces, then its run
//! directory), including when `up` fails midway or a test panics.

pub mod loopback;
mod persist;
mod teardown;
mod topology;
pub mod web;
mod webservers;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use persist::{LabStatus, NamespaceStatus, ProcessStatus};

/// The documentation network that plays "the internet".
pub const WAN_SUBNET: &str = "198.51.100.0/24";
/// The client's address on the WAN side.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The gateway's WAN address (its `eth0`).
pub const GATEWAY_WAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The gateway's LAN address (its `eth1`), the web servers' default route.
pub const GATEWAY_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The farm's private network behind the gateway.
pub const LAN_SUBNET: &str = "10.0.0.0/24";
/// The largest farm a lab builds: web addresses run 10.0.0.11 ..= 10.0.0.250.
pub const MAX_BACKENDS: usize = 240;
/// Longest lab name: namespace names are `NAME-client`, `NAME-web240`, ... and stay
/// readable in `ip netns list`.
pub const MAX_NAME_LEN: usize = 32;

/// Address of web server `k` (1-based): 10.0.0.(10+k).
///
/// Panics if `k` is outside `1..=MAX_BACKENDS`; that is a programming error, a
/// [`LabSpec`] with such a count is refused by [`Lab::up`].
pub fn web_addr(k: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_BACKENDS).contains(&k),
        "web server number {k} is outside 1..={MAX_BACKENDS}"
    );
    Ipv4Addr::new(10, 0, 0, 10 + k as u8)
}

/// Which web server runs in each web namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebKind {
    /// nginx if it is installed, the builtin server otherwise.
    Auto,
    /// Real nginx, one instance (master + one worker) per web namespace.
    Nginx,
    /// This crate's small HTTP/1.1 server ([`web::serve`]), run as a separate process.
    Builtin,
}

impl fmt::Display for WebKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WebKind::Auto => "auto",
            WebKind::Nginx => "nginx",
            WebKind::Builtin => "builtin",
        })
    }
}

impl FromStr for WebKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(WebKind::Auto),
            "nginx" => Ok(WebKind::Nginx),
            "builtin" => Ok(WebKind::Builtin),
            other => bail!("unknown web server kind {other:?}: expected auto, nginx or builtin"),
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Prefix of every namespace name (`NAME-client`, `NAME-gw`, ...). ASCII letters,
    /// digits, `-` and `_`, starting with a letter or digit, at most [`MAX_NAME_LEN`].
    pub name: String,
    /// Number of web servers, `1..=MAX_BACKENDS`.
    pub backends: usize,
    pub web: WebKind,
    /// Command prefix that runs the builtin web server; the lab appends
    /// `--listen ADDR:80 --number K`. The gatehouse binary passes
    /// `[current_exe, "lab", "web"]`. Only needed when the builtin server is used.
    pub builtin_web: Vec<OsString>,
    /// Directory the lab owns: configs, logs, lab.json. It must not exist yet; it is
    /// created by [`Lab::up`] and removed at teardown.
    pub run_dir: PathBuf,
}

/// A number unique within this process, for names that must not collide
/// between tests running in parallel.
pub(crate) fn next_serial() -> usize {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

impl LabSpec {
    /// A spec whose name is unique to this process and call (`gh<pid>x<counter>`),
    /// with its run directory under the system temp directory and [`WebKind::Auto`].
    pub fn unique(backends: usize, builtin_web: Vec<OsString>) -> LabSpec {
        let n = next_serial();
        let name = format!("gh{}x{n}", std::process::id());
        let run_dir = std::env::temp_dir().join(format!("gatehouse-lab-{name}"));
        LabSpec {
            name,
            backends,
            web: WebKind::Auto,
            builtin_web,
            run_dir,
        }
    }

    /// Refuses specs the lab cannot build, saying what would work.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_BACKENDS).contains(&self.backends) {
            bail!(
                "a lab needs between 1 and {MAX_BACKENDS} backends (web servers 10.0.0.11 .. 10.0.0.{}), not {}",
                10 + MAX_BACKENDS,
                self.backends
            );
        }
        validate_name(&self.name)?;
        if self.web == WebKind::Builtin && self.builtin_web.is_empty() {
            bail!(
                "the builtin web server needs a command prefix in LabSpec::builtin_web \
                 (the gatehouse binary passes [current_exe, \"lab\", \"web\"])"
            );
        }
        Ok(())
    }
}

/// Checks a lab name: it becomes part of namespace names and of a directory name.
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || !ok_start {
        bail!(
            "invalid lab name {name:?}: use 1 to {MAX_NAME_LEN} ASCII letters, digits, '-' or '_', \
             starting with a letter or digit (it prefixes namespace names like NAME-gw)"
        );
    }
    Ok(())
}

/// Refuses to go on unless this process is root, which namespaces and veth need.
pub fn ensure_root(what: &str) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "{what} needs root: it creates network namespaces, veth pairs and a bridge; \
             run it as root (e.g. with sudo)"
        );
    }
    Ok(())
}

/// Refuses to go on unless this process is root and every one of `tools` is
/// installed, naming the Debian package to install. Tests call it first so a
/// machine that cannot run them fails loudly instead of skipping.
pub fn require(tools: &[&str]) -> Result<()> {
    ensure_root("this")?;
    for tool in tools {
        if topology::find_program(tool).is_none() {
            let package = match *tool {
                "nft" => "nftables",
                "ip" => "iproute2",
                "nginx" => "nginx-light",
                "iptables-restore" => "iptables",
                "ping" => "iputils-ping",
                other => other,
            };
            bail!(
                "`{tool}` is not installed: apt-get install {package} (scripts/test.sh installs what the tests need)"
            );
        }
    }
    Ok(())
}

/// The network namespaces that exist now and belong to lab `name`
/// (exactly `name-...`).
pub fn namespaces_of(name: &str) -> Result<Vec<String>> {
    let out = Command::new(topology::ip_program())
        .args(["netns", "list"])
        .output()
        .context("running ip netns list")?;
    let prefix = format!("{name}-");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| ns.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

/// The gateway namespace of lab `name` (what [`Lab::gateway_ns`] returns),
/// for callers that know a lab by name only, like `gatehouse lab down`.
pub fn gateway_ns_of(name: &str) -> String {
    topology::gateway_ns(name)
}

/// A process the lab started and kills at teardown.
struct Tracked {
    pid: u32,
    ns: String,
    /// The log file name relative to the run dir; says what the process is.
    log_name: String,
    child: Child,
}

/// A running lab. Dropping it tears it down unless it was [`persist`](Lab::persist)ed.
pub struct Lab {
    spec: LabSpec,
    /// The resolved kind: never `Auto`.
    web: WebKind,
    /// Namespaces this lab created (and only those: a name that already existed is
    /// never adopted, so teardown cannot delete someone else's namespace).
    namespaces: Vec<String>,
    processes: Vec<Tracked>,
    /// Pid of web server k at index k-1, while it runs.
    web_pids: Vec<Option<u32>>,
    /// Whether `up` created the run dir (so teardown may remove it).
    owns_run_dir: bool,
    persisted: bool,
}

impl Lab {
    /// Builds the lab and waits until every web server answers. On any failure it
    /// tears down whatever it already created, then returns the error.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        spec.validate()?;
        ensure_root("building a lab")?;
        let web = webservers::resolve_kind(&spec)?;
        webservers::require_curl()?;

        std::fs::create_dir_all(spec.run_dir.parent().unwrap_or(Path::new("/")))
            .with_context(|| format!("creating the parent of {}", spec.run_dir.display()))?;
        if let Err(err) = std::fs::create_dir(&spec.run_dir) {
            if err.kind() == std::io::ErrorKind::AlreadyExists {
                bail!(
                    "{} already exists: a lab may still be up there (`gatehouse lab down`), \
                     or it is left over; remove it and retry",
                    spec.run_dir.display()
                );
            }
            return Err(err).with_context(|| format!("creating {}", spec.run_dir.display()));
        }
        let mut lab = Lab {
            web,
            namespaces: Vec::new(),
            processes: Vec::new(),
            web_pids: vec![None; spec.backends],
            owns_run_dir: true,
            persisted: false,
            spec,
        };
        // From here on an early return drops `lab`, which tears down what exists.
        lab.build()
            .with_context(|| format!("building lab {}", lab.spec.name))?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        // nginx workers run as an unprivileged user and must read their site.
        webservers::make_world_readable_dir(&self.spec.run_dir)?;
        self.spec.run_dir = self
            .spec
            .run_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", self.spec.run_dir.display()))?;
        topology::create(&self.spec.name, self.spec.backends, &mut self.namespaces)?;
        for k in 1..=self.spec.backends {
            self.launch_web(k)?;
        }
        let all: Vec<usize> = (1..=self.spec.backends).collect();
        self.wait_for_web(&all)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }
    /// "The internet": 198.51.100.2, routes the farm's /24 via the gateway.
    pub fn client_ns(&self) -> String {
        topology::client_ns(&self.spec.name)
    }
    /// The gateway: eth0 (WAN) 198.51.100.1, eth1 (LAN) 10.0.0.1.
    pub fn gateway_ns(&self) -> String {
        topology::gateway_ns(&self.spec.name)
    }
    /// The switch: bridge br0 with ports gw, web1 .. webN.
    pub fn switch_ns(&self) -> String {
        topology::switch_ns(&self.spec.name)
    }
    /// Web server `k` (1-based): eth0 10.0.0.(10+k).
    pub fn web_ns(&self, k: usize) -> String {
        topology::web_ns(&self.spec.name, k)
    }
    pub fn backends(&self) -> usize {
        self.spec.backends
    }
    /// The kind actually running: `Nginx` or `Builtin`, never `Auto`.
    pub fn web_kind(&self) -> WebKind {
        self.web
    }
    pub fn run_dir(&self) -> &Path {
        &self.spec.run_dir
    }
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// `ip netns exec NS program`: add arguments and run it like any Command.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        topology::netns_command(ns, program.as_ref())
    }

    /// Runs `program args` in `ns` and returns its output, whatever its exit status
    /// (tests assert on failures too); errors only if it could not be started.
    pub fn output(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        self.command(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `ip netns exec {ns} {program}`"))
    }

    /// Starts `program args` in `ns` in the background with stdout and stderr
    /// appended to `run_dir/log_name`. The process is tracked and killed at teardown.
    /// Returns its pid (`ip netns exec` execs the program, so it is the program's).
    pub fn spawn(
        &mut self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: &[OsString],
        log_name: &str,
    ) -> Result<u32> {
        use std::os::unix::process::CommandExt;

        let program = program.as_ref();
        let log_path = self.spec.run_dir.join(log_name);
        if let Some(parent) = log_path.parent() {
            webservers::make_world_readable_dir(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening log {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating a log file handle")?;
        let child = self
            .command(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C or hangup aimed at whoever started the
            // lab must not kill the farm of a persisted lab; teardown kills by pid.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting `{}` in namespace {ns}", program.to_string_lossy()))?;
        let pid = child.id();
        self.processes.push(Tracked {
            pid,
            ns: ns.to_owned(),
            log_name: log_name.to_owned(),
            child,
        });
        Ok(pid)
    }

    /// Kills web server `k` (SIGTERM, then SIGKILL after ~2 s) and waits until it is
    /// gone, so health checks see it down.
    pub fn stop_web(&mut self, k: usize) -> Result<()> {
        self.check_web_number(k)?;
        let Some(pid) = self.web_pids[k - 1].take() else {
            bail!("web server {k} of lab {} is not running", self.spec.name);
        };
        let mut stopped: Vec<Tracked> = Vec::new();
        let mut kept = Vec::with_capacity(self.processes.len());
        for p in self.processes.drain(..) {
            if p.pid == pid {
                stopped.push(p)
            } else {
                kept.push(p)
            }
        }
        self.processes = kept;
        let mut children: Vec<Child> = stopped.into_iter().map(|p| p.child).collect();
        let problems = teardown::stop_children(&mut children);
        // nginx workers exit when their master does; make sure none lingers holding
        // port 80, sparing other processes the caller started in that namespace.
        let ns = self.web_ns(k);
        let spared: Vec<u32> = self.processes.iter().map(|p| p.pid).collect();
        let mut all_problems = problems;
        all_problems.extend(teardown::kill_namespace_pids(&ns, &spared));
        if !all_problems.is_empty() {
            bail!("stopping web server {k}: {}", all_problems.join("; "));
        }
        Ok(())
    }

    /// Starts web server `k` again and waits until it answers.
    pub fn start_web(&mut self, k: usize) -> Result<()> {
        self.check_web_number(k)?;
        if self.web_pids[k - 1].is_some() {
            bail!("web server {k} of lab {} is already running", self.spec.name);
        }
        self.launch_web(k)?;
        self.wait_for_web(&[k])
    }

    fn check_web_number(&self, k: usize) -> Result<()> {
        if !(1..=self.spec.backends).contains(&k) {
            bail!(
                "lab {} has web servers 1..={}, there is no number {k}",
                self.spec.name,
                self.spec.backends
            );
        }
        Ok(())
    }

    fn launch_web(&mut self, k: usize) -> Result<()> {
        let (program, args, log_name) = webservers::prepare(self.web, &self.spec, k)?;
        let ns = self.web_ns(k);
        let pid = self.spawn(&ns, &program, &args, &log_name)?;
        self.web_pids[k - 1] = Some(pid);
        Ok(())
    }

    /// Polls the given web servers from the gateway namespace until each answers 200.
    fn wait_for_web(&mut self, ks: &[usize]) -> Result<()> {
        let deadline = std::time::Instant::now() + webservers::START_TIMEOUT;
        let mut pending: Vec<usize> = ks.to_vec();
        loop {
            for &k in &pending {
                if let Some(status) = self.web_exit_status(k) {
                    bail!(
                        "web server {k} ({}:80, {}) exited with {status} before answering{}",
                        web_addr(k),
                        self.web,
                        webservers::log_tail(self.web, &self.spec.run_dir, k)
                    );
                }
            }
            let answered = webservers::probe(&self.gateway_ns(), &pending)?;
            pending.retain(|k| !answered.contains(k));
            if pending.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let k = pending[0];
                bail!(
                    "web server {k} ({}:80, {}) did not answer from {} within {} s{}",
                    web_addr(k),
                    self.web,
                    self.gateway_ns(),
                    webservers::START_TIMEOUT.as_secs(),
                    webservers::log_tail(self.web, &self.spec.run_dir, k)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn web_exit_status(&mut self, k: usize) -> Option<std::process::ExitStatus> {
        let pid = self.web_pids[k - 1]?;
        let p = self.processes.iter_mut().find(|p| p.pid == pid)?;
        p.child.try_wait().ok().flatten()
    }

    /// Writes `run_dir/lab.json` (spec, namespaces, pids) and leaves the lab running
    /// after this value is gone; [`Lab::down`] removes it later. If writing fails the
    /// lab is torn down and the error returned.
    pub fn persist(mut self) -> Result<PathBuf> {
        let record = persist::Record {
            name: self.spec.name.clone(),
            backends: self.spec.backends,
            web: self.web,
            builtin_web: self
                .spec
                .builtin_web
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect(),
            run_dir: self.spec.run_dir.clone(),
            namespaces: self.namespaces.clone(),
            processes: self
                .processes
                .iter()
                .map(|p| persist::RecordedProcess {
                    pid: p.pid,
                    ns: p.ns.clone(),
                    what: p.log_name.clone(),
                })
                .collect(),
        };
        let path = persist::write(&record)?;
        self.persisted = true;
        Ok(path)
    }

    /// Tears down a persisted lab from its `lab.json`: processes, namespaces, run dir.
    /// Idempotent: a run dir that no longer exists is already down. Every step is
    /// attempted even if an earlier one fails; the error lists what went wrong.
    pub fn down(run_dir: &Path) -> Result<()> {
        persist::down(run_dir)
    }

    /// Which of a persisted lab's namespaces exist and which of its processes run.
    pub fn status(run_dir: &Path) -> Result<LabStatus> {
        persist::status(run_dir)
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut children: Vec<Child> = self.processes.drain(..).map(|p| p.child).collect();
        let mut problems = teardown::stop_children(&mut children);
        let run_dir = self.owns_run_dir.then_some(self.spec.run_dir.as_path());
        problems.extend(teardown::remove_namespaces_and_dir(&self.namespaces, run_dir));
        self.namespaces.clear();
        self.web_pids.iter_mut().for_each(|p| *p = None);
        self.owns_run_dir = false;
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.persisted {
            return;
        }
        let problems = self.teardown();
        if !problems.is_empty() {
            // Drop must not panic, and eprintln! would if stderr is gone.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "warning: tearing down lab {}: {}",
                self.spec.name,
                problems.join("; ")
            );
        }
    }
}
