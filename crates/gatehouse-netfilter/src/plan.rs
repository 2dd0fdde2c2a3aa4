//! From a `Farm` to the ruleset the gateway must hold.
//!
//! The policy, in order of evaluation (see README's "Rules the gateway holds"):
//! - input: drop by default; replies, loopback, SSH from the LAN and from
//!   `admin`, pings (rate-limited from the WAN), the ports of proxy services.
//! - forward: drop by default (with a rate-limited log line); replies, new
//!   connections we DNAT'd to a published service, LAN to WAN.
//! - nat: DNAT each nat service through its backend map; masquerade LAN to WAN;
//!   masquerade hairpin traffic so a LAN host can use the public address too.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};

use gatehouse_config::{Balance, Farm, Gateway, Service};
use ipnet::IpNet;

use crate::ir::{
    Action, Chain, CtState, Dispatch, Hook, IcmpType, Match, Per, Rule, Ruleset, SlotKey, Verdict,
};
use crate::{maglev, slots};

/// What the live table holds for each backend map, slot by slot; used so that
/// re-applying a Maglev service keeps the flows of backends that remain.
pub type LiveMaps = BTreeMap<String, Vec<SocketAddrV4>>;

/// Pings answered from the WAN side, per second (burst allows a normal `ping`
/// and a traceroute's probes through; a flood is cut to this rate).
const PING_RATE: u32 = 5;
const PING_BURST: u32 = 10;
/// Dropped-forward log lines per minute: enough to see a scan, not a disk filler.
const DROP_LOG_RATE: u32 = 10;
const DROP_LOG_BURST: u32 = 5;
pub const DROP_LOG_PREFIX: &str = "gatehouse forward drop: ";

pub fn ruleset(farm: &Farm, live: &LiveMaps) -> Ruleset {
    ruleset_in_rotation(farm, live, &InRotation::new())
}

/// Which backends of each nat service (by name; flags in file order) health
/// checks keep in rotation. A service not listed has every backend in.
pub type InRotation = BTreeMap<String, Vec<bool>>;

/// The ruleset with each map as `gatehouse serve`'s health checks left it, so
/// that re-applying an unchanged file under serve changes nothing (a map
/// planned all-up would differ from the live one whenever a backend is down,
/// and replacing the table would put the dead backend back for a moment and
/// reset the round-robin counters).
pub fn ruleset_in_rotation(farm: &Farm, live: &LiveMaps, rotation: &InRotation) -> Ruleset {
    let dispatches: Vec<Dispatch> = farm
        .nat_services()
        .map(|s| dispatch(s, live, rotation.get(&s.name.value)))
        .collect();
    let Some(gateway) = &farm.gateway else {
        // No gateway, no kernel rules: proxy-only farms run without a table.
        return Ruleset {
            chains: Vec::new(),
            dispatches,
        };
    };
    let nat_services: Vec<&Service> = farm.nat_services().collect();
    let proxy_services: Vec<&Service> = farm.proxy_services().collect();
    Ruleset {
        chains: vec![
            input(gateway, &proxy_services, farm),
            forward(gateway),
            prerouting(gateway, &nat_services),
            postrouting(gateway, !nat_services.is_empty()),
        ],
        dispatches,
    }
}

fn replies_first() -> Vec<Rule> {
    vec![
        Rule::new(
            vec![Match::CtState(vec![CtState::Established, CtState::Related])],
            Action::Accept,
        ),
        Rule::new(vec![Match::CtState(vec![CtState::Invalid])], Action::Drop),
    ]
}

