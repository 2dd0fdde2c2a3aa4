//! The keys of HTTPS and virtual hosting: listener certificates, the plain
//! listener that redirects to https, PROXY protocol, and `[[service.route]]`
//! tables with the way each group of backends is reached.
//!
//! Certificates are loaded here, not at serve time: `gatehouse check` then
//! reports an unreadable file, a key that does not match or an expired
//! certificate at the line that names it, and a reload with a bad one is
//! refused before anything changes.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use toml::Spanned;

use crate::diagnostic::Diagnostic;
use crate::model::{
    BackendProtocol, BackendTls, Gateway, Listen, ListenerTls, Located, Mode, ProxyVersion, Route,
    UpstreamOptions,
};
use crate::raw;
use crate::validate::Validator;

/// The keys that say how a group of backends is reached.
pub(crate) struct UpstreamKeys {
    pub(crate) backend_tls: Option<Spanned<raw::BackendTls>>,
    pub(crate) send_proxy: Option<Spanned<String>>,
    pub(crate) backend_protocol: Option<Spanned<String>>,
}

impl Validator {
    pub(crate) fn upstream_options(&mut self, raw: UpstreamKeys, mode: Option<Mode>) -> UpstreamOptions {
        let mut options = UpstreamOptions::default();
        if mode == Some(Mode::Nat) {
            for (key, span) in [
                ("backend_tls", raw.backend_tls.as_ref().map(|v| v.span())),
                ("send_proxy", raw.send_proxy.as_ref().map(|v| v.span())),
                (
                    "backend_protocol",
                    raw.backend_protocol.as_ref().map(|v| v.span()),
                ),
            ] {
                if let Some(span) = span {
                    self.proxy_only(key, span);
                }
            }
            return options;
        }
        if let Some(version) = &raw.send_proxy {
            match version.get_ref().as_str() {
                "v1" => options.send_proxy = Some(ProxyVersion::V1),
                "v2" => options.send_proxy = Some(ProxyVersion::V2),
                other => self.error(
                    Diagnostic::new(format!("unknown PROXY protocol version \"{other}\""))
                        .at(version.span())
                        .help("use send_proxy = \"v1\" (text) or \"v2\" (binary), whichever the backend accepts"),
                ),
            }
        }
        if let Some(protocol) = raw.backend_protocol {
            match protocol.get_ref().as_str() {
                "http/1.1" => {}
                "h2" if mode == Some(Mode::Tcp) => self.error(
                    Diagnostic::new("backend_protocol = \"h2\" needs mode = \"http\"")
                        .at(protocol.span())
                        .help("a tcp service relays bytes and speaks no HTTP; remove the key"),
                ),
                "h2" => options.protocol = BackendProtocol::H2,
                other => self.error(
                    Diagnostic::new(format!("unknown backend protocol \"{other}\""))
                        .at(protocol.span())
                        .help("use backend_protocol = \"http/1.1\" (the default) or \"h2\""),
                ),
            }
        }
        if let (Some(version), BackendProtocol::H2) = (&raw.send_proxy, options.protocol) {
            self.error(
                Diagnostic::new("send_proxy cannot go with backend_protocol = \"h2\"")
                    .at(version.span())
                    .help("one HTTP/2 connection carries the requests of many clients, and a PROXY header names one: use http/1.1 to the backend, or drop send_proxy (X-Forwarded-For still names the client)"),
            );
        }
        if let Some(tls) = raw.backend_tls {
            if mode == Some(Mode::Tcp) {
                self.error(
                    Diagnostic::new("backend_tls needs mode = \"http\"")
                        .at(tls.span())
                        .help("a tcp service relays the client's bytes as they are; TLS to the backend then is the client's"),
                );
            } else {
                options.tls = self.backend_tls(tls, options.protocol);
            }
        }
        options
    }

