//! Commands that talk to a running `gatehouse serve`: `status` and `reload`.
//! Both find it through the config's `[admin] listen` (or `--admin`); reload
//! can also signal it by pid when there is no admin listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use gatehouse_config::{Farm, LoadError};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

use crate::Failure;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The config file (to find the admin listener).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The admin listener's address, instead of the config's [admin] listen.
    #[arg(long, value_name = "ADDR:PORT")]
    admin: Option<SocketAddr>,
    /// Print the JSON the admin listener serves.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ReloadArgs {
    /// The config file (to find the admin listener).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The admin listener's address, instead of the config's [admin] listen.
    #[arg(long, value_name = "ADDR:PORT")]
    admin: Option<SocketAddr>,
    /// Send SIGHUP to this process instead (when serve has no admin listener).
    #[arg(long, value_name = "PID", conflicts_with = "admin")]
    pid: Option<i32>,
}

/// The address of the config's admin listener (`[admin] listen`).
fn admin_of(farm: &Farm, path: &Path) -> Result<SocketAddr, Failure> {
    match &farm.admin {
        Some(admin) => Ok(admin.listen.value),
        None => Err(Failure::BadInput(format!(
            "error: {} has no [admin] section, so there is no admin listener to ask\n  \
             help: add [admin] listen = \"127.0.0.1:9900\" and reload serve, or give --admin ADDR:PORT",
            path.display()
        ))),
    }
}

/// One request to the admin listener; a small runtime of its own because
/// these commands are otherwise synchronous.
pub(crate) fn request(addr: SocketAddr, method: hyper::Method, path: &str) -> anyhow::Result<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime
        .block_on(async {
            let exchange = async {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                let request = hyper::Request::builder()
                    .method(method)
                    .uri(path)
                    .header(hyper::header::HOST, addr.to_string())
                    .body(Full::new(Bytes::new()))?;
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
            };
            // A reload applies the kernel table and binds listeners: allow time.
            tokio::time::timeout(Duration::from_secs(60), exchange)
                .await
                .context("no answer within 60 s")?
        })
        .with_context(|| format!("asking gatehouse serve at http://{addr}{path} (is it running?)"))
}

pub fn status(args: &StatusArgs) -> Result<ExitCode, Failure> {
    let addr = match args.admin {
        Some(addr) => addr,
        None => {
            let path = gatehouse_config::resolve_path(args.config.as_deref());
            admin_of(&Farm::load(&path)?, &path)?
        }
    };
    let (code, body) = request(addr, hyper::Method::GET, "/status")?;
    if code != 200 {
        return Err(Failure::Failed(anyhow::anyhow!(
            "/status answered {code}: {body}"
        )));
    }
    if args.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let status: Value = serde_json::from_str(&body).context("reading /status")?;
    print!("{}", render_status(&status));
    Ok(ExitCode::SUCCESS)
}

