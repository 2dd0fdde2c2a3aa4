//! The keys of HTTPS and virtual hosting: certificates checked when the file
//! is (with the error at the cert or key value), routes, redirect, PROXY
//! protocol and backend TLS, each valid and refused with its position.

mod common;

use std::path::{Path, PathBuf};

use common::{at, error, errors, farm};
use gatehouse_config::{BackendProtocol, ProxyVersion};

/// Certificates written by rcgen into a directory of this test's own.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(test: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("gh-config-tls-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Certs { dir }
    }

    /// A self-signed pair for `names`, valid now (or expired), as NAME.pem
    /// and NAME.key; returns their paths.
    fn pair(&self, name: &str, names: &[&str], expired: bool) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("names");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (path(&cert_path), path(&key_path))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn sites(tls: &str, rest: &str) -> String {
    format!(
        "[[service]]\nname = \"sites\"\nlisten = \"443\"\nmode = \"http\"\n{tls}\n{rest}\n\
         [[service.route]]\nhost = \"www.example.test\"\nbackends = [\"10.0.0.21:80\"]\n\
         [[service.route]]\nhost = [\"app.example.test\", \"*.apps.example.test\"]\npath = \"/shop/\"\n\
         backends = [\"10.0.0.22:8080\"]\nbalance = \"least-conn\"\n"
    )
}

#[test]
fn certificates_and_routes_load() {
    let certs = Certs::new("load");
    let (www_cert, www_key) = certs.pair("www", &["www.example.test"], false);
    let (app_cert, app_key) = certs.pair("app", &["app.example.test", "*.apps.example.test"], false);
    let text = sites(
        &format!(
            "tls = [ {{ cert = \"{www_cert}\", key = \"{www_key}\" }},\n        {{ cert = \"{app_cert}\", key = \"{app_key}\" }} ]"
        ),
        "redirect_http = \"80\"\nhsts = \"365d\"\naccept_proxy = [\"10.0.0.5\", \"192.0.2.0/24\"]",
    );
    let farm = farm(&text);
    let s = &farm.services[0];
    let tls = s.tls.as_ref().expect("tls");
    assert_eq!(tls.certs.len(), 2);
    assert_eq!(tls.certs[0].names, ["www.example.test"]);
    assert!(tls.certs[1].covers("x.apps.example.test"));
    assert_eq!(s.redirect_http.as_ref().map(|r| r.port), Some(80));
    assert_eq!(s.hsts.map(|d| d.as_secs()), Some(365 * 86400));
    assert_eq!(s.accept_proxy.len(), 2);
    assert!(s.backends.is_empty(), "routes alone are enough");
    assert_eq!(s.routes.len(), 2);
    assert_eq!(s.routes[0].pool_name, "sites/www.example.test");
    assert_eq!(s.routes[1].pool_name, "sites/app.example.test/shop");
    assert_eq!(s.routes[1].path.as_ref().map(|p| p.value.as_str()), Some("/shop"));
    assert_eq!(s.routes[1].balance.as_str(), "least-conn");
    let targets = s.targets();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[1].route, Some(1));
    assert!(
        farm.summary()
            .contains("route app.example.test *.apps.example.test /shop*")
    );
}

#[test]
fn relative_certificate_paths_are_relative_to_the_file() {
    let certs = Certs::new("relative");
    certs.pair("www", &["www.example.test"], false);
    let text = sites("tls = [{ cert = \"www.pem\", key = \"www.key\" }]", "");
    let file = certs.dir.join("gatehouse.toml");
    std::fs::write(&file, &text).expect("write config");
    let farm = gatehouse_config::Farm::load(&file).expect("valid: paths beside the file");
    assert_eq!(farm.services[0].tls.as_ref().map(|t| t.certs.len()), Some(1));
}

