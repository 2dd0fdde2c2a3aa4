//! The short description `gatehouse check` prints: what the file will do, in
//! the words of the config reference, so a reader can compare it with intent.

use std::fmt::Write;

use crate::model::{Backend, BackupServer, Balance, Check, Farm, LogServer, Mode};

impl Farm {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(g) = &self.gateway {
            let subnet = g
                .lan_subnet
                .as_ref()
                .map(|s| format!(" ({})", s.value))
                .unwrap_or_default();
            let mut ssh_from = vec![String::from("lan")];
            ssh_from.extend(g.admin.iter().map(|a| a.value.to_string()));
            let _ = writeln!(
                out,
                "gateway  wan {}, lan {}{subnet}; masquerade {}; ssh {} from {}; ping {}",
                g.wan.value,
                g.lan.value,
                on_off(g.masquerade),
                g.ssh_port,
                ssh_from.join(", "),
                on_off(g.ping),
            );
            if !g.trusted.is_empty() {
                let names: Vec<&str> = g.trusted.iter().map(|t| t.value.as_str()).collect();
                let _ = writeln!(out, "         trusted (not filtered): {}", names.join(", "));
            }
        }
        let width = self.services.iter().map(|s| s.name.len()).max().unwrap_or(0);
        for s in &self.services {
            let own = if s.backends.is_empty() {
                "no backends of its own: requests no route matches get 404".to_owned()
            } else {
                format!(
                    "{} over {} backend{}: {}",
                    s.balance.as_str(),
                    s.backends.len(),
                    if s.backends.len() == 1 { "" } else { "s" },
                    backend_list(&s.backends, s.balance),
                )
            };
            let _ = writeln!(
                out,
                "service  {:width$}  {} {}  {own}",
                s.name.value,
                s.mode.as_str(),
                s.listen.value,
            );
            let pad = " ".repeat(width);
            if let Some(tls) = &s.tls {
                let certs: Vec<String> = tls
                    .certs
                    .iter()
                    .map(|c| {
                        format!(
                            "{} (until {})",
                            c.names.join(" "),
                            humantime::format_rfc3339_seconds(c.not_after)
                        )
                    })
                    .collect();
                let _ = writeln!(out, "         {pad}  tls: {}", certs.join("; "));
            }
            if let Some(redirect) = &s.redirect_http {
                let _ = writeln!(
                    out,
                    "         {pad}  http on {} redirects to https",
                    redirect.value
                );
            }
            for r in &s.routes {
                let hosts: Vec<&str> = r.hosts.iter().map(|h| h.value.as_str()).collect();
                let hosts = if hosts.is_empty() {
                    "any host".to_owned()
                } else {
                    hosts.join(" ")
                };
                let path = r
                    .path
                    .as_ref()
                    .map_or(String::new(), |p| format!(" {}*", p.value));
                let _ = writeln!(
                    out,
                    "         {pad}  route {hosts}{path} -> {} over {}",
                    r.balance.as_str(),
                    backend_list(&r.backends, r.balance),
                );
            }
        }
        if let Some(log) = &self.log_server {
            log_server(&mut out, log);
        }
        if let Some(backup) = &self.backup_server {
            backup_server(&mut out, backup);
        }
        if self.gateway.is_none()
            && self.services.is_empty()
            && self.log_server.is_none()
            && self.backup_server.is_none()
        {
            out.push_str(
                "nothing configured: add a [gateway] section, a [[service]], a [log_server] or a [backup_server]\n",
            );
        }
        for s in &self.services {
            let check = match &s.health.check {
                Check::Tcp => "tcp".to_owned(),
                Check::Http { path, expect } => format!("http GET {path} expects {expect}"),
            };
            let _ = writeln!(
                out,
                "         {:width$}  health {check} every {}, down after {} failures, up after {} successes",
                "",
                humantime::format_duration(s.health.interval),
                s.health.fall,
                s.health.rise,
            );
        }
        if self.services.iter().any(|s| s.mode != Mode::Nat) {
            out.push_str("http and tcp services are served by the userspace proxy of `gatehouse serve`\n");
        }
        if let Some(admin) = &self.admin {
            let _ = writeln!(
                out,
                "admin    http://{}/ (metrics, status, reload{})",
                admin.listen.value,
                if self.log_server.is_some() { ", logs" } else { "" }
            );
        }
        out
    }
}

fn log_server(out: &mut String, log: &LogServer) {
    let mut inputs = Vec::new();
    if let Some(udp) = &log.udp {
        inputs.push(format!("udp {}", udp.value));
    }
    if let Some(tcp) = &log.tcp {
        inputs.push(format!("tcp {}", tcp.value));
    }
    if let Some(tls) = &log.tls {
        inputs.push(format!(
            "tls {} ({} until {})",
            tls.listen.value,
            tls.cert.names.join(" "),
            humantime::format_rfc3339_seconds(tls.cert.not_after)
        ));
    }
    let mut keep = vec![format!("into {}", log.dir.value.display())];
    if let Some(age) = log.retention {
        keep.push(format!("kept {}", humantime::format_duration(age)));
    }
    if let Some(size) = log.max_size {
        keep.push(format!("up to {}", bytesize::ByteSize::b(size).display().iec()));
    }
    let _ = writeln!(
        out,
        "logs     syslog on {}, {}",
        inputs.join(", "),
        keep.join(", ")
    );
    let limit = match log.rate_limit {
        Some(rate) => format!("{rate} messages/s per sender"),
        None => "no rate limit".to_owned(),
    };
    let _ = writeln!(
        out,
        "         messages up to {}, {limit}, fsync every {}",
        bytesize::ByteSize::b(log.max_message as u64).display().iec(),
        humantime::format_duration(log.fsync)
    );
    for (address, name) in &log.hosts {
        let _ = writeln!(out, "         {} is {}", address.value, name.value);
    }
}

fn backup_server(out: &mut String, backup: &BackupServer) {
    let scheme = if backup.tls.is_some() { "https" } else { "http" };
    let mut what = vec![format!("into {}", backup.dir.value.display())];
    what.push(match &backup.htpasswd {
        Some(path) => format!("users from {}", path.value.display()),
        None => "no authentication".to_owned(),
    });
    if backup.private_repos {
        what.push("private repositories".into());
    }
    if backup.append_only {
        what.push("append-only".into());
    }
    if let Some(size) = backup.max_size {
        what.push(format!("up to {}", bytesize::ByteSize::b(size).display().iec()));
    }
    let _ = writeln!(
        out,
        "backups  restic REST on {scheme}://{}/, {}",
        backup.listen.value,
        what.join(", ")
    );
    for user in &backup.users {
        let mut rules = Vec::new();
        if let Some(append_only) = user.append_only {
            rules.push(if append_only { "append-only" } else { "may delete" }.to_owned());
        }
        if let Some(quota) = user.quota {
            rules.push(format!("quota {}", bytesize::ByteSize::b(quota).display().iec()));
        }
        let _ = writeln!(out, "         user {}: {}", user.name.value, rules.join(", "));
    }
}

fn backend_list(backends: &[Backend], balance: Balance) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| {
            let name = b
                .name
                .as_ref()
                .map(|n| format!("{} ", n.value))
                .unwrap_or_default();
            if balance.honours_weights() && b.weight != 1 {
                format!("{name}{} (weight {})", b.addr.value, b.weight)
            } else {
                format!("{name}{}", b.addr.value)
            }
        })
        .collect();
    list.join(", ")
}

fn on_off(flag: bool) -> &'static str {
    if flag { "on" } else { "off" }
}
