//! The validated farm. Constructed only by `validate`, so holding a `Farm`
//! means every rule in the config reference already holds.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::{Deref, Range};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// The admin listener (`/metrics`, `/status`, `/reload`); none when absent.
    pub admin: Option<Admin>,
    /// How `serve` stops: in-flight requests get this long after SIGTERM.
    pub drain: Duration,
    /// The `[log_server]` section; none when absent.
    pub log_server: Option<LogServer>,
    /// The `[backup_server]` section; none when absent.
    pub backup_server: Option<BackupServer>,
}

/// The `[backup_server]` section: restic's REST protocol over HTTP(S) into
/// repositories under `dir`.
#[derive(Debug, Clone)]
pub struct BackupServer {
    pub listen: Located<SocketAddr>,
    pub tls: Option<Arc<gatehouse_tls::Certificate>>,
    /// Absolute, or made so against the config file's directory.
    pub dir: Located<PathBuf>,
    /// Users and their bcrypt or {SHA} hashes; none: no authentication.
    pub htpasswd: Option<Located<PathBuf>>,
    /// `/USER/...` belongs to USER alone.
    pub private_repos: bool,
    /// Nothing can be deleted but locks (the default for every user).
    pub append_only: bool,
    /// Uploads are refused (400) unless their SHA-256 is their name, as
    /// rest-server does unless told `--no-verify-upload`.
    pub verify_uploads: bool,
    /// Bytes of all repositories together.
    pub max_size: Option<u64>,
    pub access_log: Option<AccessLog>,
    pub users: Vec<BackupUser>,
}

/// `[backup_server.users.NAME]`.
#[derive(Debug, Clone)]
pub struct BackupUser {
    pub name: Located<String>,
    pub append_only: Option<bool>,
    /// Bytes of this user's repositories.
    pub quota: Option<u64>,
}

/// The `[log_server]` section: syslog over UDP, TCP and TLS into per-host
/// segment files under `dir`.
#[derive(Debug, Clone)]
pub struct LogServer {
    pub udp: Option<Located<SocketAddr>>,
    pub tcp: Option<Located<SocketAddr>>,
    pub tls: Option<LogTls>,
    /// Absolute, or made so against the config file's directory.
    pub dir: Located<PathBuf>,
    /// Segments whose newest line is older than this are deleted.
    pub retention: Option<Duration>,
    /// The oldest segments go while all hosts' segments take more bytes than this.
    pub max_size: Option<u64>,
    /// Names for senders, by address; others are named by their address.
    pub hosts: Vec<(Located<IpAddr>, Located<String>)>,
    /// Longer messages are cut here and flagged.
    pub max_message: usize,
    /// Messages per second per sender address; `None` when turned off.
    pub rate_limit: Option<std::num::NonZeroU32>,
    /// How often what was received is fsync'd: the most a power loss can take.
    pub fsync: Duration,
    /// A segment file is closed and a new one started at this size ...
    pub segment_size: u64,
    /// ... or when its first line is this old.
    pub segment_age: Duration,
}

/// `tls = { listen, cert, key }`: syslog over TLS (RFC 5425).
#[derive(Debug, Clone)]
pub struct LogTls {
    pub listen: Located<SocketAddr>,
    pub cert: Arc<gatehouse_tls::Certificate>,
}

/// The `[admin]` section.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: Located<SocketAddr>,
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
    /// Active checks; every service has them (a tcp check when not configured).
    pub health: Health,
    /// What only the userspace proxy uses; defaults for nat services, where
    /// validation refuses the keys.
    pub proxy: ProxyOptions,
    /// How the proxy talks to the service-level backends.
    pub upstream: UpstreamOptions,
    /// Host and path routes (http only), each with its own backends.
    pub routes: Vec<Route>,
    /// TLS on the listener; none for plain HTTP or TCP.
    pub tls: Option<ListenerTls>,
    /// A plain HTTP listener that answers 308 to the https URL.
    pub redirect_http: Option<Located<Listen>>,
    /// Strict-Transport-Security max-age added to every response (TLS only).
    pub hsts: Option<Duration>,
    /// Upstreams trusted to prefix connections with a PROXY header (v1 or v2),
    /// which then names the client; connections from elsewhere carry none.
    pub accept_proxy: Vec<Located<IpNet>>,
}

/// `tls = [...]`: certificates for the listener, chosen by SNI; the first is
/// served to clients that name none of them.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub certs: Vec<Arc<gatehouse_tls::Certificate>>,
}

/// How the proxy talks to one group of backends.
#[derive(Debug, Clone, Default)]
pub struct UpstreamOptions {
    pub tls: Option<BackendTls>,
    /// A PROXY header first on every backend connection, naming the client.
    pub send_proxy: Option<ProxyVersion>,
    pub protocol: BackendProtocol,
}

/// `backend_tls = { ca, sni }`: HTTPS to the backends.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// The CA file; none means the system's trust store.
    pub ca: Option<PathBuf>,
    /// The name sent and verified; none means the backend's IP address.
    pub sni: Option<String>,
    /// Ready to use, with ALPN for the backend protocol.
    pub config: Arc<gatehouse_tls::rustls::ClientConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendProtocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 (over TLS with ALPN h2, or cleartext with prior knowledge),
    /// one multiplexed connection per backend.
    H2,
}

