//! Tests against real files: a CA and leaves made with rcgen in a temporary
//! directory, loaded through `load`, served by `server_config` and verified
//! by `client_config` over an in-memory handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256, date_time_ymd,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

use crate::*;

const RSA_PKCS8: &str = include_str!("../testdata/rsa.pkcs8.pem");
const RSA_PKCS1: &str = include_str!("../testdata/rsa.pkcs1.pem");
const EC_PKCS8: &str = include_str!("../testdata/ec.pkcs8.pem");
const EC_SEC1: &str = include_str!("../testdata/ec.sec1.pem");

/// A directory of its own under the system temp dir, removed when dropped
/// (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "gatehouse-tls-{}-{}-{nanos}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and the files it issued.
struct Pki {
    dir: TempDir,
    ca_cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        Pki::with_ca_name("Gatehouse Test CA")
    }

    fn with_ca_name(name: &str) -> Pki {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&key).unwrap();
        Pki {
            dir: TempDir::new(),
            ca_cert,
            issuer: Issuer::new(params, key),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.write("ca.pem", self.ca_cert.pem())
    }

    /// Issues a leaf for `names` with `key` and writes `<stem>.pem` and
    /// `<stem>.key`; `key_pem` overrides what is written as the key file.
    fn leaf_with(
        &self,
        stem: &str,
        params: CertificateParams,
        key: &KeyPair,
        key_pem: Option<&str>,
    ) -> (PathBuf, PathBuf) {
        let cert = params.signed_by(key, &self.issuer).unwrap();
        let cert_path = self.dir.write(&format!("{stem}.pem"), cert.pem());
        let key_pem = key_pem.map_or_else(|| key.serialize_pem(), str::to_string);
        let key_path = self.dir.write(&format!("{stem}.key"), key_pem);
        (cert_path, key_path)
    }

    fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        self.leaf_with(stem, params(names), &key, None)
    }

    fn load(&self, stem: &str, names: &[&str]) -> Arc<Certificate> {
        let (cert, key) = self.leaf(stem, names);
        Arc::new(load(&cert, &key).unwrap())
    }
}

fn params(names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    CertificateParams::new(names).unwrap()
}

// ---- loading -------------------------------------------------------------

#[test]
fn loads_every_supported_key_type_and_encoding() {
    let pki = Pki::new();
    let generated = [
        (
            "p256",
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            None,
        ),
        (
            "p384",
            KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
            None,
        ),
        ("ed25519", KeyPair::generate_for(&PKCS_ED25519).unwrap(), None),
        (
            "rsa-pkcs8",
            KeyPair::from_pkcs8_pem_and_sign_algo(RSA_PKCS8, &PKCS_RSA_SHA256).unwrap(),
            None,
        ),
        (
            "rsa-pkcs1",
            KeyPair::from_pkcs8_pem_and_sign_algo(RSA_PKCS8, &PKCS_RSA_SHA256).unwrap(),
            Some(RSA_PKCS1),
        ),
        ("ec-sec1", KeyPair::from_pem(EC_PKCS8).unwrap(), Some(EC_SEC1)),
    ];
    for (stem, key, key_pem) in generated {
        let (cert, key_path) = pki.leaf_with(stem, params(&["www.example.test"]), &key, key_pem);
        let loaded = load(&cert, &key_path).unwrap_or_else(|problem| panic!("{stem}: {problem}"));
        assert_eq!(loaded.names, ["www.example.test"], "{stem}");
        assert_eq!(loaded.cert_path, cert);
        assert_eq!(loaded.key_path, key_path);
        assert_eq!(loaded.key.cert.len(), 1, "{stem}");
        assert!(
            loaded.not_before < std::time::SystemTime::now()
                && std::time::SystemTime::now() < loaded.not_after
        );
    }
    assert!(
        std::fs::read_to_string(pki.dir.0.join("rsa-pkcs1.key"))
            .unwrap()
            .contains("RSA PRIVATE KEY")
    );
    assert!(
        std::fs::read_to_string(pki.dir.0.join("ec-sec1.key"))
            .unwrap()
            .contains("EC PRIVATE KEY")
    );
}

