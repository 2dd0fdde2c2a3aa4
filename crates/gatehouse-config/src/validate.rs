//! From the file as written (`raw`) to a `Farm` that holds every rule of the
//! config reference. All problems are collected, not just the first, so one run
//! of `gatehouse check` shows everything to fix.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics, Source};
use crate::model::{
    AccessLog, Admin, Backend, Balance, Check, Farm, Gateway, Health, Listen, Located, Mode, ProxyOptions,
    Service,
};
use crate::raw;
use crate::routes::UpstreamKeys;

/// Weights are small integers, as in HAProxy (which allows 0..=256; 0 would mean
/// "never", which is what removing the backend says more clearly).
const MAX_WEIGHT: i64 = 256;
/// Names become iptables chain names ("GH-" + name), which may be 28 characters.
const MAX_NAME_LEN: usize = 24;
/// How long `serve` lets in-flight requests finish after SIGTERM, by default.
const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

pub fn farm(source: Arc<Source>, file: raw::File) -> Result<Farm, Diagnostics> {
    let mut v = Validator {
        base: std::path::Path::new(&source.name)
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default(),
        ..Validator::default()
    };
    let gateway = file.gateway.map(|g| v.gateway(g));
    let services: Vec<Service> = file
        .service
        .into_iter()
        .filter_map(|s| v.service(s, gateway.as_ref()))
        .collect();
    v.across_services(&services, gateway.as_ref());
    let admin = file.admin.and_then(|a| v.admin(a));
    let drain = file
        .serve
        .and_then(|s| s.into_inner().drain)
        .and_then(|d| v.duration(d, "drain"))
        .unwrap_or(DEFAULT_DRAIN);
    let log_server = file.log_server.and_then(|l| v.log_server(l));
    if let Some(log_server) = &log_server {
        v.log_ports_free(log_server, &services, admin.as_ref());
    }
    let backup_server = file.backup_server.and_then(|b| v.backup_server(b));
    if let Some(backup) = &backup_server {
        v.backup_port_free(backup, &services, admin.as_ref(), log_server.as_ref());
    }
    if let Some(admin) = &admin
        && let Some(clash) = services
            .iter()
            .find(|s| s.mode != Mode::Nat && s.bind_addr().port() == admin.listen.port())
    {
        v.error(
            Diagnostic::new(format!(
                "admin listens on port {}, as service \"{}\" does",
                admin.listen.port(),
                clash.name.value
            ))
            .at(admin.listen.span.clone())
            .related(clash.listen.span.clone(), "service listens here")
            .help("give the admin listener its own port, e.g. \"127.0.0.1:9900\""),
        );
    }
    if v.errors.is_empty() {
        Ok(Farm {
            source,
            gateway,
            services,
            admin,
            drain,
            log_server,
            backup_server,
        })
    } else {
        v.errors.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
        Err(Diagnostics::new(source, v.errors))
    }
}

/// The service keys only the proxy reads, taken together so a nat service
/// can be told about each one it sets.
struct ProxyKeys {
    access_log: Option<Spanned<String>>,
    timeouts: Option<Spanned<raw::Timeouts>>,
    max_connections: Option<Spanned<i64>>,
    max_header: Option<Spanned<String>>,
    max_body: Option<Spanned<String>>,
}

#[derive(Default)]
pub(crate) struct Validator {
    pub(crate) errors: Vec<Diagnostic>,
    /// Relative paths in the file (certificates, keys, CAs) are relative to
    /// the file's own directory, as nginx's are to its prefix.
    pub(crate) base: PathBuf,
}

impl Validator {
    pub(crate) fn error(&mut self, diagnostic: Diagnostic) {
        self.errors.push(diagnostic);
    }

