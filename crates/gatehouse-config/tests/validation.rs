//! Every rule of the config reference, broken once: the message says what is
//! wrong and the position points at the offending value.

mod common;

use common::{at, error, errors, farm};
use gatehouse_config::{Balance, Mode};

const GATEWAY: &str = r#"[gateway]
wan = "eth0"
lan = "eth1"
"#;

#[test]
fn the_seed_farm_example_is_valid() {
    let text = include_str!("../../../examples/seed-farm.toml");
    let farm = farm(text);
    let g = farm.gateway.as_ref().unwrap();
    assert_eq!((g.wan.as_str(), g.lan.as_str(), g.ssh_port), ("eth0", "eth1", 22));
    assert!(g.masquerade && g.ping);
    assert_eq!(g.admin[0].to_string(), "192.168.2.0/24");
    let web = &farm.services[0];
    assert_eq!(
        (web.name.as_str(), web.mode, web.balance),
        ("web", Mode::Nat, Balance::RoundRobin)
    );
    let addrs: Vec<String> = web.backends.iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(addrs, ["10.0.0.11:80", "10.0.0.12:80"]);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let farm = farm(&format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = 80\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\"]\n"
    ));
    let g = farm.gateway.unwrap();
    assert!(g.masquerade && g.ping && g.admin.is_empty());
    assert_eq!(g.ssh_port, 22);
    assert_eq!(farm.services[0].balance, Balance::RoundRobin);
    assert_eq!(farm.services[0].listen.port, 80);
}

#[test]
fn weights_are_read_from_tables() {
    let farm = farm(&format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbalance = \"weighted\"\n\
         backends = [{{ addr = \"10.0.0.11:80\", weight = 3 }}, \"10.0.0.12:80\"]\n"
    ));
    let weights: Vec<u32> = farm.services[0].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [3, 1]);
}

#[test]
fn unknown_key_at_top_level() {
    let text = format!("{GATEWAY}colour = \"blue\"\n");
    let (message, position) = error(&text);
    assert!(message.contains("unknown field `colour`"), "{message}");
    assert_eq!(position, at(&text, "colour"));
}

#[test]
fn unknown_key_in_gateway_names_the_expected_ones() {
    let text = "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\nmasquerde = true\n";
    let (message, position) = error(text);
    assert!(message.contains("unknown field `masquerde`"), "{message}");
    assert!(
        message.contains("masquerade"),
        "should list the expected keys: {message}"
    );
    assert_eq!(position, at(text, "masquerde"));
}

#[test]
fn unknown_key_in_a_service() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackend = [\"10.0.0.11:80\"]\n"
    );
    let (message, position) = error(&text);
    assert!(message.contains("unknown field `backend`"), "{message}");
    assert_eq!(position, at(&text, "backend "));
}

#[test]
fn unknown_key_in_a_backend_table() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbalance = \"weighted\"\n\
         backends = [{{ addr = \"10.0.0.11:80\", wieght = 3 }}]\n"
    );
    let (message, _) = error(&text);
    assert!(message.contains("unknown field `wieght`"), "{message}");
}

#[test]
fn toml_syntax_errors_have_a_position() {
    let text = "[gateway]\nwan = \"eth0\nlan = \"eth1\"\n";
    let d = errors(text);
    assert_eq!(d.location(0).as_deref(), Some("farm.toml:2:12"));
}

#[test]
fn duplicate_service_names() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\"]\n\
         [[service]]\nname = \"web\"\nlisten = \"81\"\nmode = \"nat\"\nbackends = [\"10.0.0.12:80\"]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(message, "service name \"web\" is used twice");
    let second = text.rfind("name = \"web\"").unwrap() + "name = ".len();
    let line = text[..second].matches('\n').count() + 1;
    assert_eq!(position, format!("{line}:8"));
    let rendered = errors(&text).render(false);
    assert!(rendered.contains("first used here"), "{rendered}");
}