#[test]
fn keeps_the_whole_chain_leaf_first() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("chain", &["www.example.test"]);
    let leaf_pem = std::fs::read_to_string(&cert).unwrap();
    let chain = pki
        .dir
        .write("fullchain.pem", format!("{leaf_pem}{}", pki.ca_cert.pem()));
    let loaded = load(&chain, &key).unwrap();
    assert_eq!(loaded.key.cert.len(), 2);
    assert_eq!(loaded.key.cert[1], *pki.ca_cert.der());
}

#[test]
fn one_file_holding_both_certificate_and_key_works_for_both() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("both", &["www.example.test"]);
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&cert).unwrap(),
        std::fs::read_to_string(&key).unwrap()
    );
    let path = pki.dir.write("both.pem", both);
    assert_eq!(load(&path, &path).unwrap().names, ["www.example.test"]);
}

#[test]
fn names_are_lowercased_and_fall_back_to_the_cn_only_without_san() {
    let pki = Pki::new();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let (cert, key_path) = pki.leaf_with(
        "mixed",
        params(&["WWW.Example.Test", "*.Apps.example.test"]),
        &key,
        None,
    );
    assert_eq!(
        load(&cert, &key_path).unwrap().names,
        ["www.example.test", "*.apps.example.test"]
    );

    let mut legacy = params(&[]);
    legacy
        .distinguished_name
        .push(DnType::CommonName, "Legacy.Example.Test");
    let (cert, key_path) = pki.leaf_with("legacy", legacy, &key, None);
    assert_eq!(load(&cert, &key_path).unwrap().names, ["legacy.example.test"]);

    // With a SAN, the CN is not a name (RFC 6125): it is often a display name.
    let mut both = params(&["api.example.test"]);
    both.distinguished_name.push(DnType::CommonName, "Example API");
    let (cert, key_path) = pki.leaf_with("both", both, &key, None);
    assert_eq!(load(&cert, &key_path).unwrap().names, ["api.example.test"]);
}

#[test]
fn covers_follows_rfc_6125_wildcards() {
    let pki = Pki::new();
    let www = pki.load("www", &["www.example.test"]);
    let apps = pki.load("apps", &["*.apps.example.test", "apps.example.test"]);
    assert!(www.covers("www.example.test"));
    assert!(www.covers("www.example.test."));
    assert!(!www.covers("example.test"));
    assert!(!www.covers("a.www.example.test"));
    assert!(apps.covers("x.apps.example.test"));
    assert!(apps.covers("apps.example.test"));
    assert!(!apps.covers("a.b.apps.example.test"));
    assert!(!apps.covers("x.example.test"));
    assert!(!apps.covers(".apps.example.test"));
}

// ---- problems ------------------------------------------------------------

/// Loads a pair expected to fail and checks the verdict and that the message
/// and advice are there.
fn problem(cert: &Path, key: &Path) -> Problem {
    let problem = load(cert, key).expect_err("the pair should be refused");
    assert!(!problem.help().is_empty());
    assert!(
        problem.to_string().contains(&problem.path.display().to_string()),
        "{problem}"
    );
    problem
}

#[test]
fn a_missing_file_names_which_one() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("www", &["www.example.test"]);
    let missing = pki.dir.0.join("missing.pem");

    let p = problem(&missing, &key);
    assert_eq!((p.which, p.path.as_path()), (Which::Cert, missing.as_path()));
    assert!(matches!(p.kind, ProblemKind::Unreadable(_)));
    assert_eq!(
        p.to_string(),
        format!("cannot read {}: No such file or directory", missing.display())
    );
    assert_eq!(p.help(), "check the path and that gatehouse may read it");
    assert!(std::error::Error::source(&p).is_some());

    let p = problem(&cert, &missing);
    assert_eq!((p.which, p.path.as_path()), (Which::Key, missing.as_path()));
    assert!(matches!(p.kind, ProblemKind::Unreadable(_)));
}

