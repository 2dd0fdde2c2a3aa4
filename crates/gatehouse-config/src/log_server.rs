//! `[log_server]`: where syslog is received, where it is kept, for how long,
//! and what each sender is called.
//!
//! Sender names become directory names under `dir` and the prefix of every
//! line `gatehouse logs` prints, so they are kept to letters, digits, '.', '-'
//! and '_'.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use toml::Spanned;

use crate::diagnostic::Diagnostic;
use crate::model::{Admin, Located, LogServer, LogTls, Mode, Service};
use crate::raw;
use crate::validate::Validator;

/// Defaults a user of rsyslog or syslog-ng would not be surprised by: 64 KiB
/// covers any access log line, 1 s of fsync delay is what a power loss may
/// take, and one segment an hour keeps retention fine-grained.
const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
const DEFAULT_RATE_LIMIT: u32 = 50_000;
const DEFAULT_FSYNC: Duration = Duration::from_secs(1);
const DEFAULT_SEGMENT_SIZE: u64 = 128 * 1024 * 1024;
const DEFAULT_SEGMENT_AGE: Duration = Duration::from_secs(3600);
/// syslog over TCP has no message size limit, but a buffer per connection of
/// this much is where a sender's mistake should stop costing memory.
const MAX_MAX_MESSAGE: u64 = 16 * 1024 * 1024;

impl Validator {
    pub(crate) fn log_server(&mut self, raw: Spanned<raw::LogServer>) -> Option<LogServer> {
        let section = raw.span();
        let raw = raw.into_inner();
        let any_listener = raw.udp.is_some() || raw.tcp.is_some() || raw.tls.is_some();
        let udp = raw.udp.and_then(|a| self.log_listen(a, "udp", "0.0.0.0:514"));
        let tcp = raw.tcp.and_then(|a| self.log_listen(a, "tcp", "0.0.0.0:601"));
        let tls = raw.tls.and_then(|tls| {
            let tls = tls.into_inner();
            let listen = self.log_listen(tls.listen, "tls listen", "0.0.0.0:6514");
            let cert = self.certificate(tls.cert, tls.key);
            Some(LogTls {
                listen: listen?,
                cert: cert?,
            })
        });
        let mut ok = true;
        if !any_listener {
            self.error(
                Diagnostic::new("log_server has no listener")
                    .at(section.start..section.start + "[log_server]".len())
                    .help("give at least one of udp = \"0.0.0.0:514\", tcp = \"0.0.0.0:601\" or tls = { listen = \"0.0.0.0:6514\", cert = \"...\", key = \"...\" }"),
            );
            ok = false;
        }
        if let (Some(tcp), Some(tls)) = (&tcp, &tls)
            && tcp.port() == tls.listen.port()
        {
            self.error(
                Diagnostic::new(format!(
                    "log_server tcp and tls both listen on port {}",
                    tcp.port()
                ))
                .at(tls.listen.span.clone())
                .related(tcp.span.clone(), "tcp listens here")
                .help("syslog over TLS has its own port, 6514 by convention"),
            );
            ok = false;
        }
        let dir = self.log_dir(raw.dir);
        let retention = raw.retention.and_then(|d| self.duration(d, "retention"));
        let max_size = raw.max_size.and_then(|s| self.size(s, "max_size"));
        let hosts = raw.hosts.map(|h| self.log_hosts(h)).unwrap_or_default();
        let max_message = match raw.max_message {
            Some(size) => {
                let span = size.span();
                let bytes = self.size(size, "max_message")?;
                if !(480..=MAX_MAX_MESSAGE).contains(&bytes) {
                    self.error(
                        Diagnostic::new(format!("max_message {bytes} bytes is out of range"))
                            .at(span)
                            .help(
                                "give between 480 bytes (RFC 3164's minimum) and 16MiB; 64KiB is the default",
                            ),
                    );
                    return None;
                }
                bytes as usize
            }
            None => DEFAULT_MAX_MESSAGE,
        };
        let rate_limit = match raw.rate_limit {
            Some(rate) => {
                match u32::try_from(*rate.get_ref()) {
                    Ok(rate) => NonZeroU32::new(rate),
                    Err(_) => {
                        self.error(
                        Diagnostic::new(format!("rate_limit {} is not a rate", rate.get_ref()))
                            .at(rate.span())
                            .help("give messages per second per sender, e.g. 50000, or 0 to turn the limit off"),
                    );
                        return None;
                    }
                }
            }
            None => NonZeroU32::new(DEFAULT_RATE_LIMIT),
        };
        let fsync = match raw.fsync {
            Some(d) => self.duration(d, "fsync")?,
            None => DEFAULT_FSYNC,
        };
        let segment_size = match raw.segment_size {
            Some(s) => self.size(s, "segment_size")?,
            None => DEFAULT_SEGMENT_SIZE,
        };
        let segment_age = match raw.segment_age {
            Some(d) => self.duration(d, "segment_age")?,
            None => DEFAULT_SEGMENT_AGE,
        };
        if !ok {
            return None;
        }
        Some(LogServer {
            udp,
            tcp,
            tls,
            dir: dir?,
            retention,
            max_size,
            hosts,
            max_message,
            rate_limit,
            fsync,
            segment_size,
            segment_age,
        })
    }

