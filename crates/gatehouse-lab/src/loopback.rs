//! Real nginx web servers on 127.0.0.1, for tests and benchmarks that need a
//! farm but not the namespaces (the userspace proxy runs anywhere).
//!
//! Each server is its own single-process nginx (`master_process off`), so one
//! can be killed and restarted by pid without touching the others. Pages: `/`
//! is the server's page ("My Website Number K" as in the lab, or a line of
//! text), `/headers` echoes the forwarding headers it received, `|`-separated:
//! X-Forwarded-For, -Proto, -Host, Forwarded, Connection, Keep-Alive,
//! X-Custom, Host.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::find_program;
use crate::web;
use crate::webservers::make_world_readable_dir;

/// What a server answers on `/`.
#[derive(Debug, Clone)]
pub enum Page {
    /// The lab's HTML page, "My Website Number K".
    Site(usize),
    /// This text and a newline, as text/plain, on every path.
    Text(String),
}

/// One nginx on a free loopback port; killed and its directory removed when
/// dropped.
pub struct Nginx {
    dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Nginx {
    pub fn start(page: Page) -> Result<Nginx> {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-nginx-{}-{}",
            std::process::id(),
            crate::next_serial()
        ));
        make_world_readable_dir(&dir)?;
        let port = free_port()?;
        let mut nginx = Nginx {
            dir,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            child: None,
        };
        let root = match &page {
            Page::Site(k) => {
                std::fs::write(nginx.dir.join("index.html"), web::site_html(*k))?;
                String::new()
            }
            Page::Text(text) => {
                format!("location / {{ default_type text/plain; return 200 \"{text}\\n\"; }}")
            }
        };
        std::fs::write(nginx.dir.join("nginx.conf"), config(&nginx.dir, port, &root))?;
        nginx.restart()?;
        Ok(nginx)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SIGKILL: the way a crashed server goes.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on its port (killing it first if it runs) and wait
    /// until it accepts connections.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let Some(nginx) = find_program("nginx") else {
            bail!("nginx is not installed: apt-get install nginx-light");
        };
        let child = Command::new(nginx)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                bail!("nginx on {} exited with {status}: {log}", self.addr);
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {} within 10 s", self.addr);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Servers 1..=N showing "My Website Number K", as the lab's web servers do.
pub struct LoopbackNginx {
    servers: Vec<Nginx>,
}

impl LoopbackNginx {
    pub fn start(count: usize) -> Result<LoopbackNginx> {
        let servers = (1..=count)
            .map(|k| Nginx::start(Page::Site(k)))
            .collect::<Result<_>>()?;
        Ok(LoopbackNginx { servers })
    }

    /// Server `k`'s address (k from 1).
    pub fn addr(&self, k: usize) -> SocketAddr {
        self.servers[k - 1].addr()
    }

    /// Kill server `k`.
    pub fn stop(&mut self, k: usize) {
        self.servers[k - 1].kill();
    }

    /// Start server `k` again on its port and wait until it answers.
    pub fn restart(&mut self, k: usize) -> Result<()> {
        self.servers[k - 1].restart()
    }
}

/// A directory of a test's own under the temp dir, removed (with everything
/// in it) when dropped, also when the test fails. The name carries the
/// process id and a counter, so parallel tests and runs never share one.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("gatehouse-test-{}-{what}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on now. Another process could take it before the
/// caller binds it; on a test machine that race is rare enough.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn config(dir: &Path, port: u16, root_location: &str) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {d};
        {root_location}
        location = /headers {{
            default_type text/plain;
            return 200 "$http_x_forwarded_for|$http_x_forwarded_proto|$http_x_forwarded_host|$http_forwarded|$http_connection|$http_keep_alive|$http_x_custom|$http_host\n";
        }}
    }}
}}
"#
    )
}