    fn gateway(&mut self, raw: Spanned<raw::Gateway>) -> Gateway {
        let raw = raw.into_inner();
        let wan = self.interface(raw.wan, "wan");
        let lan = self.interface(raw.lan, "lan");
        if !wan.is_empty() && wan.value == lan.value {
            self.error(
                Diagnostic::new(format!("wan and lan are both \"{}\"", lan.value))
                    .at(lan.span.clone())
                    .label("same interface as wan")
                    .related(wan.span.clone(), "wan")
                    .help("the gateway needs two interfaces: one facing the internet, one facing the farm"),
            );
        }
        let lan_subnet = raw.lan_subnet.and_then(|s| self.lan_subnet(s));
        let admin = raw.admin.into_iter().filter_map(|a| self.network(a)).collect();
        let ssh_port = match raw.ssh_port {
            None => 22,
            Some(port) => self.port(port.span(), *port.get_ref()).unwrap_or(22),
        };
        let mut trusted = Vec::new();
        for name in raw.trusted {
            let name = self.interface(name, "trusted");
            if name.value == wan.value || name.value == lan.value {
                self.error(
                    Diagnostic::new(format!("\"{}\" is the gateway's wan or lan and cannot be trusted", name.value))
                        .at(name.span.clone())
                        .help("trusted lists other interfaces (docker0, a VPN) whose traffic gatehouse leaves alone"),
                );
            }
            trusted.push(name);
        }
        Gateway {
            wan,
            lan,
            lan_subnet,
            masquerade: raw.masquerade.unwrap_or(true),
            admin,
            ssh_port,
            ping: raw.ping.unwrap_or(true),
            trusted,
        }
    }

    /// Linux interface names: 1 to 15 bytes without '/', ':' or whitespace. We
    /// are stricter (no quotes or other punctuation) because the name is pasted
    /// into nftables and iptables text.
    fn interface(&mut self, raw: Spanned<String>, key: &str) -> Located<String> {
        let span = raw.span();
        let name = raw.into_inner();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-@+".contains(c);
        if name.is_empty() || name.len() > 15 || !name.chars().all(allowed) {
            self.error(
                Diagnostic::new(format!("\"{name}\" is not a network interface name"))
                    .at(span.clone())
                    .label(format!("{key} must name an interface"))
                    .help("an interface name is 1 to 15 letters, digits, '.', '_', '-', '@' or '+', as `ip link` shows it"),
            );
        }
        Located::new(name, span)
    }

    fn lan_subnet(&mut self, raw: Spanned<String>) -> Option<Located<Ipv4Net>> {
        let span = raw.span();
        match raw.get_ref().parse::<Ipv4Net>() {
            Ok(net) => Some(Located::new(net.trunc(), span)),
            Err(_) => {
                self.error(
                    Diagnostic::new(format!("\"{}\" is not an IPv4 network", raw.get_ref()))
                        .at(span)
                        .help("write the LAN's network with its prefix length, e.g. \"10.0.0.0/24\""),
                );
                None
            }
        }
    }