#[test]
fn certificate_problems_name_the_file_and_the_value() {
    let certs = Certs::new("problems");
    let (www_cert, www_key) = certs.pair("www", &["www.example.test"], false);
    let (_, other_key) = certs.pair("other", &["other.example.test"], false);
    let (old_cert, old_key) = certs.pair("old", &["old.example.test"], true);
    let missing = path(&certs.dir.join("missing.pem"));

    let cases = [
        (
            format!("tls = [{{ cert = \"{missing}\", key = \"{www_key}\" }}]"),
            format!("cannot read {missing}: No such file or directory"),
            format!("\"{missing}\""),
        ),
        (
            format!("tls = [{{ cert = \"{www_key}\", key = \"{www_key}\" }}]"),
            format!("{www_key} holds no PEM certificate"),
            format!("cert = \"{www_key}\""),
        ),
        (
            format!("tls = [{{ cert = \"{www_cert}\", key = \"{other_key}\" }}]"),
            format!("the key {other_key} does not belong to the certificate {www_cert}"),
            format!("\"{other_key}\""),
        ),
        (
            format!("tls = [{{ cert = \"{old_cert}\", key = \"{old_key}\" }}]"),
            format!("the certificate {old_cert} expired on 2021-01-01"),
            format!("\"{old_cert}\""),
        ),
    ];
    for (tls, message, value) in cases {
        let text = sites(&tls, "");
        let (got, location) = error(&text);
        assert!(got.contains(&message), "{got:?} should contain {message:?}");
        // The value itself is marked (for the key given as cert, the cert value).
        assert_eq!(location, at_value(&text, &value), "{message}");
        let d = errors(&text);
        let help = d.items[0].help.as_deref().unwrap_or("");
        assert!(!help.is_empty(), "{message}: a help line says what to do");
    }
}

/// Where a value (the part in quotes of `needle`) starts.
fn at_value(text: &str, needle: &str) -> String {
    let offset = text.find(needle).expect("needle in text") + needle.find('"').expect("a quoted value");
    let line = text[..offset].matches('\n').count() + 1;
    let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{col}")
}

#[test]
fn a_failed_certificate_is_one_error_not_three() {
    let text = sites(
        "tls = [{ cert = \"/nonexistent/a.pem\", key = \"/nonexistent/a.key\" }]",
        "redirect_http = \"80\"\nhsts = \"1d\"",
    );
    let d = errors(&text);
    assert_eq!(d.items.len(), 1, "{}", d.render(false));
}

#[test]
fn keys_that_need_tls_or_http_say_so() {
    let text = sites("", "redirect_http = \"80\"");
    assert_eq!(
        error(&text),
        (
            "redirect_http needs an http service with tls".to_owned(),
            at(&text, "\"80\"")
        )
    );
    let text = sites("", "hsts = \"1d\"");
    assert_eq!(
        error(&text),
        ("hsts needs tls on the service".to_owned(), at(&text, "\"1d\""))
    );
    let nat = "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\n\n[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\n\
               backends = [\"10.0.0.11:80\"]\ntls = [{ cert = \"a.pem\", key = \"a.key\" }]\n";
    let (message, _) = error(nat);
    assert_eq!(message, "tls applies to the userspace proxy, not to nat services");

    let tcp = "[[service]]\nname = \"db\"\nlisten = \"5432\"\nmode = \"tcp\"\nbackends = [\"10.0.0.11:5432\"]\n\
               [[service.route]]\nhost = \"a.test\"\nbackends = [\"10.0.0.12:5432\"]\n";
    assert_eq!(
        error(tcp),
        (
            "routes need mode = \"http\"".to_owned(),
            at(tcp, "[[service.route]]")
        )
    );
}

#[test]
fn route_rules() {
    let route = |body: &str| {
        format!(
            "[[service]]\nname = \"sites\"\nlisten = \"8080\"\nmode = \"http\"\nbackends = [\"10.0.0.20:80\"]\n\
             [[service.route]]\n{body}\n"
        )
    };
    let text = route("backends = [\"10.0.0.21:80\"]");
    assert_eq!(error(&text).0, "a route needs a host or a path");

    let text = route("host = \"www.example.test:443\"\nbackends = [\"10.0.0.21:80\"]");
    assert_eq!(
        error(&text),
        (
            "host \"www.example.test:443\" has a port; routes match the name alone".to_owned(),
            at(&text, "\"www.example.test:443\"")
        )
    );
    let text = route("host = \"a.*.example.test\"\nbackends = [\"10.0.0.21:80\"]");
    assert!(error(&text).0.contains("has a '*' other than a leading"));

    let text = route("path = \"shop\"\nbackends = [\"10.0.0.21:80\"]");
    assert_eq!(
        error(&text),
        (
            "path \"shop\" is not a URL path prefix".to_owned(),
            at(&text, "\"shop\"")
        )
    );
    let text = route("host = \"a.test\"\nbackends = []");
    assert_eq!(error(&text).0, "a route needs at least one backend");

    let twice = "[[service]]\nname = \"sites\"\nlisten = \"8080\"\nmode = \"http\"\n\
                 [[service.route]]\nhost = [\"a.test\", \"b.test\"]\nbackends = [\"10.0.0.21:80\"]\n\
                 [[service.route]]\nhost = \"B.test\"\npath = \"/\"\nbackends = [\"10.0.0.22:80\"]\n";
    let (message, location) = error(twice);
    assert_eq!(message, "b.test with path / is routed twice");
    // The second route's table.
    let second = at(twice, "host = \"B.test\"");
    let line: usize = second.split(':').next().unwrap_or("0").parse().unwrap_or(0);
    assert_eq!(location, format!("{}:1", line - 1));

    let none = "[[service]]\nname = \"sites\"\nlisten = \"8080\"\nmode = \"http\"\n";
    assert_eq!(error(none).0, "a service needs at least one backend");
}

