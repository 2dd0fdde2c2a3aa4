//! Why a certificate, key or CA file could not be used, said so that the user
//! knows which file to open and what to do about it.
//!
//! Config validation shows a [`Problem`] at the `cert =`, `key =` or `ca =`
//! value it is about, so every problem carries [`Which`] file it blames and
//! the path it read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which file of a pair a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
    Ca,
}

/// What a file held instead of what was expected; it turns "no certificate
/// here" into "you swapped the two files" when that is what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing recognisable: empty, text without PEM sections, or sections of
    /// other kinds.
    Nothing,
    /// A PEM certificate (in a file that should hold a key).
    Certificate,
    /// A PEM private key (in a file that should hold certificates).
    PrivateKey,
    /// A password-protected private key, which gatehouse cannot prompt for.
    EncryptedKey,
    /// A certificate signing request rather than the certificate issued for it.
    CertificateRequest,
    /// Binary DER rather than PEM text.
    Der,
}

impl Found {
    /// Looks at the raw bytes of a file to say what it holds. A plain text
    /// scan is enough: this only chooses the advice, never the verdict.
    pub(crate) fn scan(bytes: &[u8]) -> Found {
        let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        if has("-----BEGIN ENCRYPTED PRIVATE KEY-----") || has("Proc-Type: 4,ENCRYPTED") {
            Found::EncryptedKey
        } else if has("PRIVATE KEY-----") {
            Found::PrivateKey
        } else if has("-----BEGIN CERTIFICATE-----") {
            Found::Certificate
        } else if has("CERTIFICATE REQUEST-----") {
            Found::CertificateRequest
        } else if bytes.first() == Some(&0x30) && !has("-----BEGIN ") {
            // Every DER certificate and key starts with a SEQUENCE tag.
            Found::Der
        } else {
            Found::Nothing
        }
    }
}

/// What exactly is wrong; [`Problem`] adds which file.
#[derive(Debug)]
pub enum ProblemKind {
    /// The file could not be read at all.
    Unreadable(std::io::Error),
    /// No `CERTIFICATE` section in a file that should hold certificates.
    NoCertificate(Found),
    /// No `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section.
    NoPrivateKey(Found),
    /// The PEM framing itself is broken: bad base64, a missing END line.
    BadPem(String),
    /// The PEM decoded but the certificate inside is not valid X.509.
    /// `index` counts from 0 = the leaf.
    Unparsable { index: usize, reason: String },
    /// The key decoded but the crypto provider cannot sign with it.
    UnusableKey(String),
    /// The key does not match the public key of the certificate at `cert`.
    KeyMismatch { cert: PathBuf },
    /// The leaf certificate's notAfter is in the past.
    Expired { not_after: SystemTime },
    /// The leaf certificate's notBefore is in the future.
    NotYetValid { not_before: SystemTime },
    /// rustls refused the trust store built from a CA file.
    Refused(String),
}

/// Why a pair (or a CA file) could not be used. Display gives one line that
/// names the file.
#[derive(Debug)]
pub struct Problem {
    pub which: Which,
    pub path: PathBuf,
    pub kind: ProblemKind,
}

impl Problem {
    pub(crate) fn new(which: Which, path: &Path, kind: ProblemKind) -> Problem {
        Problem {
            which,
            path: path.to_path_buf(),
            kind,
        }
    }

