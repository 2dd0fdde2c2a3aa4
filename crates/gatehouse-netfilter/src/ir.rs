//! The ruleset as data: what the gateway must do, independent of the text it
//! is written in. `plan` builds it from a `Farm`; `nft` and `iptables` write it
//! out. Matches are named for their meaning ("destination is one of our
//! addresses") rather than their syntax, because the two dialects spell them
//! differently.

use std::net::{IpAddr, SocketAddrV4};

use gatehouse_config::Balance;
use ipnet::IpNet;

/// Everything gatehouse installs: the chains of its one table and the backend
/// maps the DNAT rules look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
    pub dispatches: Vec<Dispatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub hook: Hook,
    pub policy: Verdict,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Input,
    Forward,
    Prerouting,
    Postrouting,
}

impl Hook {
    /// The chain's name in gatehouse's table (nft) and the built-in chain (iptables).
    pub fn nft_name(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Prerouting => "prerouting",
            Hook::Postrouting => "postrouting",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Rule {
        Rule {
            matches,
            action,
            comment: None,
        }
    }

    pub fn comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Arrived on one of these interfaces.
    Iif(Vec<String>),
    /// Leaves through this interface.
    Oif(String),
    CtState(Vec<CtState>),
    /// The connection was destination-NATed (by one of our DNAT rules, or a
    /// neighbour's such as Docker's published ports).
    CtStatusDnat,
    /// IPv4 packets only (masquerade: LAN IPv6 is routed, not NATed).
    Ipv4,
    /// Source address within any of these networks (all of one family).
    Saddr(Vec<IpNet>),
    /// Destination is exactly this address.
    Daddr(IpAddr),
    /// Destination is one of this host's own addresses.
    DaddrLocal,
    /// Destination is local but not an address of the interface the packet
    /// came in on: a LAN host reaching the gateway's WAN address (hairpin).
    DaddrLocalElsewhere,
    TcpDport(Vec<u16>),
    UdpDport(Vec<u16>),
    Icmp(IcmpType),
    Limit {
        rate: u32,
        per: Per,
        burst: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    Established,
    Related,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpType {
    EchoRequest,
    V6EchoRequest,
    /// What IPv6 needs to work at all: neighbour discovery and router adverts.
    /// Errors (packet too big and friends) are `related` to a connection.
    V6NeighbourDiscovery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    /// Log and continue (the chain's policy then decides).
    Log(String),
    /// Send to a backend of `dispatches[index]`.
    Dnat(usize),
    Masquerade,
}

/// How one nat service picks a backend for a new connection: a key computed
/// from the packet, reduced modulo the number of slots, looked up in a map
/// from slot to backend. Changing backends rewrites the map, never the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// The service's identifier (its name with '-' as '_').
    pub ident: String,
    pub balance: Balance,
    /// The configured backends and weights, in file order.
    pub backends: Vec<(SocketAddrV4, u32)>,
    pub key: SlotKey,
    /// `slots[i]` is the backend (index into `backends`) for key value `i`.
    pub slots: Vec<usize>,
}

impl Dispatch {
    pub fn map_name(&self) -> String {
        format!("backends_{}", self.ident)
    }

    pub fn slot_addr(&self, slot: usize) -> SocketAddrV4 {
        self.backends[self.slots[slot]].0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKey {
    /// A counter incremented per new connection.
    Counter,
    /// A random number per new connection.
    Random,
    /// A hash of the source address.
    SourceHash,
    /// A hash of source address and port (one flow).
    FlowHash,
}

/// Fixed hash seeds, so two gateways with the same config send the same client
/// to the same backend (an active/standby pair keeps its mapping on failover).
pub const SOURCE_HASH_SEED: u32 = 0x6761_7465;
pub const FLOW_HASH_SEED: u32 = 0x686f_7573;
