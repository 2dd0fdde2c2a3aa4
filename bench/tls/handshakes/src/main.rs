//! New TLS handshakes per second against one server, without session resumption.
//!
//!     tls-handshakes ADDR SNI SECONDS PARALLEL
//!
//! PARALLEL threads each loop for SECONDS: connect, full TLS 1.3 handshake
//! (TLS_AES_128_GCM_SHA256, X25519 only; resumption disabled, so every handshake
//! is a full one), close_notify, half-close, read until the server closes, and
//! again. The server's certificate chain is not validated (it is self-signed;
//! `openssl s_time` and wrk do not validate either), but the handshake signature
//! is checked, as every TLS 1.3 client must.
//!
//! Prints, after the first handshake:
//!     negotiated TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519
//! and at the end:
//!     handshakes 41234 seconds 10.003 errors 0
//!     first error: ...           (only if there was one)
//!
//! Written for bench/tls.sh because `openssl s_time` (OpenSSL 3.0) spends about
//! 1 ms of client CPU per handshake, so one client core cannot keep one server
//! core busy; this client spends a fraction of that.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, Error, SignatureScheme};

/// Accepts any certificate chain, but checks the handshake signature with the
/// certificate's key.
#[derive(Debug)]
struct SignatureOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn one(config: &Arc<ClientConfig>, addr: &str, name: &ServerName<'static>, first: &Once) -> Result<(), String> {
    let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut conn = ClientConnection::new(config.clone(), name.clone()).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| format!("handshake: {e}"))?;
    }
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut sock).map_err(|e| format!("write: {e}"))?;
    }
    first.call_once(|| {
        println!(
            "negotiated {:?} {:?} {:?}",
            conn.protocol_version().expect("after the handshake"),
            conn.negotiated_cipher_suite().expect("after the handshake").suite(),
            conn.negotiated_key_exchange_group().map(|g| g.name()).expect("after the handshake"),
        );
    });
    // Half-close and wait for the server to close: no reset, no unread data.
    let _ = sock.shutdown(Shutdown::Write);
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(format!("waiting for the server to close: {e}")),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: tls-handshakes ADDR SNI SECONDS PARALLEL");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let name = ServerName::try_from(args[2].clone()).unwrap_or_else(|e| {
        eprintln!("tls-handshakes: bad SNI {:?}: {e}", args[2]);
        std::process::exit(2)
    });
    let seconds: f64 = args[3].parse().expect("SECONDS must be a number");
    let parallel: usize = args[4].parse().expect("PARALLEL must be a whole number");

    let provider = CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![ring::kx_group::X25519],
        ..ring::default_provider()
    };
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with this provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignatureOnly(algorithms)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    let config = Arc::new(config);

    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let first = Arc::new(Once::new());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..parallel)
        .map(|_| {
            let (config, addr, name) = (config.clone(), addr.clone(), name.clone());
            let (done, errors, first_error, first) = (done.clone(), errors.clone(), first_error.clone(), first.clone());
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    match one(&config, &addr, &name, &first) {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(e);
                            // Do not spin on a refusing server.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread panicked");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "handshakes {} seconds {:.3} errors {}",
        done.load(Ordering::Relaxed),
        elapsed,
        errors.load(Ordering::Relaxed)
    );
    if let Some(e) = first_error.lock().unwrap().take() {
        let _ = writeln!(out, "first error: {e}");
    }
}