    /// What to do about it, in one sentence.
    pub fn help(&self) -> String {
        let what = match self.which {
            Which::Cert => "certificate",
            Which::Key => "private key",
            Which::Ca => "CA bundle",
        };
        match &self.kind {
            ProblemKind::Unreadable(error) => match error.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "let the user gatehouse runs as read the {what} (e.g. chgrp gatehouse and chmod g+r)"
                ),
                _ => "check the path and that gatehouse may read it".to_string(),
            },
            ProblemKind::NoCertificate(found) => match found {
                Found::PrivateKey | Found::EncryptedKey => {
                    "this is a key file: give it as `key =` and the certificate as `cert =`".to_string()
                }
                Found::CertificateRequest => {
                    "this is a signing request (CSR): give the certificate the CA issued for it".to_string()
                }
                Found::Der => format!(
                    "convert it to PEM: openssl x509 -inform der -in {0} -out {0}.pem",
                    self.path.display()
                ),
                Found::Certificate | Found::Nothing => {
                    "give a PEM file that starts with -----BEGIN CERTIFICATE-----".to_string()
                }
            },
            ProblemKind::NoPrivateKey(found) => match found {
                Found::Certificate => {
                    "this is a certificate: give it as `cert =` and its private key as `key =`".to_string()
                }
                Found::EncryptedKey => format!(
                    "gatehouse cannot ask for a passphrase: \
                     decrypt it with openssl pkey -in {} -out plain.key",
                    self.path.display()
                ),
                Found::Der => format!(
                    "convert it to PEM: openssl pkey -inform der -in {0} -out {0}.pem",
                    self.path.display()
                ),
                Found::PrivateKey | Found::CertificateRequest | Found::Nothing => {
                    "give the PEM private key that was generated with the certificate".to_string()
                }
            },
            ProblemKind::BadPem(_) => {
                format!("the {what} file is damaged or truncated: copy it again from where it was issued")
            }
            ProblemKind::Unparsable { .. } => {
                "the certificate is damaged or not X.509: copy it again from where it was issued".to_string()
            }
            ProblemKind::UnusableKey(_) => {
                "use an RSA, ECDSA P-256/P-384 or Ed25519 key in PKCS#8, PKCS#1 or SEC1 PEM".to_string()
            }
            ProblemKind::KeyMismatch { .. } => "give the key that was generated with this certificate \
                 (or the certificate issued for this key)"
                .to_string(),
            ProblemKind::Expired { .. } => {
                "renew the certificate (e.g. certbot renew) and reload".to_string()
            }
            ProblemKind::NotYetValid { .. } => {
                "check the system clock, or wait until the certificate becomes valid".to_string()
            }
            ProblemKind::Refused(_) => "give a PEM file of CA certificates that rustls accepts".to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.kind {
            ProblemKind::Unreadable(error) => write!(f, "cannot read {path}: {}", io_reason(error)),
            ProblemKind::NoCertificate(found) => {
                write!(
                    f,
                    "{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
                )?;
                match found {
                    Found::PrivateKey | Found::EncryptedKey => write!(f, "; it holds a private key"),
                    Found::CertificateRequest => write!(f, "; it holds a certificate request"),
                    Found::Der => write!(f, "; it looks like binary DER"),
                    Found::Certificate | Found::Nothing => Ok(()),
                }
            }
            ProblemKind::NoPrivateKey(found) => {
                write!(
                    f,
                    "{path} holds no private key \
                     (expected -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                )?;
                match found {
                    Found::Certificate => write!(f, "; it holds a certificate"),
                    Found::EncryptedKey => write!(f, "; it holds an encrypted key"),
                    Found::CertificateRequest => write!(f, "; it holds a certificate request"),
                    Found::Der => write!(f, "; it looks like binary DER"),
                    Found::PrivateKey | Found::Nothing => Ok(()),
                }
            }
            ProblemKind::BadPem(reason) => write!(f, "{path} is not valid PEM: {reason}"),
            ProblemKind::Unparsable { index: 0, reason } => {
                write!(f, "{path}: the certificate cannot be parsed: {reason}")
            }
            ProblemKind::Unparsable { index, reason } => {
                write!(
                    f,
                    "{path}: certificate number {} cannot be parsed: {reason}",
                    index + 1
                )
            }
            ProblemKind::UnusableKey(reason) => write!(f, "{path} is not a usable key: {reason}"),
            ProblemKind::KeyMismatch { cert } => {
                write!(
                    f,
                    "the key {path} does not belong to the certificate {}",
                    cert.display()
                )
            }
            ProblemKind::Expired { not_after } => {
                write!(f, "the certificate {path} expired on {}", utc(*not_after))
            }
            ProblemKind::NotYetValid { not_before } => {
                write!(
                    f,
                    "the certificate {path} is not valid before {}",
                    utc(*not_before)
                )
            }
            ProblemKind::Refused(reason) => write!(f, "{path}: rustls refused it: {reason}"),
        }
    }
}