fn input(g: &Gateway, proxy_services: &[&Service], farm: &Farm) -> Chain {
    let wan = vec![g.wan.value.clone()];
    let lan = vec![g.lan.value.clone()];
    let mut rules = replies_first();
    rules.push(Rule::new(vec![Match::Iif(vec!["lo".into()])], Action::Accept));
    if !g.trusted.is_empty() {
        let trusted = g.trusted.iter().map(|t| t.value.clone()).collect();
        rules.push(Rule::new(vec![Match::Iif(trusted)], Action::Accept).comment("trusted interfaces"));
    }
    rules.push(Rule::new(
        vec![Match::Icmp(IcmpType::V6NeighbourDiscovery)],
        Action::Accept,
    ));
    rules.push(
        Rule::new(
            vec![Match::Iif(lan.clone()), Match::TcpDport(vec![g.ssh_port])],
            Action::Accept,
        )
        .comment("ssh from the lan"),
    );
    for nets in by_family(g.admin.iter().map(|a| a.value)) {
        rules.push(
            Rule::new(
                vec![
                    Match::Iif(wan.clone()),
                    Match::Saddr(nets),
                    Match::TcpDport(vec![g.ssh_port]),
                ],
                Action::Accept,
            )
            .comment("ssh from admin"),
        );
    }
    for echo in [IcmpType::EchoRequest, IcmpType::V6EchoRequest] {
        rules.push(Rule::new(
            vec![Match::Iif(lan.clone()), Match::Icmp(echo)],
            Action::Accept,
        ));
    }
    if g.ping {
        // Each family has its own budget (a limit belongs to its rule).
        for echo in [IcmpType::EchoRequest, IcmpType::V6EchoRequest] {
            rules.push(Rule::new(
                vec![
                    Match::Iif(wan.clone()),
                    Match::Icmp(echo),
                    Match::Limit {
                        rate: PING_RATE,
                        per: Per::Second,
                        burst: PING_BURST,
                    },
                ],
                Action::Accept,
            ));
        }
    }
    for s in proxy_services {
        let redirect = s.redirect_http.iter().map(|r| (&r.value, " redirect_http"));
        for (listen, what) in std::iter::once((&s.listen.value, "")).chain(redirect) {
            let mut matches = Vec::new();
            if let Some(addr) = listen.addr {
                matches.push(Match::Daddr(addr));
            }
            matches.push(Match::TcpDport(vec![listen.port]));
            rules.push(Rule::new(matches, Action::Accept).comment(format!("service {}{what}", s.name.value)));
        }
    }
    // Syslog and backups come from the web servers, on the LAN; never from
    // the internet.
    let log = farm.log_server.as_ref();
    let listeners = [
        (log.and_then(|l| l.udp.as_ref()), false, "log_server udp"),
        (log.and_then(|l| l.tcp.as_ref()), true, "log_server tcp"),
        (
            log.and_then(|l| l.tls.as_ref()).map(|t| &t.listen),
            true,
            "log_server tls",
        ),
        (
            farm.backup_server.as_ref().map(|b| &b.listen),
            true,
            "backup_server",
        ),
    ];
    for (listen, tcp, what) in listeners {
        let Some(listen) = listen else { continue };
        let port = vec![listen.port()];
        let mut matches = vec![Match::Iif(lan.clone())];
        if !listen.ip().is_unspecified() {
            matches.push(Match::Daddr(listen.ip()));
        }
        matches.push(if tcp {
            Match::TcpDport(port)
        } else {
            Match::UdpDport(port)
        });
        rules.push(Rule::new(matches, Action::Accept).comment(format!("{what} from the lan")));
    }
    Chain {
        hook: Hook::Input,
        policy: Verdict::Drop,
        rules,
    }
}

fn forward(g: &Gateway) -> Chain {
    let mut rules = replies_first();
    if !g.trusted.is_empty() {
        let trusted = g.trusted.iter().map(|t| t.value.clone()).collect();
        rules.push(Rule::new(vec![Match::Iif(trusted)], Action::Accept).comment("trusted interfaces"));
    }
    rules.push(Rule::new(vec![Match::CtStatusDnat], Action::Accept).comment("published services"));
    rules.push(Rule::new(
        vec![
            Match::Iif(vec![g.lan.value.clone()]),
            Match::Oif(g.wan.value.clone()),
        ],
        Action::Accept,
    ));
    rules.push(Rule::new(
        vec![Match::Limit {
            rate: DROP_LOG_RATE,
            per: Per::Minute,
            burst: DROP_LOG_BURST,
        }],
        Action::Log(DROP_LOG_PREFIX.into()),
    ));
    Chain {
        hook: Hook::Forward,
        policy: Verdict::Drop,
        rules,
    }
}

fn prerouting(g: &Gateway, services: &[&Service]) -> Chain {
    let mut rules = Vec::new();
    for (index, s) in services.iter().enumerate() {
        let port = Match::TcpDport(vec![s.listen.port]);
        let comment = format!("service {}", s.name.value);
        match s.listen.addr {
            // One address: the same rule serves the WAN and hairpinning LAN hosts.
            Some(addr) => {
                rules.push(Rule::new(vec![Match::Daddr(addr), port], Action::Dnat(index)).comment(comment))
            }
            // Every WAN address, which may change (DHCP): match "ours", not a
            // literal address, so the ruleset survives a new lease.
            None => {
                rules.push(
                    Rule::new(
                        vec![
                            Match::Iif(vec![g.wan.value.clone()]),
                            Match::DaddrLocal,
                            port.clone(),
                        ],
                        Action::Dnat(index),
                    )
                    .comment(comment.clone()),
                );
                rules.push(
                    Rule::new(
                        vec![
                            Match::Iif(vec![g.lan.value.clone()]),
                            Match::DaddrLocalElsewhere,
                            port,
                        ],
                        Action::Dnat(index),
                    )
                    .comment(format!("{comment} (hairpin)")),
                );
            }
        }
    }
    Chain {
        hook: Hook::Prerouting,
        policy: Verdict::Accept,
        rules,
    }
}

