//! Health checks drive the kernel load balancer: under `gatehouse serve`, a
//! dead web server leaves the nat service's map within interval × fall +
//! 200 ms, comes back within interval × rise + 200 ms of recovering, and when
//! every web server is dead the map fails open to all of them. Real nginx,
//! real curl, the lab's namespaces; needs root, nftables, nginx and curl.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle, sleep};
use std::time::{Duration, Instant};

use gatehouse_lab::web_addr;
use support::{Farm, PUBLIC, Process, site_number};

const INTERVAL: Duration = Duration::from_millis(200);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// The allowance for the map write on top of the checks.
const MARGIN: Duration = Duration::from_millis(200);
const HEALTH: &str = "health = { check = \"http\", path = \"/\", interval = \"200ms\", timeout = \"150ms\", fall = 2, rise = 2 }\n";

/// `gatehouse serve` against the lab's gateway (stopped by pid when dropped:
/// see support::Process).
struct Serve(Process);

impl std::ops::Deref for Serve {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.0
    }
}

impl Serve {
    fn start(farm: &Farm) -> Serve {
        Serve(farm.serve())
    }

    /// Wait until serve says it is serving and both backends are in the map.
    fn wait_ready(&mut self, farm: &Farm) {
        self.0.wait_for_log("serving", Duration::from_secs(30));
        wait_for_map(farm, self, Instant::now(), "both backends in the map", |m| {
            in_map(m, 1) && in_map(m, 2)
        });
    }
}

/// The backend map as the gateway's kernel holds it (empty if unreadable).
fn map(farm: &Farm) -> String {
    let out = farm.run(
        &farm.gw(),
        "nft",
        &["list", "map", "inet", "gatehouse", "backends_web"],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_map(listing: &str, k: usize) -> bool {
    listing.contains(&format!(" {} . 80", web_addr(k)))
}

/// Poll the map every ~10 ms until `done` holds; how long that took from
/// `since`, or a failure naming `what` after `timeout`.
fn wait_for_map(
    farm: &Farm,
    serve: &Serve,
    since: Instant,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Duration {
    let timeout = Duration::from_secs(10);
    loop {
        let listing = map(farm);
        if done(&listing) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < timeout,
            "{what}: not within {timeout:?}; map now:\n{listing}\nserve log:\n{}",
            serve.log()
        );
        sleep(Duration::from_millis(10));
    }
}

/// Requests from the client, one connection each, back to back, until
/// stopped: when each started and ended, and which web server answered.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, Instant, Option<usize>)>>,
}

impl Traffic {
    fn start(farm: &Farm) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let client = farm.lab.client_ns();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                let out = Command::new("ip")
                    .args(["netns", "exec", &client, "curl", "-s", "-m", "1"])
                    .arg(format!("http://{PUBLIC}/"))
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output();
                let answer = out
                    .ok()
                    .and_then(|o| site_number(&String::from_utf8_lossy(&o.stdout)));
                seen.push((start, Instant::now(), answer));
            }
            seen
        });
        Traffic { stop, thread }
    }

    fn stop(self) -> Vec<(Instant, Instant, Option<usize>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the traffic thread")
    }
}

fn alternates(answers: &[usize]) -> bool {
    answers.len() >= 4
        && answers.iter().all(|&a| a == 1 || a == 2)
        && answers.windows(2).all(|w| w[0] != w[1])
}

