//! The seed's Figure 4, for real: two nginx web servers in the lab send their
//! access logs over syslog (`access_log syslog:server=10.0.0.1:514`) to the
//! gateway, where `gatehouse serve` keeps them; `gatehouse logs` then shows
//! the round-robin as alternating `web1 | ...` and `web2 | ...` lines. The
//! firewall lets syslog in from the LAN only: a line sent from the internet
//! side never arrives.

mod support;

use std::time::{Duration, Instant};

use support::{EXE, Farm, show};

#[test]
fn each_web_servers_access_log_arrives_under_its_name_through_the_firewall() {
    let farm = Farm::new(2);
    let logs = farm.lab.run_dir().join("logs");
    let text = farm.config_text("round-robin", &farm.backend_list(2))
        + &format!(
            "\n[log_server]\nudp = \"10.0.0.1:514\"\ndir = \"{}\"\n\
             hosts = {{ \"10.0.0.11\" = \"web1\", \"10.0.0.12\" = \"web2\" }}\n",
            logs.display()
        );
    std::fs::write(&farm.config, &text).expect("config");
    let mut serve = farm.serve();
    serve.wait_for_log("serving", Duration::from_secs(30));

    // `lab up` probed each nginx before any log server listened, so each
    // holds an ICMP "port unreachable" on its syslog socket, and nginx loses
    // the next line to that error. One request each clears it.
    let warm = farm.run(
        &farm.lab.client_ns(),
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-H",
            "Connection: close",
            "http://198.51.100.1/?warm-[1-2]",
        ],
    );
    assert!(warm.status.success(), "{}", show(&warm));
    std::thread::sleep(Duration::from_millis(200));
    let answers = farm.client_get_many(4, &[]);
    assert_eq!(answers.len(), 4, "{answers:?}");
    // From the internet side: dropped by the firewall's input chain.
    let out = farm.run(
        &farm.lab.client_ns(),
        "logger",
        &["-d", "-n", "198.51.100.1", "-P", "514", "from the internet"],
    );
    assert!(out.status.success(), "{}", show(&out));

    let config = farm.config.to_str().expect("utf-8 path");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let out = std::process::Command::new(EXE)
            .args(["logs", "-c", config, "--grep", r"GET /\?[1-4] "])
            .output()
            .expect("gatehouse logs");
        assert!(out.status.success(), "{}", show(&out));
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        if lines.len() >= 4 {
            break lines;
        }
        if Instant::now() > deadline {
            let stats = farm.gatehouse(&["logs", "-c", config, "--stats"]);
            panic!(
                "only {} lines:\n{}\n{}\nserve:\n{}",
                lines.len(),
                lines.join("\n"),
                show(&stats),
                serve.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // What nginx sent while the internet's line had its chance to arrive.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines.len(), 4, "{lines:#?}");
    // Each request is logged under the name of the server that answered it
    // (request N is "GET /?N"), and each server's lines come in its order.
    // Across servers the order is when each nginx got to logging, which a
    // busy machine may swap.
    let mut seen = Vec::new();
    for line in &lines {
        let name = line.split(" | ").next().unwrap_or("");
        let n: usize = line
            .split("\"GET /?")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request number in {line}"));
        assert_eq!(
            name,
            format!("web{}", answers[n - 1]),
            "request {n} answered by web{}: {line}",
            answers[n - 1]
        );
        seen.push((name.to_owned(), n));
    }
    for web in ["web1", "web2"] {
        let mine: Vec<usize> = seen
            .iter()
            .filter(|(name, _)| name == web)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(mine.len(), 2, "{lines:#?}");
        assert!(mine[0] < mine[1], "{web}'s lines out of order: {lines:#?}");
    }
    for line in &lines {
        assert!(
            line.contains(" nginx: 198.51.100.2 - - [") && line.contains("\"GET /?"),
            "an nginx combined line from the client's address: {line}"
        );
    }
    let again = std::process::Command::new(EXE)
        .args(["logs", "-c", config, "--grep", "internet"])
        .output()
        .expect("gatehouse logs");
    assert!(
        again.stdout.is_empty(),
        "syslog from the WAN got in: {}",
        show(&again)
    );
}
