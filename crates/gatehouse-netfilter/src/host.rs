//! The machine the rules go on: running `nft`, `ip` and `sysctl` there
//! (optionally inside a network namespace, as the lab does), and what we learn
//! from it (its interfaces and addresses) to check a farm against reality
//! before anything is installed.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use gatehouse_config::{Diagnostic, Farm, Mode};
use ipnet::{IpNet, Ipv4Net};

/// Where commands run: this host, or a named network namespace on it.
#[derive(Debug, Clone, Default)]
pub struct Host {
    netns: Option<String>,
}

impl Host {
    pub fn local() -> Host {
        Host { netns: None }
    }

    pub fn in_netns(name: impl Into<String>) -> Host {
        Host {
            netns: Some(name.into()),
        }
    }

    pub fn describe(&self) -> String {
        match &self.netns {
            Some(ns) => format!("network namespace {ns}"),
            None => "this host".to_owned(),
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Run `program args`, feeding `stdin`; stdout on success, otherwise an
    /// error carrying what the program said.
    pub fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut command = self.command(program);
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| missing_tool(program, e))?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().context("stdin pipe")?;
            // A writer thread, so a program that answers before reading all
            // its input cannot deadlock us on a full pipe.
            let input = input.to_owned();
            let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
            let output = child.wait_with_output()?;
            let _ = writer.join();
            return finish(program, args, output);
        }
        finish(program, args, child.wait_with_output()?)
    }

    pub fn nft(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        self.run("nft", args, stdin)
    }

    /// Interfaces and their addresses, from `ip -json addr`.
    pub fn facts(&self) -> anyhow::Result<HostFacts> {
        let json = self.run("ip", &["-json", "addr", "show"], None)?;
        HostFacts::from_ip_json(&json)
    }

    pub fn enable_ip_forwarding(&self) -> anyhow::Result<()> {
        self.run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"], None)
            .map(drop)
            .context("enabling IPv4 forwarding")
    }
}

fn missing_tool(program: &str, error: std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::NotFound {
        let package = match program {
            "nft" => "nftables",
            "ip" => "iproute2",
            "sysctl" => "procps",
            "unshare" => "util-linux",
            other => other,
        };
        anyhow::anyhow!(
            "`{program}` is not installed: install the {package} package (apt-get install {package})"
        )
    } else {
        anyhow::anyhow!("cannot run {program}: {error}")
    }
}

fn finish(program: &str, args: &[&str], output: std::process::Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim_end();
    if stderr.contains("Operation not permitted") {
        bail!("`{program}` was refused ({stderr}): run gatehouse as root (it needs CAP_NET_ADMIN)");
    }
    if let Some(rest) = stderr.strip_prefix("exec of \"")
        && rest.contains("No such file")
    {
        return Err(missing_tool(program, std::io::ErrorKind::NotFound.into()));
    }
    bail!(
        "`{program} {}` failed ({}):\n{stderr}",
        args.join(" "),
        output.status
    )
}

/// What the farm's checks need to know about the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Interface name → its addresses, each with its prefix length.
    pub interfaces: BTreeMap<String, Vec<IpNet>>,
}

impl HostFacts {
    pub fn from_ip_json(json: &str) -> anyhow::Result<HostFacts> {
        let links: Vec<serde_json::Value> =
            serde_json::from_str(json).context("reading `ip -json addr` output")?;
        let mut interfaces = BTreeMap::new();
        for link in links {
            let Some(name) = link["ifname"].as_str() else {
                continue;
            };
            let mut addrs = Vec::new();
            for info in link["addr_info"].as_array().into_iter().flatten() {
                let (Some(local), Some(prefix)) = (info["local"].as_str(), info["prefixlen"].as_u64()) else {
                    continue;
                };
                if let Ok(addr) = local.parse::<IpAddr>()
                    && let Ok(net) = IpNet::new(addr, prefix as u8)
                {
                    addrs.push(net);
                }
            }
            interfaces.insert(name.to_owned(), addrs);
        }
        Ok(HostFacts { interfaces })
    }

    /// The IPv4 networks an interface is on.
    pub fn ipv4_networks(&self, interface: &str) -> Vec<Ipv4Net> {
        self.interfaces
            .get(interface)
            .into_iter()
            .flatten()
            .filter_map(|net| match net {
                IpNet::V4(net) => Some(net.trunc()),
                IpNet::V6(_) => None,
            })
            .collect()
    }

    fn has_address(&self, interface: Option<&str>, addr: IpAddr) -> bool {
        self.interfaces
            .iter()
            .filter(|(name, _)| interface.is_none_or(|i| i == name.as_str()))
            .any(|(_, nets)| nets.iter().any(|n| n.addr() == addr))
    }

    fn describe(&self, interface: &str) -> String {
        let addrs: Vec<String> = self
            .interfaces
            .get(interface)
            .into_iter()
            .flatten()
            .map(|n| n.to_string())
            .collect();
        if addrs.is_empty() {
            format!("{interface} has no addresses")
        } else {
            format!("{interface} has {}", addrs.join(", "))
        }
    }
}

