//! What the end-to-end tests share: a lab (the seed's Figure 1 in network
//! namespaces, real nginx), the gatehouse binary run against its gateway, and
//! a client that makes real requests with curl.

#![allow(dead_code)] // each test binary uses its own subset

pub mod browser;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};

use gatehouse_lab::{Lab, LabSpec, WebKind, web_addr};

pub const EXE: &str = env!("CARGO_BIN_EXE_gatehouse");
/// The gateway's public address, as the client sees it.
pub const PUBLIC: &str = "198.51.100.1";

/// Fail (never skip) when the machine cannot run the test, saying what to install.
pub fn require(tools: &[&str]) {
    gatehouse_lab::require(tools).expect("the end-to-end tests cannot run here");
}

/// A lab with `backends` nginx web servers, nothing applied yet.
pub struct Farm {
    pub lab: Lab,
    pub config: PathBuf,
}

impl Farm {
    pub fn new(backends: usize) -> Farm {
        require(&["nft", "nginx", "curl", "ip"]);
        let mut spec = LabSpec::unique(backends, vec![EXE.into(), "lab".into(), "web".into()]);
        spec.web = WebKind::Nginx;
        let lab = Lab::up(spec).expect("building the lab");
        let config = lab.run_dir().join("gatehouse.toml");
        Farm { lab, config }
    }

    pub fn gw(&self) -> String {
        self.lab.gateway_ns()
    }

    /// `"10.0.0.11:80", "10.0.0.12:80", ...` for the first `n` web servers.
    pub fn backend_list(&self, n: usize) -> String {
        (1..=n)
            .map(|k| format!("\"{}:80\"", web_addr(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A farm config in the seed's shape with one nat service.
    pub fn config_text(&self, balance: &str, backends: &str) -> String {
        format!(
            "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\nadmin = [\"192.168.2.0/24\"]\n\n\
             [[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbalance = \"{balance}\"\n\
             backends = [{backends}]\n"
        )
    }

    /// Run the gatehouse binary against the lab's gateway.
    pub fn gatehouse(&self, args: &[&str]) -> Output {
        Command::new(EXE)
            .args(["--netns", &self.gw(), "--state-dir"])
            .arg(self.lab.run_dir().join("state"))
            .args(args)
            .output()
            .expect("running gatehouse")
    }

    /// Write `text` as the config and apply it; the test fails if apply does.
    pub fn apply(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
        let out = self.gatehouse(&["apply", "-c", self.config.to_str().unwrap()]);
        assert!(out.status.success(), "apply failed:\n{}", show(&out));
    }

    /// Run a program in one of the lab's namespaces.
    pub fn run(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        self.lab
            .output(ns, program, args)
            .expect("running a command in the lab")
    }

    /// One request from the client ("the internet") to the public address;
    /// returns which web server answered (its number), or None.
    pub fn client_get(&self) -> Option<usize> {
        let out = self.run(
            &self.lab.client_ns(),
            "curl",
            &["-s", "-m", "3", &format!("http://{PUBLIC}/")],
        );
        site_number(&String::from_utf8_lossy(&out.stdout))
    }

    /// `n` requests from the client, each on its own TCP connection; the
    /// numbers of the web servers that answered, in order.
    pub fn client_get_many(&self, n: usize, extra: &[&str]) -> Vec<usize> {
        let url = format!("http://{PUBLIC}/?[1-{n}]");
        let mut args = vec!["-s", "-m", "30", "-H", "Connection: close"];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = self.run(&self.lab.client_ns(), "curl", &args);
        let body = String::from_utf8_lossy(&out.stdout);
        body.split("<title>").skip(1).filter_map(site_number).collect()
    }

    /// `nft list ruleset` in the gateway: everything, not just our table.
    pub fn ruleset(&self) -> String {
        let out = self.run(&self.gw(), "nft", &["list", "ruleset"]);
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `gatehouse serve` on the gateway with the lab's config and state
    /// directory, logging to serve.log in the run dir.
    pub fn serve(&self) -> Process {
        let state = self.lab.run_dir().join("state");
        let gw = self.gw();
        let args = [
            "--netns".as_ref(),
            gw.as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "serve".as_ref(),
            "-c".as_ref(),
            self.config.as_os_str(),
        ];
        Process::spawn(&args, self.lab.run_dir().join("serve.log"))
    }

    pub fn spawn(&mut self, ns: &str, args: &[&str], log: &str) {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        self.lab
            .spawn(ns, EXE, &args, log)
            .expect("starting a helper process");
    }
}

/// Whether `program` is on PATH (or in /usr/sbin, /sbin).
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(program).is_file())
}

/// "My Website Number K" → K.
pub fn site_number(body: &str) -> Option<usize> {
    let rest = body.split("My Website Number ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A long-running gatehouse (`serve`), its stdout and stderr in a log file;
/// stopped by pid when dropped, also when the test fails: SIGTERM, then
/// SIGKILL if it has not exited within 5 s.
pub struct Process {
    child: std::process::Child,
    log: PathBuf,
}

impl Process {
    /// Start `gatehouse ARGS`, logging to `log`.
    pub fn spawn(args: &[&std::ffi::OsStr], log: PathBuf) -> Process {
        Process::start(args, log, std::process::Stdio::null())
    }

    /// The same, with a pipe to its stdin for [`Process::type_line`].
    pub fn spawn_with_input(args: &[&std::ffi::OsStr], log: PathBuf) -> Process {
        Process::start(args, log, std::process::Stdio::piped())
    }

    fn start(args: &[&std::ffi::OsStr], log: PathBuf, stdin: std::process::Stdio) -> Process {
        let out = std::fs::File::create(&log).expect("creating the log file");
        let err = out.try_clone().expect("duplicating the log file");
        let child = Command::new(EXE)
            .args(args)
            .stdin(stdin)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting gatehouse");
        Process { child, log }
    }

    /// Write a line to its stdin (started with `spawn_with_input`).
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("started with spawn_with_input");
        writeln!(stdin, "{line}").expect("writing to gatehouse's stdin");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `text`; fails if the process exits first.
    pub fn wait_for_log(&mut self, text: &str, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while !self.log().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gatehouse exited with {status}:\n{}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {text:?} in {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `kill -SIGNAL`, e.g. "HUP" or "TERM".
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("running kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// The exit status, once it has exited (fails after `within`).
    pub fn wait_exit(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for gatehouse") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
