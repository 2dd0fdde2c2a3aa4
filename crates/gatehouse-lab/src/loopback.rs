//! Real nginx web servers on 127.0.0.1, for tests and benchmarks that need a
//! farm but not the namespaces (the userspace proxy runs anywhere).
//!
//! Each server is its own single-process nginx (`master_process off`), so one
//! can be killed and restarted by pid without touching the others. Pages:
//! `/` is "My Website Number K" (as in the lab), `/headers` echoes the
//! forwarding headers the server received, one per line.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::find_program;
use crate::web;
use crate::webservers::make_world_readable_dir;

/// nginx servers on loopback; stopped and removed when dropped.
pub struct LoopbackNginx {
    dir: PathBuf,
    servers: Vec<Server>,
}

struct Server {
    addr: SocketAddr,
    child: Option<Child>,
}

impl LoopbackNginx {
    /// Start `count` servers, numbered from 1, each on a free port.
    pub fn start(count: usize) -> Result<LoopbackNginx> {
        let Some(nginx) = find_program("nginx") else {
            bail!("nginx is not installed: apt-get install nginx-light");
        };
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-nginx-{}-{}",
            std::process::id(),
            crate::next_serial()
        ));
        make_world_readable_dir(&dir)?;
        let mut farm = LoopbackNginx {
            dir,
            servers: Vec::new(),
        };
        for k in 1..=count {
            let port = free_port()?;
            let site = farm.dir.join(format!("web{k}"));
            make_world_readable_dir(&site)?;
            std::fs::write(site.join("index.html"), web::site_html(k))?;
            std::fs::write(site.join("nginx.conf"), config(&site, port))?;
            farm.servers.push(Server {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                child: None,
            });
            farm.launch(k, &nginx)?;
        }
        Ok(farm)
    }

    /// Server `k`'s address (k from 1).
    pub fn addr(&self, k: usize) -> SocketAddr {
        self.servers[k - 1].addr
    }

    /// Kill server `k` (SIGKILL: the way a crashed server goes).
    pub fn stop(&mut self, k: usize) {
        if let Some(mut child) = self.servers[k - 1].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start server `k` again on its port and wait until it answers.
    pub fn restart(&mut self, k: usize) -> Result<()> {
        self.stop(k);
        let nginx = find_program("nginx").context("nginx disappeared")?;
        self.launch(k, &nginx)
    }

    fn launch(&mut self, k: usize, nginx: &Path) -> Result<()> {
        let site = self.dir.join(format!("web{k}"));
        let child = Command::new(nginx)
            .arg("-c")
            .arg(site.join("nginx.conf"))
            .arg("-p")
            .arg(&site)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let server = &mut self.servers[k - 1];
        server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&server.addr, Duration::from_millis(100)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx for web{k} did not listen on {} within 10 s", server.addr);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for LoopbackNginx {
    fn drop(&mut self) {
        for k in 1..=self.servers.len() {
            self.stop(k);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on now. Another process could take it before the
/// caller binds it; on a test machine that race is rare enough.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn config(site: &Path, port: u16) -> String {
    let site = site.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log {site}/error.log warn;
pid {site}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {site}/tmp-body;
    proxy_temp_path {site}/tmp-proxy;
    fastcgi_temp_path {site}/tmp-fastcgi;
    uwsgi_temp_path {site}/tmp-uwsgi;
    scgi_temp_path {site}/tmp-scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {site};
        location = /headers {{
            default_type text/plain;
            return 200 "x-forwarded-for: $http_x_forwarded_for\nx-forwarded-proto: $http_x_forwarded_proto\nx-forwarded-host: $http_x_forwarded_host\nforwarded: $http_forwarded\nconnection: $http_connection\nkeep-alive: $http_keep_alive\nx-hop: $http_x_hop\nhost: $http_host\n";
        }}
    }}
}}
"#
    )
}
