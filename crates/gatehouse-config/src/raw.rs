//! The file as written: serde structs that mirror gatehouse.toml key for key,
//! with the position of every value kept so validation can point at it.
//!
//! Values whose meaning depends on other keys (mode, balance, addresses) stay
//! strings here; `validate` turns them into the typed `Farm`. Unknown keys are
//! refused here by `deny_unknown_fields`, so a typo never silently does nothing.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub gateway: Option<Spanned<Gateway>>,
    #[serde(default)]
    pub service: Vec<Spanned<Service>>,
    pub admin: Option<Spanned<Admin>>,
    pub serve: Option<Spanned<Serve>>,
    pub log_server: Option<Spanned<LogServer>>,
    pub backup_server: Option<Spanned<BackupServer>>,
}

/// `[backup_server]`: restic's REST protocol.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct BackupServer {
    pub listen: Spanned<String>,
    pub tls: Option<Spanned<CertPair>>,
    pub dir: Spanned<String>,
    pub htpasswd: Option<Spanned<String>>,
    pub private_repos: Option<Spanned<bool>>,
    pub append_only: Option<Spanned<bool>>,
    pub verify_uploads: Option<Spanned<bool>>,
    pub max_size: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub users: Option<Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<BackupUser>>>>,
}

/// `[backup_server.users.NAME]`: what differs for one user.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct BackupUser {
    pub append_only: Option<Spanned<bool>>,
    pub quota: Option<Spanned<String>>,
}

/// `[log_server]`: syslog in, per-host files out.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct LogServer {
    pub udp: Option<Spanned<String>>,
    pub tcp: Option<Spanned<String>>,
    pub tls: Option<Spanned<LogTls>>,
    pub dir: Spanned<String>,
    pub retention: Option<Spanned<String>>,
    pub max_size: Option<Spanned<String>>,
    /// Sender address → name; the keys keep their positions for diagnostics.
    pub hosts: Option<Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>>,
    pub max_message: Option<Spanned<String>>,
    /// Messages per second per sender; 0 turns the limit off.
    pub rate_limit: Option<Spanned<i64>>,
    pub fsync: Option<Spanned<String>>,
    pub segment_size: Option<Spanned<String>>,
    pub segment_age: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct LogTls {
    pub listen: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Spanned<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    pub drain: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub check: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub expect: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub request: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub wan: Spanned<String>,
    pub lan: Spanned<String>,
    pub lan_subnet: Option<Spanned<String>>,
    pub masquerade: Option<bool>,
    #[serde(default)]
    pub admin: Vec<Spanned<String>>,
    pub ssh_port: Option<Spanned<i64>>,
    pub ping: Option<bool>,
    #[serde(default)]
    pub trusted: Vec<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Spanned<String>,
    /// `"80"`, `"198.51.100.1:80"`, or a bare integer.
    pub listen: Spanned<toml::Value>,
    pub mode: Option<Spanned<String>>,
    pub balance: Option<Spanned<String>>,
    /// Optional when the service has routes (a request matching none is 404).
    pub backends: Option<Spanned<Vec<Spanned<Backend>>>>,
    pub health: Option<Spanned<Health>>,
    pub access_log: Option<Spanned<String>>,
    pub timeouts: Option<Spanned<Timeouts>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_header: Option<Spanned<String>>,
    pub max_body: Option<Spanned<String>>,
    /// `[{ cert = "...", key = "..." }, ...]`: TLS on the listener, chosen by SNI.
    pub tls: Option<Spanned<Vec<Spanned<CertPair>>>>,
    /// `"80"` or `"ADDR:80"`: a plain listener answering 308 to https.
    pub redirect_http: Option<Spanned<toml::Value>>,
    /// Strict-Transport-Security max-age, e.g. "365d".
    pub hsts: Option<Spanned<String>>,
    /// Upstreams (addresses or networks) whose connections start with a PROXY header.
    pub accept_proxy: Option<Spanned<Vec<Spanned<String>>>>,
    // How the proxy talks to the service-level backends (routes have their own).
    // Not a flattened struct: serde's flatten buffers values and loses positions.
    pub backend_tls: Option<Spanned<BackendTls>>,
    /// "v1" or "v2".
    pub send_proxy: Option<Spanned<String>>,
    /// "http/1.1" or "h2".
    pub backend_protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub route: Vec<Spanned<Route>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    pub ca: Option<Spanned<String>>,
    pub sni: Option<Spanned<String>>,
}

/// `[[service.route]]`: requests for some hosts and/or a path prefix go to
/// their own backends.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<Spanned<String>>,
    /// A name or a list of names; "*.example.com" matches one label.
    pub host: Option<Spanned<toml::Value>>,
    pub path: Option<Spanned<String>>,
    pub backends: Spanned<Vec<Spanned<Backend>>>,
    pub balance: Option<Spanned<String>>,
    pub health: Option<Spanned<Health>>,
    pub backend_tls: Option<Spanned<BackendTls>>,
    pub send_proxy: Option<Spanned<String>>,
    pub backend_protocol: Option<Spanned<String>>,
}

/// A backend is either `"10.0.0.11:80"` or
/// `{ addr = "10.0.0.11:80", weight = 3, name = "web1" }`.
///
/// Written by hand rather than with `#[serde(untagged)]` because untagged enums
/// buffer their input and lose the positions we need for diagnostics.
#[derive(Debug)]
pub struct Backend {
    pub addr: String,
    /// Where the address is when written as a table; a bare string's position
    /// is the element's own, which the enclosing `Spanned` carries.
    pub addr_span: Option<std::ops::Range<usize>>,
    pub weight: Option<Spanned<i64>>,
    pub name: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BackendVisitor)
    }
}

struct BackendVisitor;

const BACKEND_FIELDS: &[&str] = &["addr", "weight", "name"];

impl<'de> Visitor<'de> for BackendVisitor {
    type Value = Backend;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a backend "ADDR:PORT" or a table { addr = "ADDR:PORT", weight = N, name = "NAME" }"#)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Backend, E> {
        Ok(Backend {
            addr: value.to_owned(),
            addr_span: None,
            weight: None,
            name: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Backend, A::Error> {
        let mut addr = None;
        let mut weight = None;
        let mut name = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "addr" if addr.is_some() => return Err(de::Error::duplicate_field("addr")),
                "addr" => addr = Some(map.next_value::<Spanned<String>>()?),
                "weight" if weight.is_some() => return Err(de::Error::duplicate_field("weight")),
                "weight" => weight = Some(map.next_value::<Spanned<i64>>()?),
                "name" if name.is_some() => return Err(de::Error::duplicate_field("name")),
                "name" => name = Some(map.next_value::<Spanned<String>>()?),
                other => return Err(de::Error::unknown_field(other, BACKEND_FIELDS)),
            }
        }
        let addr: Spanned<String> = addr.ok_or_else(|| de::Error::missing_field("addr"))?;
        Ok(Backend {
            addr_span: Some(addr.span()),
            addr: addr.into_inner(),
            weight,
            name,
        })
    }
}

/// Parse the file's text; a syntax or shape error comes back with its byte range.
pub fn parse(text: &str) -> Result<File, (String, Option<std::ops::Range<usize>>)> {
    toml::from_str::<File>(text).map_err(|err| (err.message().to_owned(), err.span()))
}
