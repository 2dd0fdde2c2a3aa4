//! TLS termination on a listener: which certificate a client gets.
//!
//! The rule is nginx's, because that is what people moving from nginx expect:
//! an exact name first, then a wildcard, and otherwise (no SNI, an IP address,
//! an unknown name) the first certificate listed, like nginx's default server.
//! [`select`] and the resolver share [`normalize`] and the rule, so the proxy
//! can tell which certificate a connection got without asking rustls.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certificate::{Certificate, name_covers};

/// A server config for a listener: TLS 1.2 and 1.3, ALPN protocols in the
/// given order, certificate chosen by SNI, and session resumption both by the
/// in-memory session cache (rustls' default) and by tickets.
pub fn server_config(
    certs: &[Arc<Certificate>],
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    if certs.is_empty() {
        return Err("a TLS listener needs at least one certificate".to_string());
    }
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| format!("rustls refused the protocol versions: {error}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(certs)));
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    // The default ticketer never issues tickets; without one, TLS 1.3 clients
    // could only resume against the session cache of this very process.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|error| format!("rustls could not make a session ticketer: {error}"))?;
    Ok(Arc::new(config))
}

/// The certificate the server config would present for this SNI name (None =
/// no SNI), as an index into `certs`. Lets the proxy answer 421 when a request's
/// Host is for a certificate other than the one its connection got.
pub fn select(certs: &[Arc<Certificate>], sni: Option<&str>) -> usize {
    let Some(host) = sni.map(normalize) else { return 0 };
    let exact = certs.iter().position(|cert| cert.names.contains(&host));
    let wildcard = || {
        certs.iter().position(|cert| {
            cert.names
                .iter()
                .any(|name| name.starts_with("*.") && name_covers(name, &host))
        })
    };
    exact.or_else(wildcard).unwrap_or(0)
}

/// SNI as a map key: lowercase (DNS is case-insensitive, and certificate names
/// are stored lowercased) and without a trailing dot.
fn normalize(sni: &str) -> String {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    sni.to_ascii_lowercase()
}

/// [`select`] with the names indexed once, for the handshake path.
#[derive(Debug)]
struct SniResolver {
    /// Exact name to the first certificate that has it.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// "example.com" for a certificate named "*.example.com".
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn new(certs: &[Arc<Certificate>]) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certs {
            for name in &cert.names {
                // `or_insert`: the first certificate listed wins, as in `select`.
                match name.strip_prefix("*.") {
                    Some(parent) if !parent.is_empty() => {
                        wildcard
                            .entry(parent.to_string())
                            .or_insert_with(|| cert.key.clone());
                    }
                    _ => {
                        exact.entry(name.clone()).or_insert_with(|| cert.key.clone());
                    }
                }
            }
        }
        let default = certs.first().map(|cert| cert.key.clone());
        SniResolver {
            exact,
            wildcard,
            default,
        }
    }

    fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(host) = sni.map(normalize) else {
            return self.default.clone();
        };
        if let Some(key) = self.exact.get(&host) {
            return Some(key.clone());
        }
        let by_parent = match host.split_once('.') {
            Some((label, parent)) if !label.is_empty() => self.wildcard.get(parent),
            _ => None,
        };
        by_parent.or(self.default.as_ref()).cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(client_hello.server_name())
    }
}

#[cfg(test)]
pub(crate) fn resolve_for_test(certs: &[Arc<Certificate>], sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
    SniResolver::new(certs).lookup(sni)
}
