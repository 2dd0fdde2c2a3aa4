//! Test certificates made with rcgen and written as PEM files: a CA of our
//! own, leaves it signs for the names the tests serve, and the broken files
//! config validation must refuse (an expired leaf, a key of another pair).
//!
//! Self-contained (std and rcgen only), so crates/gatehouse/tests uses it too
//! through `#[path]`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority whose PEM certificate is at `ca`, for
/// `curl --cacert` and `backend_tls = { ca = ... }`.
pub struct Ca {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// Also the organisation of every leaf it signs: `curl -v` shows it in the
    /// subject, which tells two certificates for the same name apart.
    pub label: String,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// `{ cert = "...", key = "..." }` for a `tls = [...]` list.
    pub fn toml(&self) -> String {
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Ca {
    /// A new CA ("Gatehouse test CA LABEL") writing its files into `dir`,
    /// which must exist.
    pub fn new(dir: &Path, label: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Gatehouse test CA {label}"));
        params.distinguished_name.push(DnType::OrganizationName, label);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca = dir.join(format!("ca-{label}.pem"));
        std::fs::write(&ca, cert.pem()).expect("writing the CA");
        Ca {
            ca,
            label: label.to_owned(),
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), valid now, written as
    /// FILE.pem and FILE.key.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.make(file, names, false)
    }

    /// A leaf that expired on 2021-01-01.
    pub fn expired_leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.make(file, names, true)
    }

    fn make(&self, file: &str, names: &[&str], expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params
            .distinguished_name
            .push(DnType::OrganizationName, self.label.clone());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing a leaf");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("writing a certificate");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("writing a key");
        leaf
    }
}

/// The usual set: one CA and leaves for the names the routing tests serve.
pub struct Site {
    pub ca: Ca,
    pub www: Leaf,
    pub app: Leaf,
    pub wild: Leaf,
}

impl Site {
    pub fn new(dir: &Path, label: &str) -> Site {
        let ca = Ca::new(dir, label);
        Site {
            www: ca.leaf(&format!("www-{label}"), &["www.example.test"]),
            app: ca.leaf(&format!("app-{label}"), &["app.example.test"]),
            wild: ca.leaf(&format!("wild-{label}"), &["*.wild.example.test"]),
            ca,
        }
    }
}
