//! The validated farm. Constructed only by `validate`, so holding a `Farm`
//! means every rule in the config reference already holds.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, Range};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};

use crate::diagnostic::{Diagnostic, Diagnostics, Source};

/// A value and the byte range of the file it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub span: Range<usize>,
}

impl<T> Located<T> {
    pub fn new(value: T, span: Range<usize>) -> Located<T> {
        Located { value, span }
    }
}

impl<T> Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

#[derive(Debug, Clone)]
pub struct Farm {
    pub source: Arc<Source>,
    pub gateway: Option<Gateway>,
    pub services: Vec<Service>,
}

impl Farm {
    /// Wrap complaints found after parsing (on the host, at apply time) so they
    /// render against this file like parse-time ones.
    pub fn diagnostics(&self, items: Vec<Diagnostic>) -> Diagnostics {
        Diagnostics::new(self.source.clone(), items)
    }

    /// Services the kernel data plane serves.
    pub fn nat_services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().filter(|s| s.mode == Mode::Nat)
    }

    /// Services the userspace proxy serves.
    pub fn proxy_services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().filter(|s| s.mode != Mode::Nat)
    }
}

/// The `[gateway]` section: the box with two NICs.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub wan: Located<String>,
    pub lan: Located<String>,
    /// When given, backends are checked against it by `check` without the host;
    /// otherwise against the LAN interface's addresses at apply time.
    pub lan_subnet: Option<Located<Ipv4Net>>,
    pub masquerade: bool,
    pub admin: Vec<Located<IpNet>>,
    pub ssh_port: u16,
    pub ping: bool,
    /// Interfaces whose traffic gatehouse leaves to others (docker0, a VPN).
    pub trusted: Vec<Located<String>>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: Located<String>,
    pub listen: Located<Listen>,
    pub mode: Mode,
    pub balance: Balance,
    pub backends: Vec<Backend>,
}

impl Service {
    /// The name made safe for nftables and iptables identifiers (which do not
    /// allow '-'; names never contain '_', so the mapping is one-to-one).
    pub fn ident(&self) -> String {
        self.name.replace('-', "_")
    }
}

/// Where a service accepts connections: every address of the gateway's WAN side
/// (`addr: None`), or one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: Option<IpAddr>,
    pub port: u16,
}

impl Listen {
    /// Whether two listeners would claim the same packets.
    pub fn overlaps(&self, other: &Listen) -> bool {
        self.port == other.port
            && match (self.addr, other.addr) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            None => write!(f, "{}", self.port),
            Some(IpAddr::V6(addr)) => write!(f, "[{addr}]:{}", self.port),
            Some(addr) => write!(f, "{addr}:{}", self.port),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kernel DNAT through nftables maps.
    Nat,
    /// Userspace HTTP proxy.
    Http,
    /// Userspace TCP proxy.
    Tcp,
}

impl Mode {
    pub const ALL: &[(&str, Mode)] = &[("nat", Mode::Nat), ("http", Mode::Http), ("tcp", Mode::Tcp)];

    pub fn as_str(self) -> &'static str {
        Mode::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(name, _)| name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each new connection to the next backend in turn.
    RoundRobin,
    /// Round-robin in proportion to weights (smooth, like nginx's).
    Weighted,
    /// One client address always to the same backend.
    SourceHash,
    /// Consistent hashing of address and port: removing a backend moves only
    /// its own flows.
    Maglev,
    /// Uniformly random.
    Random,
}

impl Balance {
    pub const ALL: &[(&str, Balance)] = &[
        ("round-robin", Balance::RoundRobin),
        ("weighted", Balance::Weighted),
        ("source-hash", Balance::SourceHash),
        ("maglev", Balance::Maglev),
        ("random", Balance::Random),
    ];

    pub fn as_str(self) -> &'static str {
        Balance::ALL
            .iter()
            .find(|(_, b)| *b == self)
            .map_or("?", |(name, _)| name)
    }

    /// Methods for which a backend's weight means something.
    pub fn honours_weights(self) -> bool {
        matches!(self, Balance::Weighted | Balance::SourceHash | Balance::Maglev)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: Located<SocketAddr>,
    /// 1..=256, 1 when not given.
    pub weight: u32,
}