#[test]
fn duplicate_ports() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\"]\n\
         [[service]]\nname = \"app\"\nlisten = \"198.51.100.1:80\"\nmode = \"nat\"\nbackends = [\"10.0.0.12:80\"]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(message, "port 80 is already used by service \"web\"");
    assert_eq!(position, at(&text, "\"198.51.100.1:80\""));
}

#[test]
fn the_same_port_on_two_different_addresses_is_fine() {
    farm(&format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"198.51.100.1:80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\"]\n\
         [[service]]\nname = \"app\"\nlisten = \"198.51.100.2:80\"\nmode = \"nat\"\nbackends = [\"10.0.0.12:80\"]\n"
    ));
}

#[test]
fn a_service_on_the_ssh_port() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"22\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:22\"]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(message, "port 22 is the gateway's SSH port");
    assert_eq!(position, at(&text, "\"22\""));
}

#[test]
fn backend_outside_the_lan_subnet() {
    let text = "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\nlan_subnet = \"10.0.0.0/24\"\n\
                [[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\", \"10.1.0.5:80\"]\n";
    let (message, position) = error(text);
    assert_eq!(
        message,
        "backend 10.1.0.5:80 is outside the LAN subnet 10.0.0.0/24"
    );
    assert_eq!(position, at(text, "\"10.1.0.5:80\""));
}

#[test]
fn weight_on_a_method_that_ignores_weights() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbalance = \"round-robin\"\n\
         backends = [{{ addr = \"10.0.0.11:80\", weight = 3 }}]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(message, "balance = \"round-robin\" ignores weights");
    assert_eq!(position, at(&text, "3 }"));
    let rendered = errors(&text).render(false);
    assert!(rendered.contains("use balance = \"weighted\""), "{rendered}");
}

#[test]
fn weight_out_of_range() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbalance = \"weighted\"\n\
         backends = [{{ addr = \"10.0.0.11:80\", weight = 0 }}]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(message, "weight 0 is out of range");
    assert_eq!(position, at(&text, "0 }"));
}

#[test]
fn bad_service_name() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"Web_1\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\"]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(message, "\"Web_1\" is not a valid service name");
    assert_eq!(position, at(&text, "\"Web_1\""));
}

#[test]
fn bad_listen() {
    for (listen, expected) in [
        ("\"http\"", "listen \"http\" is not \"PORT\" or \"ADDR:PORT\""),
        ("\"198.51.100.1\"", "listen \"198.51.100.1\" has no port"),
        ("\"70000\"", "70000 is not a TCP port"),
        ("0", "0 is not a TCP port"),
    ] {
        let text = format!(
            "{GATEWAY}[[service]]\nname = \"web\"\nlisten = {listen}\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\"]\n"
        );
        let (message, position) = error(&text);
        assert_eq!(message, expected);
        assert_eq!(position, at(&text, &format!("= {listen}")).replace(":8", ":10"));
    }
}

#[test]
fn backend_without_a_port() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11\"]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(message, "backend \"10.0.0.11\" is not an ADDR:PORT");
    assert_eq!(position, at(&text, "\"10.0.0.11\""));
    assert!(errors(&text).render(false).contains("\"10.0.0.11:80\""));
}

#[test]
fn backend_listed_twice() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\", \"10.0.0.11:80\"]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(message, "backend 10.0.0.11:80 is listed twice");
    let second = text.rfind("\"10.0.0.11:80\"").unwrap();
    let col = second - text[..second].rfind('\n').unwrap();
    assert_eq!(position, format!("8:{col}"));
}

#[test]
fn ipv6_backend_in_nat_mode() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = [\"[2001:db8::1]:80\"]\n"
    );
    let (message, position) = error(&text);
    assert_eq!(
        message,
        "backend [2001:db8::1]:80 is IPv6; nat services balance IPv4 backends"
    );
    assert_eq!(position, at(&text, "\"[2001"));
}

#[test]
fn empty_backends() {
    let text =
        format!("{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = []\n");
    let (message, position) = error(&text);
    assert_eq!(message, "a service needs at least one backend");
    assert_eq!(position, at(&text, "[]"));
}