fn postrouting(g: &Gateway, hairpin: bool) -> Chain {
    let lan = vec![g.lan.value.clone()];
    let mut rules = Vec::new();
    if g.masquerade {
        rules.push(Rule::new(
            vec![
                Match::Iif(lan.clone()),
                Match::Oif(g.wan.value.clone()),
                Match::Ipv4,
            ],
            Action::Masquerade,
        ));
    }
    if hairpin {
        // A LAN host reaching the public address is DNAT'd to a LAN neighbour,
        // which would answer it directly; masquerading makes the answer come
        // back through us, where the DNAT can be undone.
        rules.push(
            Rule::new(
                vec![
                    Match::Iif(lan),
                    Match::Oif(g.lan.value.clone()),
                    Match::CtStatusDnat,
                ],
                Action::Masquerade,
            )
            .comment("hairpin"),
        );
    }
    Chain {
        hook: Hook::Postrouting,
        policy: Verdict::Accept,
        rules,
    }
}

/// Networks grouped by address family: one rule per family keeps the rule
/// readable in nft and expressible in iptables.
fn by_family(nets: impl Iterator<Item = IpNet>) -> Vec<Vec<IpNet>> {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = nets.partition(|n| matches!(n, IpNet::V4(_)));
    [v4, v6].into_iter().filter(|v| !v.is_empty()).collect()
}

fn dispatch(s: &Service, live: &LiveMaps, up: Option<&Vec<bool>>) -> Dispatch {
    let backends = nat_backends(s);
    let up = match up {
        Some(up) if up.len() == backends.len() => up.clone(),
        _ => vec![true; backends.len()],
    };
    let previous = live.get(&map_name(s)).map(Vec::as_slice);
    Dispatch {
        ident: s.ident(),
        balance: s.balance,
        key: slot_key(s.balance),
        slots: slot_table(s.balance, &backends, &up, previous),
        backends,
    }
}

/// The name of a nat service's backend map.
pub(crate) fn map_name(s: &Service) -> String {
    format!("backends_{}", s.ident())
}

/// A nat service's backends and weights, in file order.
pub(crate) fn nat_backends(s: &Service) -> Vec<(SocketAddrV4, u32)> {
    s.backends
        .iter()
        .map(|b| match b.addr.value {
            SocketAddr::V4(addr) => (addr, b.weight),
            SocketAddr::V6(_) => unreachable!("config validation refuses IPv6 nat backends"),
        })
        .collect()
}

fn slot_key(balance: Balance) -> SlotKey {
    match balance {
        Balance::RoundRobin | Balance::Weighted => SlotKey::Counter,
        Balance::Random => SlotKey::Random,
        Balance::SourceHash => SlotKey::SourceHash,
        Balance::Maglev => SlotKey::FlowHash,
        // Validation refuses proxy-only methods on nat services; were one to
        // slip through, plain round-robin is the safe reading.
        Balance::LeastConn | Balance::RandomTwo | Balance::Cookie => SlotKey::Counter,
    }
}

/// How many slots a nat service's map has: fixed by the configured backends,
/// whatever their health, so the DNAT rule never changes.
pub(crate) fn slot_count(balance: Balance, backends: &[(SocketAddrV4, u32)]) -> usize {
    match balance {
        Balance::Maglev => maglev::TABLE_SIZE,
        _ => slots::slot_count(&backends.iter().map(|b| b.1).collect::<Vec<_>>()),
    }
}

/// A nat service's slot table with the backends flagged in `up` in rotation
/// (none up: all of them, failing open). `previous` is the live map slot by
/// slot: Maglev keeps each slot whose backend stays in rotation.
pub(crate) fn slot_table(
    balance: Balance,
    backends: &[(SocketAddrV4, u32)],
    up: &[bool],
    previous: Option<&[SocketAddrV4]>,
) -> Vec<usize> {
    match balance {
        Balance::Maglev => maglev_slots(backends, up, previous),
        _ => slots::table(&backends.iter().map(|b| b.1).collect::<Vec<_>>(), up),
    }
}

fn maglev_slots(
    backends: &[(SocketAddrV4, u32)],
    up: &[bool],
    previous: Option<&[SocketAddrV4]>,
) -> Vec<usize> {
    assert_eq!(backends.len(), up.len(), "one up flag per backend");
    let fail_open = !up.contains(&true);
    let in_rotation: Vec<usize> = (0..backends.len()).filter(|&i| up[i] || fail_open).collect();
    let ids: Vec<String> = in_rotation.iter().map(|&i| backends[i].0.to_string()).collect();
    let members: Vec<maglev::Member<'_>> = ids
        .iter()
        .zip(&in_rotation)
        .map(|(id, &i)| maglev::Member {
            id,
            weight: backends[i].1,
        })
        .collect();
    let previous: Option<Vec<Option<usize>>> = previous
        .filter(|slots| slots.len() == maglev::TABLE_SIZE)
        .map(|slots| {
            slots
                .iter()
                .map(|addr| in_rotation.iter().position(|&i| backends[i].0 == *addr))
                .collect()
        });
    maglev::table(&members, previous.as_deref())
        .into_iter()
        .map(|member| in_rotation[member])
        .collect()
}
