//! TLS to backends: whom to trust.
//!
//! Backends in a web farm usually carry certificates from a private CA, so a
//! service names its CA file; without one the system's bundle is used, read
//! from a file rather than a platform API so that what is trusted is visible
//! (and the same in a container as on the host).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;

use crate::certificate::read_certificates;
use crate::problem::{Found, Problem, ProblemKind, Which};

/// Debian's (and Ubuntu's) bundle, used when `$SSL_CERT_FILE` is not set.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client config for TLS to backends: trust the CA certificates in the PEM
/// file `ca`, or when None the system trust store (`$SSL_CERT_FILE`, else
/// [`SYSTEM_CA_FILE`]). ALPN as given, TLS 1.2 and 1.3, no client certificate.
pub fn client_config(ca: Option<&Path>, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, Problem> {
    let (path, roots) = match ca {
        Some(path) => (path.to_path_buf(), named_roots(path)?),
        None => {
            let path = system_ca_path(std::env::var_os("SSL_CERT_FILE"));
            let roots = system_roots(&path)?;
            (path, roots)
        }
    };
    let mut config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| Problem::new(Which::Ca, &path, ProblemKind::Refused(error.to_string())))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// `$SSL_CERT_FILE` (given as `env`, so tests need not touch the
/// environment) when set and not empty, else [`SYSTEM_CA_FILE`].
pub(crate) fn system_ca_path(env: Option<OsString>) -> PathBuf {
    env.filter(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from(SYSTEM_CA_FILE), PathBuf::from)
}

/// A CA file the user named: every certificate in it must be usable, since a
/// bad one is probably the one they meant to trust.
fn named_roots(path: &Path) -> Result<RootCertStore, Problem> {
    let mut roots = RootCertStore::empty();
    for (index, der) in read_certificates(Which::Ca, path)?.into_iter().enumerate() {
        roots.add(der).map_err(|error| {
            let kind = ProblemKind::Unparsable {
                index,
                reason: error.to_string(),
            };
            Problem::new(Which::Ca, path, kind)
        })?;
    }
    Ok(roots)
}

/// The system bundle: distributions ship the odd certificate that webpki
/// cannot use, and skipping it is what every other TLS client does.
fn system_roots(path: &Path) -> Result<RootCertStore, Problem> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certificates(Which::Ca, path)?);
    if added == 0 {
        return Err(Problem::new(
            Which::Ca,
            path,
            ProblemKind::NoCertificate(Found::Nothing),
        ));
    }
    Ok(roots)
}