/// The table `gatehouse status` prints.
fn render_status(status: &Value) -> String {
    let mut rows: Vec<[String; 8]> = vec![
        [
            "SERVICE", "LISTEN", "BACKEND", "ADDRESS", "STATE", "SINCE", "CONNS", "REQ/S",
        ]
        .map(String::from),
    ];
    let empty = Vec::new();
    let mut notes = Vec::new();
    for service in status["services"].as_array().unwrap_or(&empty) {
        let name = service["name"].as_str().unwrap_or("?");
        let listen = format!(
            "{} {}",
            service["mode"].as_str().unwrap_or("?"),
            service["listen"].as_str().unwrap_or("?")
        );
        for cert in service["certificates"].as_array().unwrap_or(&empty) {
            let left = cert["expires_in_seconds"].as_u64().unwrap_or(0);
            if left < 14 * 86_400 {
                notes.push(format!(
                    "{name}: certificate {} expires in {} (renew it and reload)",
                    cert["cert"].as_str().unwrap_or("?"),
                    ago(left)
                ));
            }
        }
        if service["fail_open"].as_bool() == Some(true) {
            notes.push(format!(
                "{name}: EVERY BACKEND IS DOWN; failing open (traffic goes to all of them)"
            ));
        }
        // A service with routes has a pool per route ("sites/www.example.com"):
        // each pool's first row names it.
        let mut last_pool = None;
        for (i, backend) in service["backends"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .enumerate()
        {
            let pool = backend["pool"].as_str().unwrap_or(name);
            let svc = if last_pool != Some(pool) {
                pool.to_owned()
            } else {
                String::new()
            };
            last_pool = Some(pool);
            let lis = if i == 0 { listen.clone() } else { String::new() };
            rows.push([
                svc,
                lis,
                backend["name"].as_str().unwrap_or("?").to_owned(),
                backend["addr"].as_str().unwrap_or("?").to_owned(),
                backend["state"].as_str().unwrap_or("?").to_owned(),
                ago(backend["for_seconds"].as_u64().unwrap_or(0)),
                backend["connections"].as_i64().unwrap_or(0).to_string(),
                format!("{:.1}", backend["rate"].as_f64().unwrap_or(0.0)),
            ]);
        }
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "gatehouse {} up {}, {} reload{}, config {}\n",
        status["version"].as_str().unwrap_or("?"),
        ago(status["uptime_seconds"].as_u64().unwrap_or(0)),
        status["reloads"].as_u64().unwrap_or(0),
        if status["reloads"].as_u64() == Some(1) {
            ""
        } else {
            "s"
        },
        status["config"].as_str().unwrap_or("?"),
    );
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// "42s", "5m", "3h", "2d": how long a backend has been in its state.
fn ago(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn reload(args: &ReloadArgs) -> Result<ExitCode, Failure> {
    // serve would refuse an invalid file with these same errors; say so here
    // without bothering it (and without needing its admin address).
    let path = gatehouse_config::resolve_path(args.config.as_deref());
    let loaded = Farm::load(&path);
    if let Err(LoadError::Invalid(d)) = loaded {
        let failure: Failure = d.into();
        let Failure::BadInput(text) = failure else {
            return Err(failure);
        };
        return Err(Failure::BadInput(format!(
            "{}\nreload not sent: gatehouse serve keeps running the previous config",
            text.trim_end()
        )));
    }
    if let Some(pid) = args.pid {
        signal_hup(pid)?;
        println!("sent SIGHUP to {pid}; serve logs whether the reload took");
        return Ok(ExitCode::SUCCESS);
    }
    let addr = match args.admin {
        Some(addr) => addr,
        None => admin_of(&loaded?, &path)?,
    };
    let (code, body) = request(addr, hyper::Method::POST, "/reload")?;
    match code {
        200 => {
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        422 => Err(Failure::BadInput(format!(
            "{}\nreload refused: gatehouse serve keeps running the previous config",
            body.trim_end()
        ))),
        500 => Err(Failure::Failed(anyhow::anyhow!(
            "{}\nreload refused: gatehouse serve keeps running the previous config",
            body.trim_end().trim_start_matches("error: ")
        ))),
        _ => Err(Failure::Failed(anyhow::anyhow!(
            "/reload answered {code}: {}",
            body.trim_end()
        ))),
    }
}

fn signal_hup(pid: i32) -> anyhow::Result<()> {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        bail!("{pid} is not a process id");
    };
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .with_context(|| format!("sending SIGHUP to process {}", pid.as_raw_nonzero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_lines_up_and_warns_of_fail_open() {
        let status = serde_json::json!({
            "version": "0.1.0", "uptime_seconds": 3700, "reloads": 1, "config": "/etc/gatehouse/gatehouse.toml",
            "services": [{
                "name": "app", "mode": "http", "listen": "8080", "fail_open": true,
                "backends": [
                    {"name": "web1", "addr": "10.0.0.11:80", "state": "down", "for_seconds": 5, "connections": 0, "rate": 0.0},
                    {"name": "10.0.0.12:80", "addr": "10.0.0.12:80", "state": "down", "for_seconds": 7200, "connections": 3, "rate": 12.25}
                ]
            }]
        });
        let table = render_status(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "gatehouse 0.1.0 up 61m, 1 reload, config /etc/gatehouse/gatehouse.toml"
        );
        assert_eq!(
            lines[1],
            "SERVICE  LISTEN     BACKEND       ADDRESS       STATE  SINCE  CONNS  REQ/S"
        );
        assert_eq!(
            lines[2],
            "app      http 8080  web1          10.0.0.11:80  down   5s     0      0.0"
        );
        assert_eq!(
            lines[3],
            "                    10.0.0.12:80  10.0.0.12:80  down   2h     3      12.2"
        );
        assert!(lines[4].contains("EVERY BACKEND IS DOWN"));
    }

    #[test]
    fn routes_name_their_pools_and_expiring_certificates_are_told() {
        let status = serde_json::json!({
            "version": "0.1.0", "uptime_seconds": 60, "reloads": 0, "config": "g.toml",
            "services": [{
                "name": "sites", "mode": "http", "listen": "443", "fail_open": false,
                "certificates": [
                    {"names": ["www.example.com"], "cert": "/etc/gatehouse/www.pem", "expires_in_seconds": 5 * 86400},
                    {"names": ["app.example.com"], "cert": "/etc/gatehouse/app.pem", "expires_in_seconds": 60 * 86400}
                ],
                "backends": [
                    {"name": "web1", "pool": "sites/www.example.com", "addr": "10.0.0.21:80", "state": "up", "for_seconds": 5, "connections": 0, "rate": 1.0},
                    {"name": "web2", "pool": "sites/www.example.com", "addr": "10.0.0.22:80", "state": "up", "for_seconds": 5, "connections": 0, "rate": 1.0},
                    {"name": "app1", "pool": "sites/app.example.com/shop", "addr": "10.0.0.31:8080", "state": "up", "for_seconds": 5, "connections": 0, "rate": 1.0}
                ]
            }]
        });
        let table = render_status(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[2].starts_with("sites/www.example.com       http 443  web1"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("                                      web2"),
            "{table}"
        );
        assert!(
            lines[4].starts_with("sites/app.example.com/shop            app1"),
            "{table}"
        );
        assert_eq!(
            lines[5],
            "sites: certificate /etc/gatehouse/www.pem expires in 5d (renew it and reload)"
        );
        assert_eq!(
            lines.len(),
            6,
            "the certificate good for 60 days is not mentioned: {table}"
        );
    }
}