    fn backend_tls(
        &mut self,
        raw: Spanned<raw::BackendTls>,
        protocol: BackendProtocol,
    ) -> Option<BackendTls> {
        let raw = raw.into_inner();
        let sni = match raw.sni {
            Some(name) => {
                let text = name.get_ref().to_ascii_lowercase();
                if gatehouse_tls::rustls::pki_types::ServerName::try_from(text.as_str()).is_err()
                    || text.parse::<std::net::IpAddr>().is_ok()
                {
                    self.error(
                        Diagnostic::new(format!("sni \"{}\" is not a DNS name", name.get_ref()))
                            .at(name.span())
                            .help("give the name on the backend's certificate, e.g. \"app.internal\"; without sni the backend's IP address is verified"),
                    );
                    return None;
                }
                Some(text)
            }
            None => None,
        };
        let alpn: &[&[u8]] = match protocol {
            BackendProtocol::Http1 => &[b"http/1.1"],
            BackendProtocol::H2 => &[b"h2"],
        };
        let ca = raw.ca.map(|ca| (self.path(ca.get_ref()), ca.span()));
        match gatehouse_tls::client_config(ca.as_ref().map(|(path, _)| path.as_path()), alpn) {
            Ok(config) => Some(BackendTls {
                ca: ca.map(|(path, _)| path),
                sni,
                config,
            }),
            Err(problem) => {
                let mut diagnostic = Diagnostic::new(problem.to_string()).help(problem.help());
                if let Some((_, span)) = ca {
                    diagnostic = diagnostic.at(span);
                }
                self.error(diagnostic);
                None
            }
        }
    }

    /// A path from the file: relative ones are relative to the file's directory.
    pub(crate) fn path(&self, text: &str) -> PathBuf {
        self.base.join(text)
    }

    pub(crate) fn listener_tls(
        &mut self,
        raw: Spanned<Vec<Spanned<raw::CertPair>>>,
        mode: Option<Mode>,
    ) -> Option<ListenerTls> {
        let span = raw.span();
        if mode == Some(Mode::Nat) {
            self.error(
                Diagnostic::new("tls applies to the userspace proxy, not to nat services")
                    .at(span)
                    .help("the kernel cannot decrypt: use mode = \"http\" (or \"tcp\") to terminate TLS, or let the backends do it"),
            );
            return None;
        }
        let pairs = raw.into_inner();
        if pairs.is_empty() {
            self.error(
                Diagnostic::new("tls lists no certificate")
                    .at(span)
                    .help("give at least one pair: tls = [{ cert = \"/etc/gatehouse/site.pem\", key = \"/etc/gatehouse/site.key\" }]"),
            );
            return None;
        }
        let certs: Vec<_> = pairs
            .into_iter()
            .filter_map(|pair| {
                let pair = pair.into_inner();
                self.certificate(pair.cert, pair.key)
            })
            .collect();
        if certs.is_empty() {
            return None;
        }
        // What the proxy builds from them at start and at every reload: a
        // refusal is the file's error here, never the running proxy's.
        if let Err(e) = gatehouse_tls::server_config(&certs, &[]) {
            self.error(
                Diagnostic::new(format!("these certificates cannot serve TLS: {e}"))
                    .at(span)
                    .help("check the certificates and keys listed here"),
            );
            return None;
        }
        Some(ListenerTls { certs })
    }

    /// A certificate and its key, loaded and checked; a problem is reported
    /// at the file it is about.
    pub(crate) fn certificate(
        &mut self,
        cert: Spanned<String>,
        key: Spanned<String>,
    ) -> Option<Arc<gatehouse_tls::Certificate>> {
        match gatehouse_tls::load(&self.path(cert.get_ref()), &self.path(key.get_ref())) {
            Ok(loaded) => Some(Arc::new(loaded)),
            Err(problem) => {
                let at = match problem.which {
                    gatehouse_tls::Which::Key => key.span(),
                    _ => cert.span(),
                };
                self.error(Diagnostic::new(problem.to_string()).at(at).help(problem.help()));
                None
            }
        }
    }

    pub(crate) fn redirect_http(
        &mut self,
        raw: Spanned<toml::Value>,
        mode: Option<Mode>,
        tls: bool,
    ) -> Option<Located<Listen>> {
        let span = raw.span();
        let listen = self.listen(raw)?;
        if mode != Some(Mode::Http) || !tls {
            self.error(
                Diagnostic::new("redirect_http needs an http service with tls")
                    .at(span)
                    .help("redirect_http answers plain HTTP with 308 to this service's https URL: add tls = [...] and mode = \"http\", or remove it"),
            );
            return None;
        }
        Some(listen)
    }

    pub(crate) fn accept_proxy(
        &mut self,
        raw: Spanned<Vec<Spanned<String>>>,
        mode: Option<Mode>,
    ) -> Vec<Located<ipnet::IpNet>> {
        if mode == Some(Mode::Nat) {
            self.proxy_only("accept_proxy", raw.span());
            return Vec::new();
        }
        raw.into_inner()
            .into_iter()
            .filter_map(|entry| self.network(entry))
            .collect()
    }

