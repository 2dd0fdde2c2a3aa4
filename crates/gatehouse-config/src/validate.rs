//! From the file as written (`raw`) to a `Farm` that holds every rule of the
//! config reference. All problems are collected, not just the first, so one run
//! of `gatehouse check` shows everything to fix.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics, Source};
use crate::model::{Backend, Balance, Farm, Gateway, Listen, Located, Mode, Service};
use crate::raw;

/// Weights are small integers, as in HAProxy (which allows 0..=256; 0 would mean
/// "never", which is what removing the backend says more clearly).
const MAX_WEIGHT: i64 = 256;
/// Names become iptables chain names ("GH-" + name), which may be 28 characters.
const MAX_NAME_LEN: usize = 24;

pub fn farm(source: Arc<Source>, file: raw::File) -> Result<Farm, Diagnostics> {
    let mut v = Validator::default();
    let gateway = file.gateway.map(|g| v.gateway(g));
    let services: Vec<Service> = file
        .service
        .into_iter()
        .filter_map(|s| v.service(s, gateway.as_ref()))
        .collect();
    v.across_services(&services, gateway.as_ref());
    if v.errors.is_empty() {
        Ok(Farm {
            source,
            gateway,
            services,
        })
    } else {
        v.errors.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
        Err(Diagnostics::new(source, v.errors))
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<Diagnostic>,
}

impl Validator {
    fn error(&mut self, diagnostic: Diagnostic) {
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

    fn network(&mut self, raw: Spanned<String>) -> Option<Located<IpNet>> {
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

    fn port(&mut self, span: Range<usize>, value: i64) -> Option<u16> {
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
        let balance = self.balance(raw.balance);
        let backends_span = raw.backends.span();
        let mut backends: Vec<Backend> = Vec::new();
        for entry in raw.backends.into_inner() {
            if let Some(backend) = self.backend(entry, mode, balance, gateway) {
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
        if backends.is_empty() && self.errors.len() == errors_before {
            self.error(
                Diagnostic::new("a service needs at least one backend")
                    .at(backends_span)
                    .help("list the servers to balance across, e.g. backends = [\"10.0.0.11:80\", \"10.0.0.12:80\"]"),
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
        if self.errors.len() != errors_before {
            return None;
        }
        Some(Service {
            name,
            listen: listen?,
            mode: mode?,
            balance: balance?,
            backends,
        })
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

    fn listen(&mut self, raw: Spanned<toml::Value>) -> Option<Located<Listen>> {
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

    fn balance(&mut self, raw: Option<Spanned<String>>) -> Option<Balance> {
        let Some(raw) = raw else {
            return Some(Balance::RoundRobin);
        };
        match Balance::ALL.iter().find(|(name, _)| *name == raw.get_ref()) {
            Some(&(_, balance)) => Some(balance),
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
        Some(Backend {
            addr: Located::new(addr, span),
            weight,
        })
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
            if let Some(first) = earlier.iter().find(|s| s.listen.overlaps(&service.listen)) {
                self.error(
                    Diagnostic::new(format!(
                        "port {} is already used by service \"{}\"",
                        service.listen.port, first.name.value
                    ))
                    .at(service.listen.span.clone())
                    .related(first.listen.span.clone(), "first used here")
                    .help("each service needs its own port (or its own WAN address with \"ADDR:PORT\")"),
                );
            }
            let Some(gateway) = gateway else { continue };
            if service.listen.port == gateway.ssh_port {
                self.error(
                    Diagnostic::new(format!("port {} is the gateway's SSH port", gateway.ssh_port))
                        .at(service.listen.span.clone())
                        .help("choose another port for the service, or move SSH with gateway.ssh_port"),
                );
            }
        }
    }
}
