//! `gatehouse serve` terminating TLS as a user runs it: two names on one
//! listener, each with its certificate and its route, checked with curl
//! against our own CA; new certificates taken on SIGHUP without cutting a
//! download in flight; and `gatehouse check` refusing bad certificate files
//! at their place in the config.

mod support;

#[path = "../../gatehouse-proxy/tests/proxy/certs.rs"]
mod certs;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use certs::{Ca, Leaf};
use gatehouse_lab::loopback::{Nginx, Page, TempDir, free_port};
use support::{EXE, Process, require, show};

/// curl; (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "5"])
        .args(args)
        .output()
        .expect("running curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl https://NAME:PORT/PATH on 127.0.0.1, verified against `ca`.
fn curl_https(name: &str, port: u16, path: &str, ca: &Path, extra: &[&str]) -> (i32, String, String) {
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}{path}");
    let ca = ca.display().to_string();
    let mut args = extra.to_vec();
    args.extend(["--resolve", &resolve, "--cacert", &ca, &url]);
    curl(&args)
}

const BIG: usize = 1_500_000;

/// A backend answering `/big` with BIG bytes and anything else with "app";
/// `asked` turns true when /big is requested.
fn download_backend() -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let asked = Arc::new(AtomicBool::new(false));
    let flag = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    let mut first = String::new();
                    if reader.read_line(&mut first).map_or(true, |n| n == 0) {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    let written = if first.starts_with("GET /big ") {
                        flag.store(true, Ordering::Relaxed);
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
                        stream
                            .write_all(head.as_bytes())
                            .and_then(|()| stream.write_all(&vec![b'x'; BIG]))
                    } else {
                        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\napp\n")
                    };
                    if written.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, asked)
}

/// Put `from`'s files where `to`'s are, each by a rename (as a deploy would).
fn replace(to: &Leaf, from: &Leaf) {
    for (src, dst) in [(&from.cert, &to.cert), (&from.key, &to.key)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).expect("copy");
        std::fs::rename(&tmp, dst).expect("rename");
    }
}

#[test]
fn serve_terminates_tls_for_two_names_and_takes_new_certificates_on_sighup() {
    require(&["nginx", "curl"]);
    let dir = TempDir::new("reload");
    let (one, two) = (Ca::new(&dir.0, "one"), Ca::new(&dir.0, "two"));
    let www = one.leaf("www", &["www.example.test"]);
    let app = one.leaf("app", &["app.example.test"]);
    let nginx = Nginx::start(Page::Text("www".into())).expect("nginx");
    let (backend, asked) = download_backend();
    let port = free_port().expect("port");
    let config = dir.0.join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\n\
             tls = [{}, {}]\n\n\
             [[service.route]]\nhost = \"www.example.test\"\nbackends = [\"{}\"]\n\n\
             [[service.route]]\nhost = \"app.example.test\"\nbackends = [\"{backend}\"]\n",
            www.toml(),
            app.toml(),
            nginx.addr()
        ),
    )
    .expect("config");
    let mut serve = Process::spawn(
        &["serve".as_ref(), "-c".as_ref(), config.as_os_str()],
        dir.0.join("serve.log"),
    );
    serve.wait_for_log("serving:", Duration::from_secs(10));

    let w = ["-v", "-w", "|%{ssl_verify_result}"];
    for (name, body) in [("www.example.test", "www\n"), ("app.example.test", "app\n")] {
        let (code, out, err) = curl_https(name, port, "/", &one.ca, &w);
        assert_eq!(
            (code, out.as_str()),
            (0, format!("{body}|0").as_str()),
            "{name}: {err}"
        );
        assert!(
            err.contains(&format!("subject: CN={name}; O=one")),
            "{name}: {err}"
        );
    }

    // A download at 500 kB/s: about 3 s for BIG.
    let download = std::thread::spawn(move || {
        let ca = one.ca.clone();
        let out = curl_https(
            "app.example.test",
            port,
            "/big",
            &ca,
            &[
                "--max-time",
                "20",
                "--limit-rate",
                "500k",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{http_code}",
            ],
        );
        (out, Instant::now(), one)
    });
    let started = Instant::now();
    while !asked.load(Ordering::Relaxed) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the download did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));

    replace(&www, &two.leaf("www-two", &["www.example.test"]));
    replace(&app, &two.leaf("app-two", &["app.example.test"]));
    serve.signal("HUP");
    let reloaded = Instant::now();
    loop {
        let (code, _, err) = curl_https("www.example.test", port, "/", &two.ca, &[]);
        if code == 0 {
            break;
        }
        assert!(
            reloaded.elapsed() < Duration::from_secs(5),
            "no new certificate 5 s after SIGHUP: {err}\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = reloaded.elapsed();
    for (name, body) in [("www.example.test", "www\n"), ("app.example.test", "app\n")] {
        let (code, out, err) = curl_https(name, port, "/", &two.ca, &w);
        assert_eq!(
            (code, out.as_str()),
            (0, format!("{body}|0").as_str()),
            "{name}: {err}"
        );
        assert!(
            err.contains(&format!("subject: CN={name}; O=two")),
            "{name}: {err}"
        );
    }

    let ((code, out, err), finished, one) = download.join().expect("download thread");
    assert_eq!(
        (code, out.as_str()),
        (0, format!("{BIG} 200").as_str()),
        "the download was cut by the reload: {err}\n{}",
        serve.log()
    );
    eprintln!(
        "new certificate served {took:?} after SIGHUP; the download ended {:?} after SIGHUP",
        finished - reloaded
    );
    assert!(
        finished > reloaded + took,
        "the download ended before the new certificate was served: not a test of sparing it"
    );
    // A new connection no longer gets the old certificate.
    let (code, _, err) = curl_https("www.example.test", port, "/", &one.ca, &[]);
    assert_eq!(code, 60, "{err}");

    // A broken certificate on the next SIGHUP: refused, the last good one stays.
    std::fs::write(&www.cert, "not a certificate\n").expect("write");
    serve.signal("HUP");
    serve.wait_for_log("reload refused", Duration::from_secs(5));
    let (code, out, err) = curl_https("www.example.test", port, "/", &two.ca, &[]);
    assert_eq!((code, out.as_str()), (0, "www\n"), "{err}");
}

/// Line and column (from 1) of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in the text");
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    (line, column)
}

