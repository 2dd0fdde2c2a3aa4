//! TLS termination on a listener: which certificate a client gets.
//!
//! The rule is nginx's, because that is what people moving from nginx expect:
//! an exact name first, then a wildcard, and otherwise (no SNI, an IP address,
//! an unknown name) the first certificate listed, like nginx's default server.
//! [`select`] runs the resolver's own lookup, so the proxy can tell which
//! certificate a connection got without asking rustls.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certificate::Certificate;

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
/// Host is for a certificate other than the one its connection got. The
/// resolver's own rule, indexed afresh: meant for the rare request whose Host
/// differs from its SNI, not for every connection.
pub fn select(certs: &[Arc<Certificate>], sni: Option<&str>) -> usize {
    SniResolver::new(certs).lookup(sni)
}

/// SNI as a map key: lowercase (DNS is case-insensitive, and certificate names
/// are stored lowercased) and without a trailing dot.
fn normalize(sni: &str) -> String {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    sni.to_ascii_lowercase()
}

/// The selection rule, with the names indexed once for the handshake path.
#[derive(Debug)]
struct SniResolver {
    /// Exact name to the first certificate that has it.
    exact: HashMap<String, usize>,
    /// "example.com" for a certificate named "*.example.com".
    wildcard: HashMap<String, usize>,
    keys: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn new(certs: &[Arc<Certificate>]) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.names {
                // `or_insert`: the first certificate listed wins.
                match name.strip_prefix("*.") {
                    Some(parent) if !parent.is_empty() => {
                        wildcard.entry(parent.to_string()).or_insert(i);
                    }
                    _ => {
                        exact.entry(name.clone()).or_insert(i);
                    }
                }
            }
        }
        SniResolver {
            exact,
            wildcard,
            keys: certs.iter().map(|cert| cert.key.clone()).collect(),
        }
    }

    /// An exact name, then a wildcard for its first label, else the first
    /// certificate (index 0, also for no SNI).
    fn lookup(&self, sni: Option<&str>) -> usize {
        let Some(host) = sni.map(normalize) else {
            return 0;
        };
        if let Some(&i) = self.exact.get(&host) {
            return i;
        }
        let by_parent = match host.split_once('.') {
            Some((label, parent)) if !label.is_empty() => self.wildcard.get(parent),
            _ => None,
        };
        by_parent.copied().unwrap_or(0)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.keys.get(self.lookup(client_hello.server_name())).cloned()
    }
}

#[cfg(test)]
pub(crate) fn resolve_for_test(certs: &[Arc<Certificate>], sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
    let resolver = SniResolver::new(certs);
    resolver.keys.get(resolver.lookup(sni)).cloned()
}
