//! The farm's web servers: choosing nginx or the builtin server, writing each
//! server's site and nginx config under `run_dir/webK/`, the command line that
//! starts it, and the probe that tells when it answers.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::topology::{find_program, netns_command};
use crate::{LabSpec, WebKind, web, web_addr};

/// How long every web server together gets to answer after being started.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Turns `Auto` into what will run, and checks that it can run.
pub(crate) fn resolve_kind(spec: &LabSpec) -> Result<WebKind> {
    match spec.web {
        WebKind::Nginx => {
            if find_program("nginx").is_none() {
                bail!(
                    "nginx is not installed (no `nginx` on PATH or in /usr/sbin): \
                     install it (apt-get install nginx-light) or use the builtin web server"
                );
            }
            Ok(WebKind::Nginx)
        }
        WebKind::Builtin => Ok(WebKind::Builtin),
        WebKind::Auto if find_program("nginx").is_some() => Ok(WebKind::Nginx),
        WebKind::Auto if !spec.builtin_web.is_empty() => Ok(WebKind::Builtin),
        WebKind::Auto => bail!(
            "nginx is not installed and no builtin web server command was given: \
             install nginx (apt-get install nginx-light) or set LabSpec::builtin_web"
        ),
    }
}

/// The lab polls its web servers with curl, and tests use it as the client.
pub(crate) fn require_curl() -> Result<()> {
    if find_program("curl").is_none() {
        bail!("curl is not installed: the lab uses it to see its web servers answer (apt-get install curl)");
    }
    Ok(())
}

/// Creates a directory if needed and makes it readable and searchable by everyone:
/// nginx workers run as nobody or www-data and must reach their site and config.
pub(crate) fn make_world_readable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} readable", dir.display()))
}

fn write_readable(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("making {} readable", path.display()))
}

pub(crate) fn web_dir(run_dir: &Path, k: usize) -> PathBuf {
    run_dir.join(format!("web{k}"))
}

/// Prepares web server `k`'s files and returns (program, arguments, log name).
pub(crate) fn prepare(kind: WebKind, spec: &LabSpec, k: usize) -> Result<(OsString, Vec<OsString>, String)> {
    let dir = web_dir(&spec.run_dir, k);
    make_world_readable_dir(&dir)?;
    let addr = web_addr(k);
    match kind {
        WebKind::Nginx => {
            let html = dir.join("html");
            make_world_readable_dir(&html)?;
            write_readable(&html.join("index.html"), &web::site_html(k))?;
            make_world_readable_dir(&dir.join("temp"))?;
            let conf = dir.join("nginx.conf");
            write_readable(&conf, &nginx_config(&dir, addr))?;
            let nginx = find_program("nginx").context("nginx disappeared from PATH")?;
            let args = vec![
                // -p: relative paths resolve here, never under /etc/nginx or /var/log/nginx.
                "-p".into(),
                dir.clone().into_os_string(),
                "-c".into(),
                conf.into_os_string(),
                // -e: the error log used before the config is read.
                "-e".into(),
                dir.join("error.log").into_os_string(),
                "-g".into(),
                "daemon off;".into(),
            ];
            Ok((nginx.into_os_string(), args, format!("web{k}/nginx.log")))
        }
        WebKind::Builtin | WebKind::Auto => {
            let Some((program, prefix)) = spec.builtin_web.split_first() else {
                bail!("no builtin web server command (LabSpec::builtin_web is empty)");
            };
            let mut args: Vec<OsString> = prefix.to_vec();
            args.extend([
                "--listen".into(),
                format!("{addr}:80").into(),
                "--number".into(),
                k.to_string().into(),
            ]);
            Ok((program.clone(), args, format!("web{k}/web.log")))
        }
    }
}

/// A self-contained nginx config: nothing read from /etc/nginx, nothing written
/// outside `dir`. One worker, as each namespace stands for one small machine.
/// Each server also sends its access log to the gateway's log server (Part 2
/// of the seed), as nginx does with `syslog:server=`: RFC 3164 over UDP.
fn nginx_config(dir: &Path, addr: Ipv4Addr) -> String {
    let d = dir.display();
    let gw = crate::GATEWAY_LAN_ADDR;
    format!(
        "# Generated by gatehouse-lab for the web server at {addr}.\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n\
         \x20   types {{ text/html html; }}\n\
         \x20   default_type text/html;\n\
         \x20   access_log {d}/access.log;\n\
         \x20   access_log syslog:server={gw}:514,tag=nginx combined;\n\
         \x20   client_body_temp_path {d}/temp/client_body;\n\
         \x20   proxy_temp_path {d}/temp/proxy;\n\
         \x20   fastcgi_temp_path {d}/temp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/temp/uwsgi;\n\
         \x20   scgi_temp_path {d}/temp/scgi;\n\
         \x20   server {{\n\
         \x20       listen {addr}:80;\n\
         \x20       server_name _;\n\
         \x20       root {d}/html;\n\
         \x20       index index.html;\n\
         \x20   }}\n\
         }}\n"
    )
}

/// Asks each of the web servers `ks` once, from the gateway namespace, with one curl
/// run; returns those that answered 200.
pub(crate) fn probe(gateway_ns: &str, ks: &[usize]) -> Result<Vec<usize>> {
    let curl = find_program("curl").context("curl is not installed (apt-get install curl)")?;
    let mut cmd = netns_command(gateway_ns, curl.as_os_str());
    cmd.args([
        "--silent",
        "--noproxy",
        "*",
        "--parallel",
        "--parallel-max",
        "64",
        "--connect-timeout",
        "1",
        "--max-time",
        "2",
        "--write-out",
        "%{http_code} %{url_effective}\\n",
    ]);
    for &k in ks {
        cmd.args(["--output", "/dev/null", &format!("http://{}/", web_addr(k))]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("probing the web servers with curl from {gateway_ns}"))?;
    // curl's exit status only reflects one transfer; the per-URL lines tell all.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(ks
        .iter()
        .copied()
        .filter(|&k| {
            let url = format!("http://{}/", web_addr(k));
            text.lines()
                .any(|line| line.split_once(' ') == Some(("200", url.as_str())))
        })
        .collect())
}

/// The last lines of web server `k`'s logs, formatted to end an error message.
pub(crate) fn log_tail(kind: WebKind, run_dir: &Path, k: usize) -> String {
    let dir = web_dir(run_dir, k);
    let logs = match kind {
        WebKind::Nginx => vec![dir.join("nginx.log"), dir.join("error.log")],
        _ => vec![dir.join("web.log")],
    };
    let mut out = String::new();
    for log in logs {
        let Ok(text) = std::fs::read_to_string(&log) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(10)..];
        if !tail.is_empty() {
            out.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                log.display(),
                tail.join("\n")
            ));
        }
    }
    if out.is_empty() {
        "\n(its logs are empty)".to_owned()
    } else {
        out
    }
}