impl std::error::Error for Problem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ProblemKind::Unreadable(error) => Some(error),
            _ => None,
        }
    }
}

/// The OS's words for an I/O error without std's " (os error 2)" suffix,
/// which means nothing to the person reading the message.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// "YYYY-MM-DD HH:MM:SS UTC": certificates state their times in UTC, so the
/// message does too, with no time zone database needed. (Times before 1970,
/// which humantime cannot format, show as 1970: no such certificate is live.)
pub(crate) fn utc(time: SystemTime) -> String {
    let time = time.max(UNIX_EPOCH);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replacen('T', " ", 1)
        .replacen('Z', " UTC", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: i64) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(at(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(at(1_714_564_800)), "2024-05-01 12:00:00 UTC");
        assert_eq!(utc(at(951_782_400)), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(at(4_102_444_799)), "2099-12-31 23:59:59 UTC");
        assert_eq!(utc(at(-1)), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn io_reason_drops_the_os_error_number() {
        let error = std::io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&error), "No such file or directory");
        let custom = std::io::Error::other("boom");
        assert_eq!(io_reason(&custom), "boom");
    }

    #[test]
    fn found_recognises_what_a_file_holds() {
        assert_eq!(Found::scan(b""), Found::Nothing);
        assert_eq!(
            Found::scan(b"-----BEGIN PRIVATE KEY-----\nAA==\n"),
            Found::PrivateKey
        );
        assert_eq!(
            Found::scan(b"-----BEGIN EC PRIVATE KEY-----\n"),
            Found::PrivateKey
        );
        assert_eq!(
            Found::scan(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"),
            Found::EncryptedKey
        );
        assert_eq!(
            Found::scan(b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"),
            Found::EncryptedKey
        );
        assert_eq!(Found::scan(b"-----BEGIN CERTIFICATE-----\n"), Found::Certificate);
        assert_eq!(
            Found::scan(b"-----BEGIN CERTIFICATE REQUEST-----\n"),
            Found::CertificateRequest
        );
        assert_eq!(Found::scan(&[0x30, 0x82, 0x01, 0x0a]), Found::Der);
    }

    #[test]
    fn every_kind_has_help_and_names_its_file() {
        let path = Path::new("/etc/x.pem");
        let kinds = vec![
            ProblemKind::Unreadable(std::io::Error::from_raw_os_error(2)),
            ProblemKind::Unreadable(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
            ProblemKind::NoCertificate(Found::Nothing),
            ProblemKind::NoCertificate(Found::PrivateKey),
            ProblemKind::NoCertificate(Found::Der),
            ProblemKind::NoCertificate(Found::CertificateRequest),
            ProblemKind::NoPrivateKey(Found::Certificate),
            ProblemKind::NoPrivateKey(Found::EncryptedKey),
            ProblemKind::BadPem("base64".into()),
            ProblemKind::Unparsable {
                index: 0,
                reason: "bad".into(),
            },
            ProblemKind::Unparsable {
                index: 1,
                reason: "bad".into(),
            },
            ProblemKind::UnusableKey("bad".into()),
            ProblemKind::KeyMismatch {
                cert: PathBuf::from("/etc/y.pem"),
            },
            ProblemKind::Expired { not_after: at(0) },
            ProblemKind::NotYetValid { not_before: at(0) },
            ProblemKind::Refused("no".into()),
        ];
        for kind in kinds {
            let problem = Problem::new(Which::Cert, path, kind);
            let line = problem.to_string();
            assert!(line.contains("/etc/x.pem"), "{line}");
            assert!(!line.contains('\n'), "{line}");
            let help = problem.help();
            assert!(!help.is_empty() && !help.contains('\n'), "{line}: {help}");
        }
    }
}