/// The farm checked against the host: the interfaces exist, nat backends are
/// on the LAN, and listen addresses belong to the gateway. Positions point
/// into the config file, like parse errors.
pub fn check(farm: &Farm, facts: &HostFacts, host: &Host) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let Some(g) = &farm.gateway else {
        return errors;
    };
    let known: Vec<&str> = facts.interfaces.keys().map(String::as_str).collect();
    let mut missing = false;
    for (key, name) in std::iter::once(("wan", &g.wan))
        .chain(std::iter::once(("lan", &g.lan)))
        .chain(g.trusted.iter().map(|t| ("trusted", t)))
    {
        if !facts.interfaces.contains_key(&name.value) {
            missing = true;
            errors.push(
                Diagnostic::new(format!(
                    "interface \"{}\" does not exist on {}",
                    name.value,
                    host.describe()
                ))
                .at(name.span.clone())
                .label(format!("{key} interface"))
                .help(format!(
                    "interfaces here: {}; fix gateway.{key}, or plan with --offline to check the file alone",
                    known.join(", ")
                )),
            );
        }
    }
    if missing {
        return errors;
    }

    let lan_nets = facts.ipv4_networks(&g.lan);
    if let Some(subnet) = &g.lan_subnet
        && !lan_nets.contains(&subnet.value)
    {
        errors.push(
            Diagnostic::new(format!(
                "lan_subnet {} is not a network of {}",
                subnet.value, g.lan.value
            ))
            .at(subnet.span.clone())
            .help(format!(
                "{}; fix gateway.lan_subnet or the interface",
                facts.describe(&g.lan)
            )),
        );
    }
    for service in &farm.services {
        if let Some(addr) = service.listen.addr {
            let (interface, place) = match service.mode {
                Mode::Nat => (
                    Some(g.wan.as_str()),
                    format!("an address of the WAN interface {}", g.wan.value),
                ),
                _ => (None, format!("an address of {}", host.describe())),
            };
            if !facts.has_address(interface, addr) {
                errors.push(
                    Diagnostic::new(format!("listen address {addr} is not {place}"))
                        .at(service.listen.span.clone())
                        .help(format!(
                            "{}; give one of those addresses, or only the port to listen on all of them",
                            facts.describe(&g.wan)
                        )),
                );
            }
        }
        if service.mode != Mode::Nat {
            continue;
        }
        for backend in &service.backends {
            if lan_nets
                .iter()
                .any(|net| IpNet::V4(*net).contains(&backend.addr.ip()))
            {
                continue;
            }
            let message = match lan_nets.as_slice() {
                [] => format!(
                    "backend {} cannot be reached: the LAN interface {} has no IPv4 address",
                    backend.addr.value, g.lan.value
                ),
                nets => format!(
                    "backend {} is outside the LAN subnet {} of {}",
                    backend.addr.value,
                    nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
                    g.lan.value
                ),
            };
            errors.push(
                Diagnostic::new(message)
                    .at(backend.addr.span.clone())
                    .help("nat backends must be on the LAN: fix the address, or gateway.lan"),
            );
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP_JSON: &str = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
        {"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"198.51.100.1","prefixlen":24},
                                                  {"family":"inet6","local":"fe80::1","prefixlen":64}]},
        {"ifindex":3,"ifname":"eth1","addr_info":[{"family":"inet","local":"10.0.0.1","prefixlen":24}]}]"#;

    fn farm(text: &str) -> Farm {
        Farm::parse("farm.toml", text).unwrap_or_else(|d| panic!("{}", d.render(false)))
    }

    #[test]
    fn reads_interfaces_and_networks_from_ip_json() {
        let facts = HostFacts::from_ip_json(IP_JSON).unwrap();
        assert_eq!(facts.interfaces.len(), 3);
        assert_eq!(
            facts.ipv4_networks("eth1"),
            vec!["10.0.0.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert!(facts.has_address(Some("eth0"), "198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn the_seed_farm_fits_the_lab_gateway() {
        let facts = HostFacts::from_ip_json(IP_JSON).unwrap();
        let farm = farm(include_str!("../../../examples/seed-farm.toml"));
        assert!(check(&farm, &facts, &Host::local()).is_empty());
    }

    #[test]
    fn a_missing_interface_is_named_with_its_position() {
        let facts = HostFacts::from_ip_json(IP_JSON).unwrap();
        let farm = farm("[gateway]\nwan = \"eth0\"\nlan = \"eth9\"\n");
        let errors = check(&farm, &facts, &Host::in_netns("gw"));
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].message,
            "interface \"eth9\" does not exist on network namespace gw"
        );
        let d = farm.diagnostics(errors);
        assert_eq!(d.location(0).as_deref(), Some("farm.toml:3:7"));
        assert!(d.render(false).contains("interfaces here: eth0, eth1, lo"));
    }

    #[test]
    fn backends_off_the_lan_and_foreign_listen_addresses_are_refused() {
        let facts = HostFacts::from_ip_json(IP_JSON).unwrap();
        let text = "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\n[[service]]\nname = \"web\"\n\
                    listen = \"203.0.113.7:80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\", \"10.0.1.5:80\"]\n";
        let farm = farm(text);
        let d = farm.diagnostics(check(&farm, &facts, &Host::local()));
        assert_eq!(d.items.len(), 2, "{}", d.render(false));
        assert_eq!(
            d.items[0].message,
            "listen address 203.0.113.7 is not an address of the WAN interface eth0"
        );
        assert_eq!(d.location(0).as_deref(), Some("farm.toml:6:10"));
        assert_eq!(
            d.items[1].message,
            "backend 10.0.1.5:80 is outside the LAN subnet 10.0.0.0/24 of eth1"
        );
        assert_eq!(d.location(1).as_deref(), Some("farm.toml:8:29"));
    }

    #[test]
    fn a_lan_subnet_that_is_not_the_interfaces_is_refused() {
        let facts = HostFacts::from_ip_json(IP_JSON).unwrap();
        let farm = farm("[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\nlan_subnet = \"10.9.0.0/24\"\n");
        let errors = check(&farm, &facts, &Host::local());
        assert_eq!(
            errors[0].message,
            "lan_subnet 10.9.0.0/24 is not a network of eth1"
        );
    }
}