/// `[[service.route]]`: requests whose Host and path match go to these
/// backends, balanced and health-checked on their own.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its pool's name in status, metrics and logs: "SERVICE/NAME", where NAME
    /// is the route's `name`, else its first host and path.
    pub pool_name: String,
    /// Exact names and "*.example.com" patterns, lowercase; empty means any host.
    pub hosts: Vec<Located<String>>,
    /// A path prefix matched on whole segments ("/shop" matches "/shop" and
    /// "/shop/cart", not "/shopping").
    pub path: Option<Located<String>>,
    pub backends: Vec<Backend>,
    pub balance: Balance,
    pub health: Health,
    pub upstream: UpstreamOptions,
    pub span: Range<usize>,
}

/// One group of backends with its own pool: a service's own backends, or a route's.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub name: &'a str,
    pub backends: &'a [Backend],
    pub balance: Balance,
    pub health: &'a Health,
    pub upstream: &'a UpstreamOptions,
    /// Which route, or none for the service's own backends.
    pub route: Option<usize>,
}

/// `health = { ... }`: active checks with rise/fall, as HAProxy's `check inter
/// rise fall` (whose defaults, 2s/2/3, these are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            check: Check::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The backend accepts a TCP connection.
    Tcp,
    /// `GET path` answers with status `expect`.
    Http { path: String, expect: u16 },
}

/// Options of the userspace proxy (modes http and tcp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    pub access_log: Option<AccessLog>,
    pub timeouts: Timeouts,
    /// Client connections open at once; more wait in the kernel's backlog.
    pub max_connections: u32,
    /// Largest request head (request line and headers) in bytes; more is 431.
    pub max_header: usize,
    /// Largest request body in bytes (413 beyond it); none means unlimited,
    /// which still costs bounded memory because bodies are streamed.
    pub max_body: Option<u64>,
}

impl Default for ProxyOptions {
    fn default() -> ProxyOptions {
        ProxyOptions {
            access_log: None,
            timeouts: Timeouts::default(),
            max_connections: 10_000,
            max_header: 64 * 1024,
            max_body: None,
        }
    }
}

/// `timeouts = { ... }`, named as nginx and HAProxy users know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection to a backend.
    pub connect: Duration,
    /// Receiving a request's head from the client (the slowloris bound).
    pub header: Duration,
    /// A keep-alive client connection with no request, or a tcp-mode
    /// connection with no traffic either way.
    pub idle: Duration,
    /// From the request head to the end of the response head from the backend.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(3),
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            request: Duration::from_secs(60),
        }
    }
}

/// Where a service's access log goes (Apache combined format plus backend and
/// upstream time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    File(PathBuf),
    /// RFC 3164 over UDP, as nginx's `access_log syslog:server=`.
    Syslog(String),
    Stdout,
}

impl Service {
    /// Every group of backends, each with a pool of its own: the service's own
    /// backends first (when it has any), then its routes in file order.
    pub fn targets(&self) -> Vec<Target<'_>> {
        let own = (!self.backends.is_empty()).then(|| Target {
            name: &self.name.value,
            backends: &self.backends,
            balance: self.balance,
            health: &self.health,
            upstream: &self.upstream,
            route: None,
        });
        own.into_iter()
            .chain(self.routes.iter().enumerate().map(|(i, r)| Target {
                name: &r.pool_name,
                backends: &r.backends,
                balance: r.balance,
                health: &r.health,
                upstream: &r.upstream,
                route: Some(i),
            }))
            .collect()
    }

    /// Where the proxy binds: the listen address, or every address (IPv6 and
    /// IPv4) when only a port is given.
    pub fn bind_addr(&self) -> SocketAddr {
        let ip = self.listen.addr.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        SocketAddr::new(ip, self.listen.port)
    }

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
    /// The backend with the fewest connections in flight (proxy only).
    LeastConn,
    /// The less loaded of two backends drawn at random (proxy only).
    RandomTwo,
    /// A cookie names the backend; new clients round-robin (http only).
    Cookie,
}

impl Balance {
    pub const ALL: &[(&str, Balance)] = &[
        ("round-robin", Balance::RoundRobin),
        ("weighted", Balance::Weighted),
        ("source-hash", Balance::SourceHash),
        ("maglev", Balance::Maglev),
        ("random", Balance::Random),
        ("least-conn", Balance::LeastConn),
        ("random-two", Balance::RandomTwo),
        ("cookie", Balance::Cookie),
    ];

    pub fn as_str(self) -> &'static str {
        Balance::ALL
            .iter()
            .find(|(_, b)| *b == self)
            .map_or("?", |(name, _)| name)
    }

    /// Methods for which a backend's weight means something.
    pub fn honours_weights(self) -> bool {
        matches!(
            self,
            Balance::Weighted | Balance::SourceHash | Balance::Maglev | Balance::LeastConn | Balance::Cookie
        )
    }

    /// Whether the kernel can do it (counters and hashes), or only the proxy
    /// (which knows connections in flight and sees cookies).
    pub fn in_kernel(self) -> bool {
        !matches!(self, Balance::LeastConn | Balance::RandomTwo | Balance::Cookie)
    }

    /// Whether the proxy does it (Maglev's point is the kernel's stateless
    /// consistency; the proxy's source-hash is already consistent).
    pub fn in_proxy(self) -> bool {
        self != Balance::Maglev
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: Located<SocketAddr>,
    /// 1..=256, 1 when not given.
    pub weight: u32,
    /// What status, metrics and the stickiness cookie call it.
    pub name: Option<Located<String>>,
}

impl Backend {
    /// The name when given, else the address: how people see the backend.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.value.clone(),
            None => self.addr.value.to_string(),
        }
    }
}