    fn log_listen(&mut self, raw: Spanned<String>, key: &str, example: &str) -> Option<Located<SocketAddr>> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => Some(Located::new(addr, raw.span())),
            _ => {
                self.error(
                    Diagnostic::new(format!("log_server {key} \"{}\" is not an ADDR:PORT", raw.get_ref()))
                        .at(raw.span())
                        .help(format!(
                            "write an address and a port, e.g. \"{example}\" (every address) or one of this machine's"
                        )),
                );
                None
            }
        }
    }

    fn log_dir(&mut self, raw: Spanned<String>) -> Option<Located<std::path::PathBuf>> {
        if raw.get_ref().trim().is_empty() {
            self.error(
                Diagnostic::new("log_server dir is empty")
                    .at(raw.span())
                    .help("give the directory logs are kept in, e.g. \"/var/lib/gatehouse/logs\""),
            );
            return None;
        }
        Some(Located::new(self.path(raw.get_ref()), raw.span()))
    }

    fn log_hosts(
        &mut self,
        raw: Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
    ) -> Vec<(Located<IpAddr>, Located<String>)> {
        let mut hosts = Vec::new();
        for (address, name) in raw.into_inner() {
            let ip = match address.get_ref().parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    self.error(
                        Diagnostic::new(format!(
                            "hosts key \"{}\" is not an IP address",
                            address.get_ref()
                        ))
                        .at(address.span())
                        .help(
                            "name senders by the address their logs come from, e.g. \"10.0.0.11\" = \"web1\"",
                        ),
                    );
                    continue;
                }
            };
            let text = name.get_ref();
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
            if text.is_empty() || text.len() > 64 || !text.chars().all(allowed) || text.starts_with('.') {
                self.error(
                    Diagnostic::new(format!("\"{text}\" is not a valid host name for logs"))
                        .at(name.span())
                        .help("use 1 to 64 letters, digits, '.', '-' and '_', not starting with '.', e.g. \"web1\" (it names a directory and prefixes every line)"),
                );
                continue;
            }
            hosts.push((
                Located::new(ip, address.span()),
                Located::new(name.get_ref().clone(), name.span()),
            ));
        }
        hosts
    }

    /// The log server's TCP ports against the proxy's and the admin
    /// listener's: binding would fail at serve time; say so at check time.
    pub(crate) fn log_ports_free(&mut self, log: &LogServer, services: &[Service], admin: Option<&Admin>) {
        let stream_listeners = log.tcp.iter().chain(log.tls.as_ref().map(|t| &t.listen));
        for listen in stream_listeners {
            let port = listen.port();
            if let Some(service) = services
                .iter()
                .find(|s| s.mode != Mode::Nat && s.bind_addr().port() == port)
            {
                self.error(
                    Diagnostic::new(format!(
                        "log_server listens on port {port}, as service \"{}\" does",
                        service.name.value
                    ))
                    .at(listen.span.clone())
                    .related(service.listen.span.clone(), "service listens here")
                    .help("give the log server its own port: 601 for syslog over TCP, 6514 over TLS"),
                );
            }
            if let Some(admin) = admin.filter(|a| a.listen.port() == port) {
                self.error(
                    Diagnostic::new(format!("log_server listens on port {port}, as admin does"))
                        .at(listen.span.clone())
                        .related(admin.listen.span.clone(), "admin listens here")
                        .help("give the log server its own port: 601 for syslog over TCP, 6514 over TLS"),
                );
            }
        }
    }
}