#[test]
fn upstream_options() {
    let certs = Certs::new("upstream");
    let (ca, _) = certs.pair("ca", &["backend.example.test"], false);
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"8080\"\nmode = \"http\"\nbackends = [\"10.0.0.20:443\"]\n\
         backend_tls = {{ ca = \"{ca}\", sni = \"Backend.Example.test\" }}\nbackend_protocol = \"h2\"\n\
         [[service.route]]\npath = \"/legacy\"\nbackends = [\"10.0.0.21:80\"]\nsend_proxy = \"v2\"\n"
    );
    let farm = farm(&text);
    let s = &farm.services[0];
    let tls = s.upstream.tls.as_ref().expect("backend tls");
    assert_eq!(tls.sni.as_deref(), Some("backend.example.test"));
    assert_eq!(tls.config.alpn_protocols, vec![b"h2".to_vec()]);
    assert_eq!(s.upstream.protocol, BackendProtocol::H2);
    assert_eq!(s.routes[0].upstream.send_proxy, Some(ProxyVersion::V2));
    assert_eq!(s.routes[0].upstream.protocol, BackendProtocol::Http1);

    let bad = |keys: &str| {
        format!(
            "[[service]]\nname = \"sites\"\nlisten = \"8080\"\nmode = \"http\"\nbackends = [\"10.0.0.20:443\"]\n{keys}\n"
        )
    };
    let text = bad("send_proxy = \"v3\"");
    assert_eq!(
        error(&text),
        (
            "unknown PROXY protocol version \"v3\"".to_owned(),
            at(&text, "\"v3\"")
        )
    );
    let text = bad("send_proxy = \"v1\"\nbackend_protocol = \"h2\"");
    assert_eq!(
        error(&text).0,
        "send_proxy cannot go with backend_protocol = \"h2\""
    );
    let text = bad("backend_tls = { ca = \"/nonexistent/ca.pem\" }");
    assert_eq!(
        error(&text),
        (
            "cannot read /nonexistent/ca.pem: No such file or directory".to_owned(),
            at(&text, "\"/nonexistent/ca.pem\"")
        )
    );
    let text = bad("backend_tls = { sni = \"10.0.0.20\" }");
    assert_eq!(error(&text).0, "sni \"10.0.0.20\" is not a DNS name");
    let text = bad("accept_proxy = [\"10.0.0.300\"]");
    assert_eq!(
        error(&text),
        (
            "\"10.0.0.300\" is not an address or network".to_owned(),
            at(&text, "\"10.0.0.300\"")
        )
    );
}

#[test]
fn a_redirect_port_is_a_port_like_any_other() {
    let certs = Certs::new("redirect");
    let (cert, key) = certs.pair("www", &["www.example.test"], false);
    let text = format!(
        "[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"http\"\nbackends = [\"10.0.0.20:80\"]\n\n\
         [[service]]\nname = \"sites\"\nlisten = \"443\"\nmode = \"http\"\nbackends = [\"10.0.0.20:80\"]\n\
         tls = [{{ cert = \"{cert}\", key = \"{key}\" }}]\nredirect_http = \"80\"\n"
    );
    let (message, location) = error(&text);
    assert_eq!(message, "port 80 is already used by service \"web\"");
    assert_eq!(location, at_value(&text, "redirect_http = \"80\""));
}

/// README's tour step 8 runs examples/https.toml with certificates made in
/// /tmp/gh-tls: with certificates there, it is a valid farm of two routes.
#[test]
fn the_https_example_is_valid() {
    let certs = Certs::new("example");
    certs.pair("www", &["www.example.test"], false);
    certs.pair("app", &["app.example.test"], false);
    let text = include_str!("../../../examples/https.toml")
        .replace("/tmp/gh-tls/", &format!("{}/", certs.dir.display()));
    let farm = farm(&text);
    let s = &farm.services[0];
    assert_eq!(s.tls.as_ref().map(|t| t.certs.len()), Some(2));
    assert!(s.redirect_http.is_some());
    let pools: Vec<&str> = s.routes.iter().map(|r| r.pool_name.as_str()).collect();
    assert_eq!(pools, ["sites/www.example.test", "sites/app.example.test"]);
}