#[test]
fn empty_files() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("www", &["www.example.test"]);
    let empty = pki.dir.write("empty.pem", "");

    let p = problem(&empty, &key);
    assert_eq!(p.which, Which::Cert);
    assert!(matches!(p.kind, ProblemKind::NoCertificate(Found::Nothing)));
    assert_eq!(
        p.to_string(),
        format!(
            "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            empty.display()
        )
    );

    let p = problem(&cert, &empty);
    assert_eq!(p.which, Which::Key);
    assert!(matches!(p.kind, ProblemKind::NoPrivateKey(Found::Nothing)));
    assert_eq!(
        p.to_string(),
        format!(
            "{} holds no private key \
             (expected -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
            empty.display()
        )
    );
}

#[test]
fn swapped_files_are_recognised() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("www", &["www.example.test"]);

    let p = problem(&key, &cert);
    assert_eq!((p.which, p.path.as_path()), (Which::Cert, key.as_path()));
    assert!(matches!(p.kind, ProblemKind::NoCertificate(Found::PrivateKey)));
    assert!(p.to_string().ends_with("; it holds a private key"), "{p}");
    assert!(p.help().contains("key ="), "{}", p.help());

    let p = problem(&cert, &cert);
    assert_eq!((p.which, p.path.as_path()), (Which::Key, cert.as_path()));
    assert!(matches!(p.kind, ProblemKind::NoPrivateKey(Found::Certificate)));
    assert!(p.help().contains("cert ="), "{}", p.help());
}

#[test]
fn encrypted_keys_and_der_files_get_their_own_advice() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("www", &["www.example.test"]);

    let encrypted = pki.dir.write(
        "enc.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let p = problem(&cert, &encrypted);
    assert!(matches!(p.kind, ProblemKind::NoPrivateKey(Found::EncryptedKey)));
    assert!(p.help().contains("passphrase"), "{}", p.help());

    let der = CertificateParams::new(vec!["www.example.test".to_string()])
        .unwrap()
        .signed_by(&KeyPair::generate().unwrap(), &pki.issuer)
        .unwrap();
    let der_path = pki.dir.write("www.der", der.der());
    let p = problem(&der_path, &key);
    assert!(matches!(p.kind, ProblemKind::NoCertificate(Found::Der)));
    assert!(p.help().contains("openssl x509 -inform der"), "{}", p.help());
}

#[test]
fn garbage_inside_pem_markers() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("www", &["www.example.test"]);

    // Not base64 at all: the PEM layer refuses it.
    let bad_cert = pki.dir.write(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\nthis is @@ not base64!\n-----END CERTIFICATE-----\n",
    );
    let p = problem(&bad_cert, &key);
    assert_eq!(p.which, Which::Cert);
    assert!(matches!(p.kind, ProblemKind::BadPem(_)), "{p}");
    assert!(p.to_string().contains("not valid base64"), "{p}");

    let bad_key = pki.dir.write(
        "bad.key",
        "-----BEGIN PRIVATE KEY-----\nthis is @@ not base64!\n-----END PRIVATE KEY-----\n",
    );
    let p = problem(&cert, &bad_key);
    assert_eq!(p.which, Which::Key);
    assert!(matches!(p.kind, ProblemKind::BadPem(_)), "{p}");

    // Valid base64 of bytes that are no certificate / no key.
    let junk = "-----BEGIN CERTIFICATE-----\n\
                aGVsbG8gd29ybGQsIHRoaXMgaXMgbm90IGEgY2VydGlmaWNhdGU=\n\
                -----END CERTIFICATE-----\n";
    let junk_cert = pki.dir.write("junk.pem", junk);
    let p = problem(&junk_cert, &key);
    assert!(matches!(p.kind, ProblemKind::Unparsable { index: 0, .. }), "{p}");
    assert!(
        p.to_string().starts_with(&format!(
            "{}: the certificate cannot be parsed: ",
            junk_cert.display()
        )),
        "{p}"
    );

    let junk_key = pki
        .dir
        .write("junk.key", junk.replace("CERTIFICATE", "PRIVATE KEY"));
    let p = problem(&cert, &junk_key);
    assert_eq!(p.which, Which::Key);
    assert!(matches!(p.kind, ProblemKind::UnusableKey(_)), "{p}");
    assert!(
        p.to_string()
            .starts_with(&format!("{} is not a usable key: ", junk_key.display())),
        "{p}"
    );
    assert!(!p.to_string().contains("unexpected error"), "{p}");

    // A damaged intermediate is found at load time too, and numbered.
    let chain = pki.dir.write(
        "chain.pem",
        format!("{}{junk}", std::fs::read_to_string(&cert).unwrap()),
    );
    let p = problem(&chain, &key);
    assert!(matches!(p.kind, ProblemKind::Unparsable { index: 1, .. }), "{p}");
    assert!(p.to_string().contains("certificate number 2"), "{p}");

    // A section that never ends.
    let cut = pki.dir.write("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    let p = problem(&cut, &key);
    assert!(matches!(p.kind, ProblemKind::BadPem(_)), "{p}");
    assert!(p.to_string().contains("no -----END CERTIFICATE----- line"), "{p}");
}