    pub(crate) fn routes(
        &mut self,
        raw: Vec<Spanned<raw::Route>>,
        service: &str,
        mode: Option<Mode>,
        gateway: Option<&Gateway>,
    ) -> Vec<Route> {
        let mut routes: Vec<Route> = Vec::new();
        // (host or "", path) -> where it was first routed.
        let mut seen: HashMap<(String, String), Range<usize>> = HashMap::new();
        for entry in raw {
            let span = entry.span();
            if mode.is_some_and(|m| m != Mode::Http) {
                self.error(
                    Diagnostic::new("routes need mode = \"http\"")
                        .at(span)
                        .help("only the HTTP proxy sees Host headers and paths; give this service mode = \"http\" or put the backends on the service"),
                );
                continue;
            }
            if let Some(route) = self.route(entry, service, gateway) {
                let hosts: Vec<String> = if route.hosts.is_empty() {
                    vec![String::new()]
                } else {
                    route.hosts.iter().map(|h| h.value.clone()).collect()
                };
                let path = route.path.as_ref().map_or("/".to_owned(), |p| p.value.clone());
                let mut clash = false;
                for host in hosts {
                    let key = (host, path.clone());
                    if let Some(first) = seen.get(&key) {
                        let what = if key.0.is_empty() {
                            "any host".to_owned()
                        } else {
                            key.0.clone()
                        };
                        self.error(
                            Diagnostic::new(format!("{what} with path {} is routed twice", key.1))
                                .at(route.span.clone())
                                .related(first.clone(), "first routed here")
                                .help("each host and path goes to one route: merge their backends, or give one a path"),
                        );
                        clash = true;
                        break;
                    }
                    seen.insert(key, route.span.clone());
                }
                if let Some(first) = routes.iter().find(|r| r.pool_name == route.pool_name) {
                    self.error(
                        Diagnostic::new(format!("two routes are both called \"{}\"", route.pool_name))
                            .at(route.span.clone())
                            .related(first.span.clone(), "first here")
                            .help("give one of them name = \"...\""),
                    );
                    clash = true;
                }
                if !clash {
                    routes.push(route);
                }
            }
        }
        routes
    }

    fn route(&mut self, raw: Spanned<raw::Route>, service: &str, gateway: Option<&Gateway>) -> Option<Route> {
        let span = raw.span();
        let raw = raw.into_inner();
        let errors_before = self.errors.len();
        let hosts = match raw.host {
            Some(value) => self.hosts(value),
            None => Vec::new(),
        };
        let path = raw.path.and_then(|p| self.route_path(p));
        if hosts.is_empty() && path.is_none() && self.errors.len() == errors_before {
            self.error(
                Diagnostic::new("a route needs a host or a path")
                    .at(span.clone())
                    .help("add host = \"www.example.com\" and/or path = \"/shop\"; backends for every other request go on the service itself"),
            );
        }
        let name = raw.name.and_then(|n| {
            let text = n.get_ref();
            let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            if text.is_empty() || text.len() > 64 || !text.chars().all(allowed) {
                self.error(
                    Diagnostic::new(format!("\"{text}\" is not a valid route name"))
                        .at(n.span())
                        .help("a route name is 1 to 64 letters, digits, '.', '_' or '-', e.g. \"shop\""),
                );
                return None;
            }
            Some(text.clone())
        });
        let balance = self.balance(raw.balance, Some(Mode::Http));
        let backends_span = raw.backends.span();
        let backends = self.backends(raw.backends.into_inner(), Some(Mode::Http), balance, gateway);
        if backends.is_empty() && self.errors.len() == errors_before {
            self.error(
                Diagnostic::new("a route needs at least one backend")
                    .at(backends_span)
                    .help("list the servers for this route, e.g. backends = [\"10.0.0.21:80\"]"),
            );
        }
        let health = self.health_or_default(raw.health);
        let upstream = self.upstream_options(
            UpstreamKeys {
                backend_tls: raw.backend_tls,
                send_proxy: raw.send_proxy,
                backend_protocol: raw.backend_protocol,
            },
            Some(Mode::Http),
        );
        if self.errors.len() != errors_before {
            return None;
        }
        let label = match name {
            Some(name) => name,
            None => {
                let host = hosts.first().map_or("*", |h| h.value.as_str());
                match &path {
                    Some(path) if path.value != "/" => format!("{host}{}", path.value),
                    _ => host.to_owned(),
                }
            }
        };
        Some(Route {
            pool_name: format!("{service}/{label}"),
            hosts,
            path,
            backends,
            balance: balance?,
            health,
            upstream,
            span,
        })
    }