    pub(crate) fn network(&mut self, raw: Spanned<String>) -> Option<Located<IpNet>> {
        let span = raw.span();
        let text = raw.get_ref();
        let parsed = text
            .parse::<IpNet>()
            .map(|net| net.trunc())
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => Some(Located::new(net, span)),
            Err(_) => {
                self.error(
                    Diagnostic::new(format!("\"{text}\" is not an address or network"))
                        .at(span)
                        .help("write an address (\"192.168.2.10\") or a network (\"192.168.2.0/24\", \"2001:db8::/32\")"),
                );
                None
            }
        }
    }

    pub(crate) fn port(&mut self, span: Range<usize>, value: i64) -> Option<u16> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                self.error(
                    Diagnostic::new(format!("{value} is not a TCP port"))
                        .at(span)
                        .help("a port is a number from 1 to 65535"),
                );
                None
            }
        }
    }

    fn service(&mut self, raw: Spanned<raw::Service>, gateway: Option<&Gateway>) -> Option<Service> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let errors_before = self.errors.len();

        let name = self.service_name(raw.name);
        let listen = self.listen(raw.listen);
        let mode = self.mode(raw.mode, table_span.clone(), gateway);
        let balance = self.balance(raw.balance, mode);
        let has_routes = !raw.route.is_empty();
        let (backends, backends_span) = match raw.backends {
            Some(list) => {
                let span = list.span();
                (
                    self.backends(list.into_inner(), mode, balance, gateway),
                    Some(span),
                )
            }
            None => (Vec::new(), None),
        };
        let none_given = backends_span.is_none() && !has_routes;
        if (backends.is_empty() && !has_routes && self.errors.len() == errors_before) || none_given {
            self.error(
                Diagnostic::new("a service needs at least one backend")
                    .at(backends_span.unwrap_or(table_span.clone()))
                    .help("list the servers to balance across, e.g. backends = [\"10.0.0.11:80\", \"10.0.0.12:80\"], or add [[service.route]] tables"),
            );
        }
        if let (Some(listen), Some(Mode::Nat)) = (&listen, mode)
            && let Some(IpAddr::V6(_)) = listen.addr
        {
            self.error(
                Diagnostic::new("a nat service listens on an IPv4 address")
                    .at(listen.span.clone())
                    .help("give one of the gateway's IPv4 WAN addresses, or only the port"),
            );
        }
        let health = self.health_or_default(raw.health);
        let proxy = self.proxy_options(
            ProxyKeys {
                access_log: raw.access_log,
                timeouts: raw.timeouts,
                max_connections: raw.max_connections,
                max_header: raw.max_header,
                max_body: raw.max_body,
            },
            mode,
        );
        let upstream = self.upstream_options(
            UpstreamKeys {
                backend_tls: raw.backend_tls,
                send_proxy: raw.send_proxy,
                backend_protocol: raw.backend_protocol,
            },
            mode,
        );
        let name_text = name.value.clone();
        let routes = self.routes(raw.route, &name_text, mode, gateway);
        // Whether tls is written, loaded or not: a certificate that fails to
        // load is one error, not one more for every key that needs tls.
        let tls_given = raw.tls.is_some();
        let tls = raw.tls.and_then(|tls| self.listener_tls(tls, mode));
        let redirect_http = raw
            .redirect_http
            .and_then(|r| self.redirect_http(r, mode, tls_given));
        let hsts = raw.hsts.and_then(|h| {
            let span = h.span();
            let max_age = self.duration(h, "hsts")?;
            if !tls_given {
                self.error(
                    Diagnostic::new("hsts needs tls on the service")
                        .at(span)
                        .help("browsers ignore Strict-Transport-Security over plain HTTP: add tls = [...] or remove hsts"),
                );
            }
            Some(max_age)
        });
        let accept_proxy = raw
            .accept_proxy
            .map(|list| self.accept_proxy(list, mode))
            .unwrap_or_default();
        if self.errors.len() != errors_before {
            return None;
        }
        Some(Service {
            name,
            listen: listen?,
            mode: mode?,
            balance: balance?,
            backends,
            health,
            proxy,
            upstream,
            routes,
            tls,
            redirect_http,
            hsts,
            accept_proxy,
        })
    }

    /// A list of backends, each once by address and by name.
    pub(crate) fn backends(
        &mut self,
        list: Vec<Spanned<raw::Backend>>,
        mode: Option<Mode>,
        balance: Option<Balance>,
        gateway: Option<&Gateway>,
    ) -> Vec<Backend> {
        let mut backends: Vec<Backend> = Vec::new();
        for entry in list {
            if let Some(backend) = self.backend(entry, mode, balance, gateway) {
                if let (Some(name), Some(first)) = (
                    &backend.name,
                    backends.iter().find(|b| {
                        b.name.as_ref().map(|n| &n.value) == backend.name.as_ref().map(|n| &n.value)
                    }),
                ) {
                    self.error(
                        Diagnostic::new(format!("backend name \"{}\" is used twice", name.value))
                            .at(name.span.clone())
                            .related(
                                first
                                    .name
                                    .as_ref()
                                    .map_or(first.addr.span.clone(), |n| n.span.clone()),
                                "first used here",
                            )
                            .help("give every backend of a service its own name"),
                    );
                    continue;
                }
                if let Some(first) = backends.iter().find(|b| b.addr.value == backend.addr.value) {
                    self.error(
                        Diagnostic::new(format!("backend {} is listed twice", backend.addr.value))
                            .at(backend.addr.span.clone())
                            .related(first.addr.span.clone(), "first listed here")
                            .help("list each backend once; give it a weight to send it more traffic"),
                    );
                    continue;
                }
                backends.push(backend);
            }
        }
        backends
    }

    /// A `health` table, or the defaults when there is none (or it is
    /// wrong: its errors are reported and validation fails anyway).
    pub(crate) fn health_or_default(&mut self, raw: Option<Spanned<raw::Health>>) -> Health {
        raw.and_then(|raw| self.health(raw)).unwrap_or_default()
    }

    fn health(&mut self, raw: Spanned<raw::Health>) -> Option<Health> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let defaults = Health::default();
        let kind = raw.check.as_ref().map(|c| (c.get_ref().as_str(), c.span()));
        let check = match kind {
            None | Some(("tcp", _)) => {
                for (key, span) in [
                    ("path", raw.path.as_ref().map(|p| p.span())),
                    ("expect", raw.expect.as_ref().map(|e| e.span())),
                ] {
                    if let Some(span) = span {
                        self.error(
                            Diagnostic::new(format!("{key} applies to http checks"))
                                .at(span)
                                .help("add check = \"http\" to the health table, or remove the key"),
                        );
                    }
                }
                Check::Tcp
            }
            Some(("http", _)) => {
                let path = match raw.path {
                    None => "/".to_owned(),
                    Some(path)
                        if path.get_ref().starts_with('/')
                            && !path.get_ref().chars().any(char::is_whitespace) =>
                    {
                        path.into_inner()
                    }
                    Some(path) => {
                        self.error(
                            Diagnostic::new(format!("health path \"{}\" is not a URL path", path.get_ref()))
                                .at(path.span())
                                .help(
                                    "write the path the check requests, starting with '/', e.g. \"/healthz\"",
                                ),
                        );
                        return None;
                    }
                };
                let expect = match raw.expect {
                    None => 200,
                    Some(code) if (100..=599).contains(code.get_ref()) => *code.get_ref() as u16,
                    Some(code) => {
                        self.error(
                            Diagnostic::new(format!("{} is not an HTTP status", code.get_ref()))
                                .at(code.span())
                                .help("expect is the status a healthy backend answers, e.g. 200"),
                        );
                        return None;
                    }
                };
                Check::Http { path, expect }
            }
            Some((other, span)) => {
                self.error(
                    Diagnostic::new(format!("unknown health check \"{other}\""))
                        .at(span)
                        .help("use check = \"tcp\" (the backend accepts connections) or \"http\" (GET path answers expect)"),
                );
                return None;
            }
        };
        let interval = raw
            .interval
            .map_or(Some(defaults.interval), |d| self.duration(d, "interval"))?;
        let timeout_span = raw.timeout.as_ref().map(|t| t.span());
        let timeout = raw
            .timeout
            .map_or(Some(defaults.timeout), |d| self.duration(d, "timeout"))?;
        let rise = raw.rise.map_or(Some(defaults.rise), |r| self.count(r, "rise"))?;
        let fall = raw.fall.map_or(Some(defaults.fall), |f| self.count(f, "fall"))?;
        if timeout > interval {
            self.error(
                Diagnostic::new(format!(
                    "health timeout {} is longer than the interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ))
                .at(timeout_span.unwrap_or(table_span))
                .help("a check must end before the next one starts: make timeout at most interval"),
            );
            return None;
        }
        Some(Health {
            check,
            interval,
            timeout,
            rise,
            fall,
        })
    }

    fn count(&mut self, raw: Spanned<i64>, key: &str) -> Option<u32> {
        match *raw.get_ref() {
            n @ 1..=100 => Some(n as u32),
            n => {
                self.error(
                    Diagnostic::new(format!("{key} = {n} is out of range"))
                        .at(raw.span())
                        .help(format!("{key} counts consecutive checks: from 1 to 100")),
                );
                None
            }
        }
    }

    /// "2s", "500ms", "1m 30s" (humantime's syntax); zero is refused because
    /// every duration here is a period or a limit.
    pub(crate) fn duration(&mut self, raw: Spanned<String>, key: &str) -> Option<Duration> {
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                self.error(
                    Diagnostic::new(format!("{key} \"{}\" is not a duration", raw.get_ref()))
                        .at(raw.span())
                        .help("write a number and a unit, e.g. \"500ms\", \"2s\", \"1m\""),
                );
                None
            }
        }
    }

    /// "64KiB", "10MB", "1GiB" or a byte count.
    pub(crate) fn size(&mut self, raw: Spanned<String>, key: &str) -> Option<u64> {
        match raw.get_ref().trim().parse::<bytesize::ByteSize>() {
            Ok(size) if size.as_u64() > 0 => Some(size.as_u64()),
            _ => {
                self.error(
                    Diagnostic::new(format!("{key} \"{}\" is not a size", raw.get_ref()))
                        .at(raw.span())
                        .help("write a number and a unit, e.g. \"16KiB\", \"10MiB\", \"1GB\""),
                );
                None
            }
        }
    }

    /// A key of the userspace proxy, given on a nat service.
    pub(crate) fn proxy_only(&mut self, key: &str, span: Range<usize>) {
        self.error(
            Diagnostic::new(format!("{key} applies to the userspace proxy, not to nat services"))
                .at(span)
                .help("the kernel forwards nat connections untouched; use mode = \"http\" or \"tcp\" for this, or remove the key"),
        );
    }

    fn proxy_options(&mut self, raw: ProxyKeys, mode: Option<Mode>) -> ProxyOptions {
        let mut options = ProxyOptions::default();
        if mode == Some(Mode::Nat) {
            let spans = [
                ("access_log", raw.access_log.as_ref().map(|v| v.span())),
                ("timeouts", raw.timeouts.as_ref().map(|v| v.span())),
                ("max_connections", raw.max_connections.as_ref().map(|v| v.span())),
                ("max_header", raw.max_header.as_ref().map(|v| v.span())),
                ("max_body", raw.max_body.as_ref().map(|v| v.span())),
            ];
            for (key, span) in spans {
                if let Some(span) = span {
                    self.proxy_only(key, span);
                }
            }
            return options;
        }
        if let Some(log) = raw.access_log {
            options.access_log = self.access_log(log);
        }
        if let Some(t) = raw.timeouts {
            let t = t.into_inner();
            let mut set = |value: Option<Spanned<String>>, key: &str, slot: &mut Duration| {
                if let Some(d) = value.and_then(|v| self.duration(v, key)) {
                    *slot = d;
                }
            };
            set(t.connect, "connect", &mut options.timeouts.connect);
            set(t.header, "header", &mut options.timeouts.header);
            set(t.idle, "idle", &mut options.timeouts.idle);
            set(t.request, "request", &mut options.timeouts.request);
        }
        if let Some(max) = raw.max_connections {
            match u32::try_from(*max.get_ref()) {
                Ok(n) if n > 0 => options.max_connections = n,
                _ => self.error(
                    Diagnostic::new(format!("max_connections = {} is out of range", max.get_ref()))
                        .at(max.span())
                        .help("give the number of client connections to serve at once, e.g. 10000"),
                ),
            }
        }
        if let Some(raw) = raw.max_header {
            let span = raw.span();
            if let Some(size) = self.size(raw, "max_header") {
                if (8192..=1 << 20).contains(&size) {
                    options.max_header = size as usize;
                } else {
                    self.error(
                        Diagnostic::new("max_header must be from 8KiB to 1MiB")
                            .at(span)
                            .help("request heads are small; 64KiB (the default) fits every real browser"),
                    );
                }
            }
        }
        if let Some(raw) = raw.max_body {
            options.max_body = self.size(raw, "max_body");
        }
        options
    }

    pub(crate) fn access_log(&mut self, raw: Spanned<String>) -> Option<AccessLog> {
        let text = raw.get_ref().as_str();
        if text == "stdout" {
            return Some(AccessLog::Stdout);
        }
        if let Some(target) = text.strip_prefix("syslog://") {
            let valid = target
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
            if valid {
                return Some(AccessLog::Syslog(target.to_owned()));
            }
            self.error(
                Diagnostic::new(format!("access_log \"{text}\" has no HOST:PORT"))
                    .at(raw.span())
                    .help("write syslog://HOST:PORT, e.g. \"syslog://10.0.0.2:514\""),
            );
            return None;
        }
        if text.starts_with('/') {
            return Some(AccessLog::File(PathBuf::from(text)));
        }
        self.error(
            Diagnostic::new(format!("access_log \"{text}\" is not a file, syslog or stdout"))
                .at(raw.span())
                .help("write an absolute path (\"/var/log/gatehouse/app.log\"), \"syslog://HOST:PORT\" or \"stdout\""),
        );
        None
    }

    fn admin(&mut self, raw: Spanned<raw::Admin>) -> Option<Admin> {
        let listen = raw.into_inner().listen;
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => Some(Admin {
                listen: Located::new(addr, listen.span()),
            }),
            _ => {
                self.error(
                    Diagnostic::new(format!("admin listen \"{}\" is not an ADDR:PORT", listen.get_ref()))
                        .at(listen.span())
                        .help("the admin listener needs an address and port, e.g. \"127.0.0.1:9900\" (keep it off the internet)"),
                );
                None
            }
        }
    }

    fn service_name(&mut self, raw: Spanned<String>) -> Located<String> {
        let span = raw.span();
        let name = raw.into_inner();
        let mut chars = name.chars();
        let starts_well = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !starts_well || !rest_ok || name.len() > MAX_NAME_LEN {
            self.error(
                Diagnostic::new(format!("\"{name}\" is not a valid service name"))
                    .at(span.clone())
                    .help(format!(
                        "a service name is 1 to {MAX_NAME_LEN} lowercase letters, digits and '-', \
                         starting with a letter or digit, e.g. \"web\" or \"shop-api\""
                    )),
            );
        }
        Located::new(name, span)
    }

    pub(crate) fn listen(&mut self, raw: Spanned<toml::Value>) -> Option<Located<Listen>> {
        let span = raw.span();
        let help = "write \"PORT\" (every WAN address) or \"ADDR:PORT\" (one of the gateway's WAN addresses), e.g. \"80\" or \"198.51.100.1:80\"";
        match raw.get_ref() {
            toml::Value::Integer(port) => {
                let port = self.port(span.clone(), *port)?;
                Some(Located::new(Listen { addr: None, port }, span))
            }
            toml::Value::String(text) => {
                if let Ok(port) = text.parse::<i64>() {
                    let port = self.port(span.clone(), port)?;
                    return Some(Located::new(Listen { addr: None, port }, span));
                }
                match text.parse::<SocketAddr>() {
                    Ok(addr) if addr.port() != 0 => Some(Located::new(
                        Listen {
                            addr: Some(addr.ip()),
                            port: addr.port(),
                        },
                        span,
                    )),
                    _ => {
                        let message = if text.parse::<IpAddr>().is_ok() {
                            format!("listen \"{text}\" has no port")
                        } else {
                            format!("listen \"{text}\" is not \"PORT\" or \"ADDR:PORT\"")
                        };
                        self.error(Diagnostic::new(message).at(span).help(help));
                        None
                    }
                }
            }
            other => {
                self.error(
                    Diagnostic::new(format!("listen must be a string, not {}", other.type_str()))
                        .at(span)
                        .help(help),
                );
                None
            }
        }
    }

    fn mode(
        &mut self,
        raw: Option<Spanned<String>>,
        table_span: Range<usize>,
        gateway: Option<&Gateway>,
    ) -> Option<Mode> {
        let choices = "mode = \"nat\" (kernel DNAT on the gateway), \"http\" or \"tcp\" (userspace proxy)";
        let Some(raw) = raw else {
            self.error(
                Diagnostic::new("service has no mode")
                    .at(table_span)
                    .help(format!("add {choices}")),
            );
            return None;
        };
        let Some(&(_, mode)) = Mode::ALL.iter().find(|(name, _)| *name == raw.get_ref()) else {
            self.error(
                Diagnostic::new(format!("unknown mode \"{}\"", raw.get_ref()))
                    .at(raw.span())
                    .help(format!("use {choices}")),
            );
            return None;
        };
        if mode == Mode::Nat && gateway.is_none() {
            self.error(
                Diagnostic::new("mode \"nat\" needs a [gateway] section")
                    .at(raw.span())
                    .help("nat services are DNAT rules on the gateway: add [gateway] with wan and lan, or use mode = \"tcp\" to proxy in userspace"),
            );
            return None;
        }
        Some(mode)
    }

    pub(crate) fn balance(&mut self, raw: Option<Spanned<String>>, mode: Option<Mode>) -> Option<Balance> {
        let Some(raw) = raw else {
            return Some(Balance::RoundRobin);
        };
        match Balance::ALL.iter().find(|(name, _)| *name == raw.get_ref()) {
            Some(&(_, balance)) => {
                let refusal = match mode {
                    Some(Mode::Nat) if !balance.in_kernel() => Some((
                        format!("balance = \"{}\" needs the userspace proxy", balance.as_str()),
                        "the kernel sees packets, not connections in flight or cookies: use mode = \"http\" (or \"tcp\"), \
                         or a kernel method (round-robin, weighted, random, source-hash, maglev)",
                    )),
                    Some(Mode::Http | Mode::Tcp) if !balance.in_proxy() => Some((
                        format!("balance = \"{}\" is for nat services", balance.as_str()),
                        "the proxy's source-hash is already consistent (removing a backend moves only its clients): use it",
                    )),
                    Some(Mode::Tcp) if balance == Balance::Cookie => Some((
                        "balance = \"cookie\" needs mode = \"http\"".to_owned(),
                        "a tcp service cannot see cookies: use source-hash to keep a client on one backend",
                    )),
                    _ => None,
                };
                if let Some((message, help)) = refusal {
                    self.error(Diagnostic::new(message).at(raw.span()).help(help));
                    return None;
                }
                Some(balance)
            }
            None => {
                let names: Vec<String> = Balance::ALL.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.error(
                    Diagnostic::new(format!("unknown balance method \"{}\"", raw.get_ref()))
                        .at(raw.span())
                        .help(format!("use one of {}", names.join(", "))),
                );
                None
            }
        }
    }

    fn backend(
        &mut self,
        raw: Spanned<raw::Backend>,
        mode: Option<Mode>,
        balance: Option<Balance>,
        gateway: Option<&Gateway>,
    ) -> Option<Backend> {
        let element_span = raw.span();
        let raw = raw.into_inner();
        let span = raw.addr_span.clone().unwrap_or(element_span);
        let text = raw.addr.as_str();
        let addr = match text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => addr,
            _ => {
                let help = if let Ok(ip) = text.parse::<IpAddr>() {
                    format!(
                        "add the port the server listens on, e.g. \"{}\"",
                        SocketAddr::new(ip, 80)
                    )
                } else {
                    "write the server's address and port, e.g. \"10.0.0.11:80\"".to_owned()
                };
                self.error(
                    Diagnostic::new(format!("backend \"{text}\" is not an ADDR:PORT"))
                        .at(span)
                        .help(help),
                );
                return None;
            }
        };
        if mode == Some(Mode::Nat) && addr.is_ipv6() {
            self.error(
                Diagnostic::new(format!(
                    "backend {addr} is IPv6; nat services balance IPv4 backends"
                ))
                .at(span)
                .help("use the server's IPv4 address, or mode = \"tcp\" to proxy to IPv6 in userspace"),
            );
            return None;
        }
        if mode == Some(Mode::Nat)
            && let Some(g) = gateway
            && let Some(subnet) = &g.lan_subnet
            && !IpNet::V4(subnet.value).contains(&addr.ip())
        {
            self.error(
                Diagnostic::new(format!(
                    "backend {addr} is outside the LAN subnet {}",
                    subnet.value
                ))
                .at(span.clone())
                .related(subnet.span.clone(), "LAN subnet")
                .help(format!(
                    "nat backends must be on the LAN ({}): fix the address, or gateway.lan_subnet",
                    g.lan.value
                )),
            );
        }
        let weight = match raw.weight {
            None => 1,
            Some(weight) => {
                let value = *weight.get_ref();
                if !(1..=MAX_WEIGHT).contains(&value) {
                    self.error(
                        Diagnostic::new(format!("weight {value} is out of range"))
                            .at(weight.span())
                            .help(format!("a weight is from 1 to {MAX_WEIGHT}; to stop sending traffic to a backend, remove it")),
                    );
                    return None;
                }
                if let Some(balance) = balance
                    && !balance.honours_weights()
                {
                    self.error(
                        Diagnostic::new(format!("balance = \"{}\" ignores weights", balance.as_str()))
                            .at(weight.span())
                            .label("this weight would have no effect")
                            .help("use balance = \"weighted\" (or \"maglev\" or \"source-hash\"), or remove the weight"),
                    );
                    return None;
                }
                value as u32
            }
        };
        let name = raw.name.and_then(|name| self.backend_name(name));
        Some(Backend {
            addr: Located::new(addr, span),
            weight,
            name,
        })
    }

    /// Backend names go into cookies, metric labels and log lines, so they are
    /// kept to characters none of those need to escape.
    fn backend_name(&mut self, raw: Spanned<String>) -> Option<Located<String>> {
        let name = raw.get_ref();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if name.is_empty() || name.len() > 32 || !name.chars().all(allowed) {
            self.error(
                Diagnostic::new(format!("\"{name}\" is not a valid backend name"))
                    .at(raw.span())
                    .help("a backend name is 1 to 32 letters, digits, '.', '_' or '-', e.g. \"web1\""),
            );
            return None;
        }
        Some(Located::new(raw.get_ref().clone(), raw.span()))
    }

    fn across_services(&mut self, services: &[Service], gateway: Option<&Gateway>) {
        for (i, service) in services.iter().enumerate() {
            let earlier = &services[..i];
            if let Some(first) = earlier.iter().find(|s| s.name.value == service.name.value) {
                self.error(
                    Diagnostic::new(format!("service name \"{}\" is used twice", service.name.value))
                        .at(service.name.span.clone())
                        .related(first.name.span.clone(), "first used here")
                        .help("give every [[service]] its own name"),
                );
            }
            // Every listener of earlier services, and this one's main listener
            // for its redirect.
            let taken: Vec<(&Located<Listen>, &str)> = earlier
                .iter()
                .flat_map(|s| {
                    std::iter::once(&s.listen)
                        .chain(&s.redirect_http)
                        .map(|l| (l, s.name.as_str()))
                })
                .chain(std::iter::once((&service.listen, service.name.as_str())))
                .collect();
            for (k, mine) in std::iter::once(&service.listen)
                .chain(&service.redirect_http)
                .enumerate()
            {
                let others = if k == 0 {
                    &taken[..taken.len() - 1]
                } else {
                    &taken[..]
                };
                if let Some((first, owner)) = others.iter().find(|(l, _)| l.overlaps(mine)) {
                    self.error(
                        Diagnostic::new(format!(
                            "port {} is already used by service \"{owner}\"",
                            mine.port
                        ))
                        .at(mine.span.clone())
                        .related(first.span.clone(), "first used here")
                        .help("each service needs its own port (or its own WAN address with \"ADDR:PORT\")"),
                    );
                }
            }
            let Some(gateway) = gateway else { continue };
            for listen in std::iter::once(&service.listen).chain(&service.redirect_http) {
                if listen.port != gateway.ssh_port {
                    continue;
                }
                self.error(
                    Diagnostic::new(format!("port {} is the gateway's SSH port", gateway.ssh_port))
                        .at(listen.span.clone())
                        .help("choose another port for the service, or move SSH with gateway.ssh_port"),
                );
            }
        }
    }
}