#[test]
fn a_key_from_another_pair_is_a_mismatch() {
    let pki = Pki::new();
    let (www_cert, _) = pki.leaf("www", &["www.example.test"]);
    let (_, other_key) = pki.leaf("other", &["www.example.test"]);
    let p = problem(&www_cert, &other_key);
    assert_eq!((p.which, p.path.as_path()), (Which::Key, other_key.as_path()));
    assert!(matches!(&p.kind, ProblemKind::KeyMismatch { cert } if *cert == www_cert));
    assert_eq!(
        p.to_string(),
        format!(
            "the key {} does not belong to the certificate {}",
            other_key.display(),
            www_cert.display()
        )
    );
    assert!(
        p.help()
            .contains("give the key that was generated with this certificate")
    );

    // Different algorithms entirely (RSA key, ECDSA certificate).
    let rsa = pki.dir.write("rsa.key", RSA_PKCS1);
    let p = problem(&www_cert, &rsa);
    assert!(matches!(p.kind, ProblemKind::KeyMismatch { .. }), "{p}");
}

#[test]
fn expired_and_not_yet_valid() {
    let pki = Pki::new();
    let key = KeyPair::generate().unwrap();

    let mut expired = params(&["old.example.test"]);
    expired.not_before = date_time_ymd(2023, 5, 1);
    expired.not_after = date_time_ymd(2024, 5, 1) + Duration::from_secs(12 * 3600);
    let (cert, key_path) = pki.leaf_with("expired", expired, &key, None);
    let p = problem(&cert, &key_path);
    assert_eq!(p.which, Which::Cert);
    assert!(matches!(p.kind, ProblemKind::Expired { .. }));
    assert_eq!(
        p.to_string(),
        format!(
            "the certificate {} expired on 2024-05-01 12:00:00 UTC",
            cert.display()
        )
    );
    assert_eq!(p.help(), "renew the certificate (e.g. certbot renew) and reload");

    let mut future = params(&["new.example.test"]);
    future.not_before = date_time_ymd(2090, 1, 1);
    future.not_after = date_time_ymd(2091, 1, 1);
    let (cert, key_path) = pki.leaf_with("future", future, &key, None);
    let p = problem(&cert, &key_path);
    assert_eq!(p.which, Which::Cert);
    assert!(matches!(p.kind, ProblemKind::NotYetValid { .. }));
    assert_eq!(
        p.to_string(),
        format!(
            "the certificate {} is not valid before 2090-01-01 00:00:00 UTC",
            cert.display()
        )
    );
}

// ---- SNI selection ---------------------------------------------------------

fn farm(pki: &Pki) -> Vec<Arc<Certificate>> {
    vec![
        pki.load("default", &["default.example.test"]),
        pki.load("www", &["www.example.test", "example.test"]),
        pki.load("apps", &["*.apps.example.test"]),
        // Also names www: the earlier certificate must still win.
        pki.load("wide", &["*.example.test", "www.example.test"]),
    ]
}