    /// `host = "www.example.com"`, `"*.example.com"`, or a list of them.
    fn hosts(&mut self, raw: Spanned<toml::Value>) -> Vec<Located<String>> {
        let span = raw.span();
        let help = "write a name (\"www.example.com\"), a wildcard for one label (\"*.example.com\") or a list of them";
        let items: Vec<(String, Range<usize>)> = match raw.into_inner() {
            toml::Value::String(text) => vec![(text, span.clone())],
            // Array elements carry no positions of their own in toml::Value:
            // complaints point at the whole list.
            toml::Value::Array(list) if !list.is_empty() => {
                let mut items = Vec::new();
                for value in list {
                    match value {
                        toml::Value::String(text) => items.push((text, span.clone())),
                        other => {
                            self.error(
                                Diagnostic::new(format!("a host is a string, not {}", other.type_str()))
                                    .at(span.clone())
                                    .help(help),
                            );
                            return Vec::new();
                        }
                    }
                }
                items
            }
            other => {
                let what = match &other {
                    toml::Value::Array(_) => "an empty list".to_owned(),
                    other => other.type_str().to_owned(),
                };
                self.error(
                    Diagnostic::new(format!("host must be a name or a list of names, not {what}"))
                        .at(span)
                        .help(help),
                );
                return Vec::new();
            }
        };
        let mut hosts: Vec<Located<String>> = Vec::new();
        for (text, at) in items {
            match host_pattern(&text) {
                Ok(host) if hosts.iter().any(|h| h.value == host) => {
                    self.error(
                        Diagnostic::new(format!("host \"{host}\" is listed twice"))
                            .at(at)
                            .help("list each host once"),
                    );
                }
                Ok(host) => hosts.push(Located::new(host, at)),
                Err(why) => {
                    self.error(
                        Diagnostic::new(format!("host \"{text}\" {why}"))
                            .at(at)
                            .help(help),
                    );
                }
            }
        }
        hosts
    }

    fn route_path(&mut self, raw: Spanned<String>) -> Option<Located<String>> {
        let text = raw.get_ref();
        if !text.starts_with('/') || text.chars().any(|c| c.is_whitespace() || c == '?' || c == '#') {
            self.error(
                Diagnostic::new(format!("path \"{text}\" is not a URL path prefix"))
                    .at(raw.span())
                    .help("write a path starting with '/', without query or fragment, e.g. \"/shop\""),
            );
            return None;
        }
        // "/shop/" and "/shop" route alike: matching is by whole segments.
        let trimmed = text.trim_end_matches('/');
        let path = if trimmed.is_empty() { "/" } else { trimmed };
        Some(Located::new(path.to_owned(), raw.span()))
    }
}

/// A host name as routes match it: lowercase ASCII, no port, no trailing dot;
/// a leading "*." stands for exactly one label.
pub(crate) fn host_pattern(text: &str) -> Result<String, &'static str> {
    let host = text.trim_end_matches('.').to_ascii_lowercase();
    if host.contains(':') {
        return Err("has a port; routes match the name alone");
    }
    let rest = host.strip_prefix("*.").unwrap_or(&host);
    if rest.is_empty() || host.len() > 253 {
        return Err("is not a host name");
    }
    if !host.is_ascii() {
        return Err("is not ASCII; write international names in punycode (xn--...)");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if rest.contains('*') {
        return Err("has a '*' other than a leading \"*.\"");
    }
    if !rest.split('.').all(label_ok) {
        return Err("is not a host name");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::host_pattern;

    #[test]
    fn host_patterns() {
        assert_eq!(host_pattern("WWW.Example.com."), Ok("www.example.com".to_owned()));
        assert_eq!(host_pattern("*.example.com"), Ok("*.example.com".to_owned()));
        assert!(host_pattern("www.example.com:443").is_err());
        assert!(host_pattern("a.*.example.com").is_err());
        assert!(host_pattern("*").is_err());
        assert!(host_pattern("-a.example.com").is_err());
        assert!(host_pattern("bücher.example").is_err());
        assert_eq!(host_pattern("localhost"), Ok("localhost".to_owned()));
    }
}