#[test]
fn serve_takes_a_dead_web_server_out_of_the_nat_map_and_back_in() {
    let mut farm = Farm::new(2);
    let config = farm.config_text("round-robin", &farm.backend_list(2)) + HEALTH;
    std::fs::write(&farm.config, config).unwrap();
    let mut serve = Serve::start(&farm);
    serve.wait_ready(&farm);

    let answers = farm.client_get_many(6, &[]);
    assert!(alternates(&answers), "web1 and web2 in turn: {answers:?}");
    let traffic = Traffic::start(&farm);
    sleep(Duration::from_millis(300));

    // web2 dies.
    let died = Instant::now();
    farm.lab.stop_web(2).expect("stopping web2");
    let stopping = died.elapsed();
    let removal = wait_for_map(&farm, &serve, died, "web2 leaves the map", |m| {
        !in_map(m, 2) && in_map(m, 1)
    });
    let removed = Instant::now();
    let bound = INTERVAL * FALL + MARGIN;
    println!(
        "web2 left the map {} ms after it was stopped (bound {} ms; stopping nginx took {} ms)",
        removal.as_millis(),
        bound.as_millis(),
        stopping.as_millis()
    );
    assert!(
        removal <= bound,
        "web2 left the map after {removal:?}, more than interval × fall + 200 ms = {bound:?}:\n{}",
        serve.log()
    );
    let answers = farm.client_get_many(10, &[]);
    assert_eq!(answers, [1; 10], "with web2 out every request goes to web1");
    sleep(Duration::from_millis(300));

    // web2 comes back.
    let restarting = Instant::now();
    farm.lab.start_web(2).expect("starting web2 again");
    let restarted = Instant::now();
    let back = wait_for_map(&farm, &serve, restarted, "web2 comes back", |m| {
        in_map(m, 2) && in_map(m, 1)
    });
    let bound = INTERVAL * RISE + MARGIN;
    println!(
        "web2 was back in the map {} ms after it answered again (bound {} ms; {} ms after its restart began)",
        back.as_millis(),
        bound.as_millis(),
        (restarted - restarting + back).as_millis()
    );
    assert!(
        back <= bound,
        "web2 came back after {back:?}, more than interval × rise + 200 ms = {bound:?}:\n{}",
        serve.log()
    );

    // What the steady traffic saw: while web2 was out of the map, every
    // request succeeded on web1. (Stopped first: its connections would take
    // turns of the round-robin counter from the check below.)
    let seen = traffic.stop();
    let while_out: Vec<Option<usize>> = seen
        .iter()
        .filter(|(start, end, _)| *start >= removed && *end <= restarting)
        .map(|r| r.2)
        .collect();
    let failed = seen.iter().filter(|r| r.2.is_none()).count();
    println!(
        "steady traffic: {} requests, {failed} failed (before web2 left the map), {} while web2 was out",
        seen.len(),
        while_out.len()
    );
    assert!(!while_out.is_empty(), "no request ran while web2 was out");
    assert!(
        while_out.iter().all(|a| *a == Some(1)),
        "while web2 was out of the map: {while_out:?}"
    );
    let failed_late = seen
        .iter()
        .filter(|(start, _, answer)| answer.is_none() && *start >= removed)
        .count();
    assert_eq!(failed_late, 0, "requests failed after web2 left the map");
    let answers = farm.client_get_many(6, &[]);
    assert!(alternates(&answers), "web1 and web2 in turn again: {answers:?}");

    // Both die: the map fails open to both, and says so loudly.
    farm.lab.stop_web(1).expect("stopping web1");
    farm.lab.stop_web(2).expect("stopping web2");
    let all_dead = Instant::now();
    let deadline = all_dead + Duration::from_secs(10);
    while !serve.log().contains("EVERY BACKEND IS DOWN") {
        assert!(
            Instant::now() < deadline,
            "no EVERY BACKEND IS DOWN in the log:\n{}",
            serve.log()
        );
        sleep(Duration::from_millis(20));
    }
    let open = wait_for_map(&farm, &serve, all_dead, "the map fails open", |m| {
        in_map(m, 1) && in_map(m, 2)
    });
    // Stays open: the checks keep failing, nothing takes them out again.
    sleep(INTERVAL * 3);
    let listing = map(&farm);
    assert!(
        in_map(&listing, 1) && in_map(&listing, 2),
        "fail-open holds both backends:\n{listing}"
    );
    println!(
        "with both down the map held both backends again {} ms after the second was stopped",
        open.as_millis()
    );
    println!("serve log:\n{}", serve.log());
}

#[test]
fn a_reload_while_a_backend_is_down_keeps_it_out_of_the_map() {
    let mut farm = Farm::new(3);
    let config = farm.config_text("round-robin", &farm.backend_list(3)) + HEALTH;
    std::fs::write(&farm.config, &config).unwrap();
    let mut serve = Serve::start(&farm);
    serve.wait_ready(&farm);
    farm.lab.stop_web(2).expect("stopping web2");
    wait_for_map(&farm, &serve, Instant::now(), "web2 leaves the map", |m| {
        !in_map(m, 2)
    });

    // Reload the unchanged file (the table stays), then one with another
    // admin network (the table is replaced): web2 stays out, not even for a
    // moment back in.
    let edited = config.replace("192.168.2.0/24", "192.168.3.0/24");
    assert_ne!(edited, config);
    for (round, text) in [config.clone(), edited].into_iter().enumerate() {
        std::fs::write(&farm.config, text).unwrap();
        let reloads_before = serve.log().matches("INFO reloaded").count();
        serve.signal("HUP");
        let sent = Instant::now();
        while serve.log().matches("INFO reloaded").count() == reloads_before {
            let listing = map(&farm);
            assert!(
                !in_map(&listing, 2),
                "round {round}: web2 back in the map during a reload:\n{listing}"
            );
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "no reload:\n{}",
                serve.log()
            );
            sleep(Duration::from_millis(5));
        }
        for _ in 0..20 {
            let listing = map(&farm);
            assert!(
                !in_map(&listing, 2),
                "round {round}: web2 back after the reload:\n{listing}"
            );
            assert!(in_map(&listing, 1) && in_map(&listing, 3), "{listing}");
            sleep(Duration::from_millis(10));
        }
    }
    let log = serve.log();
    assert!(
        log.contains("table inet gatehouse unchanged"),
        "the unchanged file re-applied nothing:\n{log}"
    );
    assert_eq!(
        log.matches("table inet gatehouse installed").count(),
        2,
        "installed at start, and again for the edited file:\n{log}"
    );
    let answers = farm.client_get_many(6, &[]);
    assert!(answers.iter().all(|&k| k == 1 || k == 3), "{answers:?}");
}