#[test]
fn select_prefers_exact_then_wildcard_then_the_first() {
    let pki = Pki::new();
    let certs = farm(&pki);
    let cases: &[(Option<&str>, usize)] = &[
        (Some("www.example.test"), 1),
        (Some("WWW.Example.TEST"), 1),
        (Some("www.example.test."), 1),
        (Some("example.test"), 1),
        (Some("x.apps.example.test"), 2),
        (Some("X.APPS.example.test"), 2),
        (Some("apps.example.test"), 3),
        (Some("a.b.apps.example.test"), 0),
        (Some("other.example.test"), 3),
        (Some("unknown.invalid"), 0),
        (Some("192.0.2.1"), 0),
        (Some(""), 0),
        (None, 0),
    ];
    for &(sni, expected) in cases {
        assert_eq!(select(&certs, sni), expected, "select for {sni:?}");
        // The resolver rustls calls must agree with `select`, or the proxy's
        // 421 decisions would be about a certificate the client never saw.
        let resolved = crate::server::resolve_for_test(&certs, sni).unwrap();
        assert!(
            Arc::ptr_eq(&resolved, &certs[expected].key),
            "resolver for {sni:?}"
        );
    }
    assert_eq!(select(&certs[..1], Some("www.example.test")), 0);
}

#[test]
fn server_config_needs_a_certificate() {
    assert!(server_config(&[], &[]).is_err());
}

// ---- handshakes ------------------------------------------------------------

/// Runs a handshake between the two configs entirely in memory and returns
/// both ends, or the first error either side hit.
fn handshake(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<(ServerConnection, ClientConnection), rustls::Error> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut client = ClientConnection::new(client.clone(), name)?;
    let mut server = ServerConnection::new(server.clone())?;
    for _ in 0..20 {
        let mut moved = 0;
        let mut buf = Vec::new();
        while client.wants_write() {
            moved += client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
        }
        buf.clear();
        while server.wants_write() {
            moved += server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        if moved == 0 && !client.is_handshaking() && !server.is_handshaking() {
            return Ok((server, client));
        }
    }
    panic!("the handshake did not finish");
}

fn presented(client: &ClientConnection) -> &[u8] {
    client.peer_certificates().unwrap()[0].as_ref()
}

#[test]
fn handshake_picks_the_certificate_by_sni_and_negotiates_alpn() {
    let pki = Pki::new();
    let certs = farm(&pki);
    let server = server_config(&certs, &[b"h2", b"http/1.1"]).unwrap();
    let ca = pki.ca_file();

    let h2 = client_config(Some(&ca), &[b"h2"]).unwrap();
    for (sni, index) in [("www.example.test", 1), ("x.apps.example.test", 2)] {
        let (server_end, client_end) = handshake(&server, &h2, sni).unwrap();
        assert_eq!(presented(&client_end), certs[index].key.cert[0].as_ref(), "{sni}");
        assert_eq!(server_end.server_name(), Some(sni));
        assert_eq!(client_end.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            client_end.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }

    let http1 = client_config(Some(&ca), &[b"http/1.1"]).unwrap();
    let (_, client_end) = handshake(&server, &http1, "www.example.test").unwrap();
    assert_eq!(client_end.alpn_protocol(), Some(&b"http/1.1"[..]));

    let none = client_config(Some(&ca), &[]).unwrap();
    let (_, client_end) = handshake(&server, &none, "www.example.test").unwrap();
    assert_eq!(client_end.alpn_protocol(), None);
}

#[test]
fn handshake_with_every_key_type_and_tls12() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let rsa = KeyPair::from_pkcs8_pem_and_sign_algo(RSA_PKCS8, &PKCS_RSA_SHA256).unwrap();
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let ed25519 = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let tls12 = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(client_roots(&ca))
        .with_no_client_auth();
    let tls12 = Arc::new(tls12);
    let tls13 = client_config(Some(&ca), &[]).unwrap();
    for (stem, key, key_pem, tls12_too) in [
        ("rsa", &rsa, Some(RSA_PKCS1), true),
        ("p384", &p384, None, true),
        // Ed25519 is TLS 1.3-only in rustls.
        ("ed25519", &ed25519, None, false),
    ] {
        let (cert, key_path) = pki.leaf_with(stem, params(&["www.example.test"]), key, key_pem);
        let server = server_config(&[Arc::new(load(&cert, &key_path).unwrap())], &[]).unwrap();
        let (_, client_end) = handshake(&server, &tls13, "www.example.test").unwrap();
        assert_eq!(
            client_end.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3),
            "{stem}"
        );
        if tls12_too {
            let (_, client_end) = handshake(&server, &tls12, "www.example.test").unwrap();
            assert_eq!(
                client_end.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_2),
                "{stem}"
            );
        }
    }
}