#[test]
fn unknown_mode_and_balance() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"udp\"\nbalance = \"rr\"\nbackends = [\"10.0.0.11:80\"]\n"
    );
    let d = errors(&text);
    assert_eq!(d.items.len(), 2, "{}", d.render(false));
    assert_eq!(d.items[0].message, "unknown mode \"udp\"");
    assert_eq!(
        d.location(0).unwrap(),
        format!("farm.toml:{}", at(&text, "\"udp\""))
    );
    assert_eq!(d.items[1].message, "unknown balance method \"rr\"");
    assert!(d.items[1].help.as_deref().unwrap().contains("\"maglev\""));
}

#[test]
fn missing_mode() {
    let text =
        format!("{GATEWAY}[[service]]\nname = \"web\"\nlisten = \"80\"\nbackends = [\"10.0.0.11:80\"]\n");
    let (message, position) = error(&text);
    assert_eq!(message, "service has no mode");
    assert_eq!(position, at(&text, "[[service]]"));
}

#[test]
fn nat_without_a_gateway() {
    let text =
        "[[service]]\nname = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbackends = [\"10.0.0.11:80\"]\n";
    let (message, position) = error(text);
    assert_eq!(message, "mode \"nat\" needs a [gateway] section");
    assert_eq!(position, at(text, "\"nat\""));
}

#[test]
fn a_proxy_only_farm_needs_no_gateway() {
    let farm = farm(
        "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"http\"\nbackends = [\"127.0.0.1:9000\"]\n",
    );
    assert!(farm.gateway.is_none());
    assert_eq!(farm.services[0].mode, Mode::Http);
}

#[test]
fn bad_interface_names_and_wan_equal_to_lan() {
    let text = "[gateway]\nwan = \"eth 0\"\nlan = \"eth1\"\n";
    let (message, position) = error(text);
    assert_eq!(message, "\"eth 0\" is not a network interface name");
    assert_eq!(position, "2:7");
    let text = "[gateway]\nwan = \"eth0\"\nlan = \"eth0\"\n";
    let (message, position) = error(text);
    assert_eq!(message, "wan and lan are both \"eth0\"");
    assert_eq!(position, "3:7");
}

#[test]
fn bad_admin_network_lan_subnet_and_ssh_port() {
    let text = "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\nadmin = [\"192.168.2.0/33\"]\nlan_subnet = \"10.0.0\"\nssh_port = 0\n";
    let d = errors(text);
    let messages: Vec<&str> = d.items.iter().map(|i| i.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "\"192.168.2.0/33\" is not an address or network",
            "\"10.0.0\" is not an IPv4 network",
            "0 is not a TCP port"
        ]
    );
    assert_eq!(d.location(0).unwrap(), "farm.toml:4:10");
    assert_eq!(d.location(1).unwrap(), "farm.toml:5:14");
    assert_eq!(d.location(2).unwrap(), "farm.toml:6:12");
}

#[test]
fn wrong_value_types_are_reported_by_position() {
    let text = "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\nmasquerade = \"yes\"\n";
    let (message, position) = error(text);
    assert!(message.contains("invalid type"), "{message}");
    assert_eq!(position, "4:14");
}

#[test]
fn every_error_is_reported_in_one_run() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"Bad\"\nlisten = \"x\"\nmode = \"nat\"\nbackends = [\"nope\"]\n"
    );
    let d = errors(&text);
    assert_eq!(d.items.len(), 3, "{}", d.render(false));
    assert!(d.render(false).contains("rejected (3 errors)"));
}

#[test]
fn summary_says_what_the_file_does() {
    let farm = farm(include_str!("../../../examples/seed-farm.toml"));
    let summary = farm.summary();
    assert!(summary.contains("wan eth0, lan eth1"), "{summary}");
    assert!(summary.contains("ssh 22 from lan, 192.168.2.0/24"), "{summary}");
    assert!(
        summary.contains("web  nat 80  round-robin over 2 backends: 10.0.0.11:80, 10.0.0.12:80"),
        "{summary}"
    );
}
