//! Loading a certificate/key pair and checking everything that can be checked
//! before a client ever connects: both files read, both parse, the key is the
//! certificate's, and the certificate is valid now.
//!
//! The order of the checks follows the order a person fixes things in: first
//! the files themselves, then whether they belong together, last the dates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::problem::{Found, Problem, ProblemKind, Which};

/// A certificate/key pair that loaded and passed every check.
#[derive(Debug)]
pub struct Certificate {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// DNS names covered: subjectAltName dNSName entries (the CN only when
    /// there is no SAN), lowercased; wildcards kept as "*.example.com".
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key: Arc<CertifiedKey>,
}

impl Certificate {
    /// Whether this certificate is valid for `host` (lowercase ASCII, no port,
    /// no trailing dot): an exact name, or a wildcard "*.example.com" covering
    /// exactly one label, as RFC 6125 has it.
    pub fn covers(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.names.iter().any(|name| name_covers(name, host))
    }
}

/// One name of a certificate against one host. Wildcards are only honoured as
/// the whole left-most label ("*.example.com"), which is all that browsers
/// accept; "w*.example.com" matches nothing but itself.
pub(crate) fn name_covers(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(parent), Some((label, rest))) => {
            !label.is_empty() && !parent.is_empty() && rest.eq_ignore_ascii_case(parent)
        }
        _ => false,
    }
}

/// Read and check a pair: a PEM certificate chain (leaf first, intermediates
/// after), a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC), the key matching
/// the leaf, and now within the leaf's validity period.
pub fn load(cert: &Path, key: &Path) -> Result<Certificate, Problem> {
    load_at(cert, key, SystemTime::now())
}

/// [`load`] as of `now`, so that tests need no clock.
pub(crate) fn load_at(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<Certificate, Problem> {
    let chain = read_certificates(Which::Cert, cert_path)?;
    let leaf = parse(cert_path, &chain)?;
    let key_der = read_key(key_path)?;

    let signing_key = crate::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| {
            Problem::new(
                Which::Key,
                key_path,
                ProblemKind::UnusableKey(rustls_reason(&error)),
            )
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown` means the key cannot report its public half; rustls'
        // own `CertifiedKey::from_der` accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            let kind = ProblemKind::KeyMismatch {
                cert: cert_path.to_path_buf(),
            };
            return Err(Problem::new(Which::Key, key_path, kind));
        }
    }

    if now > leaf.not_after {
        let kind = ProblemKind::Expired {
            not_after: leaf.not_after,
        };
        return Err(Problem::new(Which::Cert, cert_path, kind));
    }
    if now < leaf.not_before {
        let kind = ProblemKind::NotYetValid {
            not_before: leaf.not_before,
        };
        return Err(Problem::new(Which::Cert, cert_path, kind));
    }

    Ok(Certificate {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        names: leaf.names,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        key: Arc::new(certified),
    })
}

/// Every `CERTIFICATE` section of a PEM file, in order; at least one.
pub(crate) fn read_certificates(which: Which, path: &Path) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let bytes = read(which, path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Problem::new(which, path, ProblemKind::BadPem(pem_reason(&error))))?;
    if chain.is_empty() {
        return Err(Problem::new(
            which,
            path,
            ProblemKind::NoCertificate(Found::scan(&bytes)),
        ));
    }
    Ok(chain)
}

/// The first private key section of a PEM file, whichever of the three
/// encodings it is in.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Problem> {
    let bytes = read(Which::Key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| {
        let kind = match error {
            pem::Error::NoItemsFound => ProblemKind::NoPrivateKey(Found::scan(&bytes)),
            other => ProblemKind::BadPem(pem_reason(&other)),
        };
        Problem::new(Which::Key, path, kind)
    })
}

fn read(which: Which, path: &Path) -> Result<Vec<u8>, Problem> {
    std::fs::read(path).map_err(|error| Problem::new(which, path, ProblemKind::Unreadable(error)))
}

/// What the leaf says about itself, taken out of the borrowed parse.
struct Leaf {
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// Parses every certificate of the chain (so a damaged intermediate is found
/// now rather than by the first client) and reads names and dates of the leaf.
fn parse(path: &Path, chain: &[CertificateDer<'_>]) -> Result<Leaf, Problem> {
    let mut leaf = None;
    for (index, der) in chain.iter().enumerate() {
        let unparsable =
            |reason: String| Problem::new(Which::Cert, path, ProblemKind::Unparsable { index, reason });
        let cert = match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => cert,
            Err(error) => return Err(unparsable(x509_reason(error))),
        };
        if index == 0 {
            leaf = Some(Leaf {
                names: names(&cert).map_err(unparsable)?,
                not_before: system_time(cert.validity().not_before.timestamp()),
                not_after: system_time(cert.validity().not_after.timestamp()),
            });
        }
    }
    // `read_certificates` never returns an empty chain.
    leaf.ok_or_else(|| Problem::new(Which::Cert, path, ProblemKind::NoCertificate(Found::Nothing)))
}

/// The DNS names a certificate is for: its subjectAltName dNSNames, or its
/// subject CN when it has no subjectAltName at all (old self-made certificates).
fn names(cert: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|error| format!("its subjectAltName is malformed: {error}"))?;
    let names = match san {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        None => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(|cn| cn.to_ascii_lowercase())
            .collect(),
    };
    Ok(names)
}

fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs()),
    }
}

/// rustls' words without its "unexpected error: " prefix, which is misleading
/// here: a bad key is the expected kind of error.
fn rustls_reason(error: &rustls::Error) -> String {
    match error {
        rustls::Error::General(reason) => reason.clone(),
        other => other.to_string(),
    }
}

fn pem_reason(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("no -----END {}----- line", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!(
                "malformed BEGIN line {:?}",
                String::from_utf8_lossy(line).trim_end()
            )
        }
        pem::Error::Base64Decode(_) => "the text between BEGIN and END is not valid base64".to_string(),
        other => other.to_string(),
    }
}

fn x509_reason(error: x509_parser::nom::Err<x509_parser::error::X509Error>) -> String {
    use x509_parser::error::X509Error;
    match error {
        // The parser's own words here ("nom error: Eof") say nothing to a user.
        x509_parser::nom::Err::Error(X509Error::NomError(_) | X509Error::Der(_))
        | x509_parser::nom::Err::Failure(X509Error::NomError(_) | X509Error::Der(_)) => {
            "the data is not DER-encoded X.509".to_string()
        }
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e.to_string(),
        x509_parser::nom::Err::Incomplete(_) => "the DER data is truncated".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(name_covers("*.example.com", "A.Example.COM"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", ".example.com"));
        assert!(!name_covers("*.example.com", "a.example.org"));
        assert!(!name_covers("*.", "a."));
        assert!(name_covers("www.example.com", "www.example.com"));
        assert!(!name_covers("www.example.com", "example.com"));
        assert!(!name_covers("w*.example.com", "www.example.com"));
    }
}