fn client_roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(std::fs::read(ca).map(|pem| pem_der(&pem)).unwrap())
        .unwrap();
    roots
}

fn pem_der(pem: &[u8]) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem).unwrap()
}

#[test]
fn clients_resume_sessions() {
    let pki = Pki::new();
    let server = server_config(&farm(&pki), &[b"h2"]).unwrap();
    let client = client_config(Some(&pki.ca_file()), &[b"h2"]).unwrap();
    let (_, first) = handshake(&server, &client, "www.example.test").unwrap();
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let (_, second) = handshake(&server, &client, "www.example.test").unwrap();
    assert_eq!(second.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    assert!(
        server.ticketer.enabled(),
        "tickets let clients resume on any worker"
    );
}

#[test]
fn a_client_with_another_ca_refuses_the_server() {
    let pki = Pki::new();
    let server = server_config(&farm(&pki), &[]).unwrap();
    let stranger = Pki::with_ca_name("Someone Else's CA");
    let client = client_config(Some(&stranger.ca_file()), &[]).unwrap();
    let error = handshake(&server, &client, "www.example.test").unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{error:?}"
    );
}

#[test]
fn a_client_refuses_a_certificate_for_another_name() {
    // An unknown SNI gets the default certificate, which a verifying client
    // then refuses: the fallback is for clients that send no name.
    let pki = Pki::new();
    let server = server_config(&farm(&pki), &[]).unwrap();
    let client = client_config(Some(&pki.ca_file()), &[]).unwrap();
    let error = handshake(&server, &client, "unknown.invalid").unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })
                | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        ),
        "{error:?}"
    );
}

// ---- client configs --------------------------------------------------------

#[test]
fn client_config_problems_are_about_the_ca_file() {
    let pki = Pki::new();
    let missing = pki.dir.0.join("missing-ca.pem");
    let p = client_config(Some(&missing), &[]).unwrap_err();
    assert_eq!((p.which, p.path.as_path()), (Which::Ca, missing.as_path()));
    assert!(matches!(p.kind, ProblemKind::Unreadable(_)));

    let (_, key) = pki.leaf("www", &["www.example.test"]);
    let p = client_config(Some(&key), &[]).unwrap_err();
    assert_eq!(p.which, Which::Ca);
    assert!(matches!(p.kind, ProblemKind::NoCertificate(Found::PrivateKey)));
    assert!(!p.help().is_empty());

    let ca = pki.ca_file();
    let config = client_config(Some(&ca), &[b"h2", b"http/1.1"]).unwrap();
    assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[test]
fn client_config_without_a_ca_reads_the_system_bundle() {
    let path = crate::client::system_ca_path(None);
    assert_eq!(path, Path::new(SYSTEM_CA_FILE));
    let path = crate::client::system_ca_path(Some("/tmp/bundle.pem".into()));
    assert_eq!(path, Path::new("/tmp/bundle.pem"));
    assert_eq!(
        crate::client::system_ca_path(Some("".into())),
        Path::new(SYSTEM_CA_FILE)
    );

    let system = Path::new(SYSTEM_CA_FILE);
    if std::env::var_os("SSL_CERT_FILE").is_none() && system.exists() {
        assert!(client_config(None, &[]).is_ok());
    }
}