fn check(config: &Path) -> Output {
    Command::new(EXE)
        .arg("check")
        .arg("-c")
        .arg(config)
        .output()
        .expect("running gatehouse check")
}

#[test]
fn check_refuses_bad_certificate_files_at_their_place_in_the_config() {
    let dir = TempDir::new("check");
    let ca = Ca::new(&dir.0, "check");
    let www = ca.leaf("www", &["www.example.test"]);
    let app = ca.leaf("app", &["app.example.test"]);
    let first = ca.leaf("first", &["first.example.test"]);
    let expired = ca.expired_leaf("expired", &["old.example.test"]);
    let missing = dir.0.join("missing.pem");
    let not_pem = dir.0.join("not-pem.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").expect("write");
    let s = |p: &Path| p.display().to_string();
    // (cert, key, which value is blamed, what the message says)
    let cases = [
        (
            s(&missing),
            s(&www.key),
            s(&missing),
            format!("cannot read {}: No such file or directory", s(&missing)),
        ),
        (
            s(&not_pem),
            s(&www.key),
            s(&not_pem),
            format!("{} holds no PEM certificate", s(&not_pem)),
        ),
        (
            s(&www.cert),
            s(&app.key),
            s(&app.key),
            format!(
                "the key {} does not belong to the certificate {}",
                s(&app.key),
                s(&www.cert)
            ),
        ),
        (
            s(&expired.cert),
            s(&expired.key),
            s(&expired.cert),
            format!(
                "the certificate {} expired on 2021-01-01 00:00:00 UTC",
                s(&expired.cert)
            ),
        ),
    ];
    let config = dir.0.join("gatehouse.toml");
    for (cert, key, blamed, message) in cases {
        // A good pair first: only the bad one is blamed.
        let text = format!(
            "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:8443\"\nmode = \"http\"\n\
             backends = [\"127.0.0.1:8080\"]\ntls = [\n    {},\n    {{ cert = \"{cert}\", key = \"{key}\" }},\n]\n",
            first.toml()
        );
        std::fs::write(&config, &text).expect("config");
        let out = check(&config);
        assert_eq!(out.status.code(), Some(2), "{message}\n{}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&message), "expected {message:?}:\n{stderr}");
        // The position of the blamed value (its opening quote).
        let needle = format!("{} = \"{blamed}\"", if blamed == cert { "cert" } else { "key" });
        let (line, column) = position(&text, &needle);
        let at = format!("gatehouse.toml:{line}:{}", column + needle.find('"').unwrap());
        assert!(stderr.contains(&at), "expected {at}:\n{stderr}");
    }

    // The good pairs pass.
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:8443\"\nmode = \"http\"\n\
         backends = [\"127.0.0.1:8080\"]\ntls = [{}, {}]\n",
        www.toml(),
        app.toml()
    );
    std::fs::write(&config, text).expect("config");
    let out = check(&config);
    assert!(out.status.success(), "{}", show(&out));
}
