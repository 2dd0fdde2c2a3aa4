//! The ruleset written as nftables text: gatehouse's one table, and the
//! transaction that replaces it.
//!
//! Everything lives in `table inet gatehouse`. Replacing it is one `nft -f`
//! batch (`add`, `delete`, define), which the kernel commits whole or not at all,
//! and which touches no other table: Docker's, firewalld's and hand-made rules
//! keep working.

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::ir::{
    Action, Chain, CtState, Dispatch, FLOW_HASH_SEED, Hook, IcmpType, Match, Per, Rule, Ruleset,
    SOURCE_HASH_SEED, SlotKey, Verdict,
};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "gatehouse";

/// `table inet gatehouse { ... }`.
pub fn table(ruleset: &Ruleset) -> String {
    let mut out = format!("table {FAMILY} {TABLE} {{\n");
    let mut first = true;
    for dispatch in &ruleset.dispatches {
        if !first {
            out.push('\n');
        }
        first = false;
        map(&mut out, dispatch);
    }
    for chain in &ruleset.chains {
        if !first {
            out.push('\n');
        }
        first = false;
        self::chain(&mut out, chain, &ruleset.dispatches);
    }
    out.push_str("}\n");
    out
}

/// A batch that replaces gatehouse's table with `definition` (a `table ...`
/// text, possibly empty for "no table"). The leading `add` makes the `delete`
/// valid when no table exists yet.
pub fn replace_script(definition: &str) -> String {
    format!("add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{definition}")
}

fn map(out: &mut String, d: &Dispatch) {
    let _ = writeln!(out, "\tmap {} {{", d.map_name());
    let _ = writeln!(out, "\t\ttypeof {} : ip daddr . tcp dport", typeof_key(d));
    out.push_str("\t\telements = { ");
    for slot in 0..d.slots.len() {
        let addr = d.slot_addr(slot);
        if slot > 0 {
            out.push_str(if slot % 4 == 0 { ",\n\t\t\t     " } else { ", " });
        }
        let _ = write!(out, "{slot} : {} . {}", addr.ip(), addr.port());
    }
    out.push_str(" }\n\t}\n");
}

/// The map's key type, written as an expression of that type. nft 1.0.6 lists
/// and reads back `typeof jhash ...` maps wrongly, so every map is declared with
/// the counter expression, whose type (a 32-bit integer) is the same.
fn typeof_key(d: &Dispatch) -> String {
    format!("numgen inc mod {}", d.slots.len())
}

/// The expression whose value, modulo the slot count, picks the slot.
fn key_expr(d: &Dispatch) -> String {
    let size = d.slots.len();
    match d.key {
        SlotKey::Counter => format!("numgen inc mod {size}"),
        SlotKey::Random => format!("numgen random mod {size}"),
        SlotKey::SourceHash => format!("jhash ip saddr mod {size} seed 0x{SOURCE_HASH_SEED:x}"),
        SlotKey::FlowHash => format!("jhash ip saddr . tcp sport mod {size} seed 0x{FLOW_HASH_SEED:x}"),
    }
}

fn chain(out: &mut String, chain: &Chain, dispatches: &[Dispatch]) {
    let name = chain.hook.nft_name();
    let (kind, priority) = match chain.hook {
        Hook::Input | Hook::Forward => ("filter", "filter"),
        Hook::Prerouting => ("nat", "dstnat"),
        Hook::Postrouting => ("nat", "srcnat"),
    };
    let policy = match chain.policy {
        Verdict::Accept => "accept",
        Verdict::Drop => "drop",
    };
    let _ = writeln!(out, "\tchain {name} {{");
    let _ = writeln!(
        out,
        "\t\ttype {kind} hook {name} priority {priority}; policy {policy};"
    );
    for r in &chain.rules {
        let _ = writeln!(out, "\t\t{}", rule(r, dispatches));
    }
    out.push_str("\t}\n");
}

fn rule(rule: &Rule, dispatches: &[Dispatch]) -> String {
    let mut parts: Vec<String> = rule.matches.iter().map(matcher).collect();
    parts.push(match &rule.action {
        Action::Accept => "accept".into(),
        Action::Drop => "drop".into(),
        Action::Log(prefix) => format!("log prefix \"{prefix}\""),
        Action::Masquerade => "masquerade".into(),
        Action::Dnat(index) => {
            let d = &dispatches[*index];
            format!("dnat ip to {} map @{}", key_expr(d), d.map_name())
        }
    });
    if let Some(comment) = &rule.comment {
        parts.push(format!("comment \"{comment}\""));
    }
    parts.join(" ")
}

fn matcher(m: &Match) -> String {
    match m {
        Match::Iif(names) => format!("iifname {}", set(names.iter().map(|n| format!("\"{n}\"")))),
        Match::Oif(name) => format!("oifname \"{name}\""),
        Match::CtState(states) => {
            let names: Vec<&str> = states
                .iter()
                .map(|s| match s {
                    CtState::Established => "established",
                    CtState::Related => "related",
                    CtState::Invalid => "invalid",
                })
                .collect();
            format!("ct state {}", names.join(","))
        }
        Match::CtStatusDnat => "ct status dnat".into(),
        Match::Ipv4 => "meta nfproto ipv4".into(),
        Match::Saddr(nets) => {
            let family = match nets.first() {
                Some(IpNet::V6(_)) => "ip6",
                _ => "ip",
            };
            // A single host is written as an address, as nft lists it.
            let host_or_net = |n: &IpNet| {
                if n.prefix_len() == n.max_prefix_len() {
                    n.addr().to_string()
                } else {
                    n.to_string()
                }
            };
            format!("{family} saddr {}", set(nets.iter().map(host_or_net)))
        }
        Match::Daddr(IpAddr::V4(addr)) => format!("ip daddr {addr}"),
        Match::Daddr(IpAddr::V6(addr)) => format!("ip6 daddr {addr}"),
        Match::DaddrLocal => "fib daddr type local".into(),
        Match::DaddrLocalElsewhere => "fib daddr type local fib daddr . iif type != local".into(),
        Match::TcpDport(ports) => format!("tcp dport {}", set(ports.iter().map(|p| p.to_string()))),
        Match::UdpDport(ports) => format!("udp dport {}", set(ports.iter().map(|p| p.to_string()))),
        Match::Icmp(IcmpType::EchoRequest) => "icmp type echo-request".into(),
        Match::Icmp(IcmpType::V6EchoRequest) => "icmpv6 type echo-request".into(),
        Match::Icmp(IcmpType::V6NeighbourDiscovery) => {
            "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }"
                .into()
        }
        Match::Limit { rate, per, burst } => {
            let per = match per {
                Per::Second => "second",
                Per::Minute => "minute",
            };
            // nft leaves its default burst (5) unsaid; so do we, so that a
            // listing of the live table reads exactly like the plan.
            if *burst == 5 {
                format!("limit rate {rate}/{per}")
            } else {
                format!("limit rate {rate}/{per} burst {burst} packets")
            }
        }
    }
}

/// One value bare, several in braces, as nft writes them.
fn set(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}
