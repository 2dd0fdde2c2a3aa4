//! Certificates and rustls configurations for gatehouse: listener TLS
//! termination (SNI picks the certificate) and TLS to backends.
//!
//! Most TLS trouble in a gateway is a bad file, not a bad handshake: a key that
//! belongs to another certificate, an expired certificate, the two files
//! swapped. So everything is checked when the config is loaded ([`load`]), and
//! every [`Problem`] names the file at fault ([`Which`]) and says what to do
//! ([`Problem::help`]), which config validation shows at the `cert =` or
//! `key =` value in the config file.
//!
//! One crypto provider, ring, is used everywhere ([`provider`]); rustls is
//! re-exported so that every crate shares its version.

mod certificate;
mod client;
mod problem;
mod server;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

pub use rustls;

pub use certificate::{Certificate, load};
pub use client::{SYSTEM_CA_FILE, client_config};
pub use problem::{Found, Problem, ProblemKind, Which};
pub use server::{select, server_config};

/// The rustls crypto provider used everywhere: ring with rustls' default
/// suites (TLS 1.3, and TLS 1.2 with ECDHE and AEAD only). One shared value,
/// so configs made at different times agree.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
