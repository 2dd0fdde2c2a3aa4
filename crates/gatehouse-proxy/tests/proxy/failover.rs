//! A backend dying and coming back under steady load, with health checks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const INTERVAL: Duration = Duration::from_millis(200);
const FALL: u32 = 2;
const RISE: u32 = 2;
const LOOPS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_leaves_and_rejoins_rotation_without_client_errors() {
    let a = Nginx::start("a");
    let mut b = Nginx::start("b");
    let extra = format!(
        "health = {{ interval = \"{}ms\", timeout = \"100ms\", fall = {FALL}, rise = {RISE} }}",
        INTERVAL.as_millis()
    );
    let proxy = Proxy::start(&http_service(&[a.addr(), b.addr()], &extra)).await;
    let checks = tokio::spawn(proxy.pool.clone().run_checks());

    // Steady load: LOOPS clients, each one request at a time on its own
    // keep-alive connection.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let errors: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut loops = Vec::new();
    for _ in 0..LOOPS {
        let (stop, served, errors, addr) = (stop.clone(), served.clone(), errors.clone(), proxy.addr);
        loops.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                match client.get("/").await {
                    Ok(answer) if answer.status == 200 => {
                        served[usize::from(answer.body.trim() == "b")].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(answer) => errors
                        .lock()
                        .unwrap()
                        .push((Instant::now(), format!("{} {}", answer.status, answer.body))),
                    Err(e) => {
                        errors.lock().unwrap().push((Instant::now(), e.to_string()));
                        client = Client::connect(addr).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(served[1].load(Ordering::Relaxed) > 10, "b serves before the kill");

    b.kill();
    let killed = Instant::now();
    let backend_b = proxy.pool.backends()[1].clone();
    let out = wait_for(Duration::from_secs(3), "b out of rotation", || !backend_b.is_up()).await;
    assert!(
        out <= INTERVAL * FALL + Duration::from_millis(200),
        "b left rotation {out:?} after the kill"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_before = served[1].load(Ordering::Relaxed);
    let a_before = served[0].load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served[1].load(Ordering::Relaxed),
        b_before,
        "nothing reaches a dead backend"
    );
    assert!(
        served[0].load(Ordering::Relaxed) > a_before + 10,
        "a carries the load"
    );

    b.restart();
    let back = wait_for(Duration::from_secs(3), "b back in rotation", || backend_b.is_up()).await;
    assert!(
        back <= INTERVAL * RISE + Duration::from_millis(200),
        "b rejoined {back:?} after restarting"
    );
    let b_restarted = served[1].load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        served[1].load(Ordering::Relaxed) > b_restarted + 10,
        "b serves again"
    );

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("client loop");
    }
    checks.abort();
    // Only requests in flight to b when it died may fail: at most one per
    // client, all right at the kill.
    let errors = errors.lock().unwrap();
    assert!(
        errors.len() <= LOOPS,
        "{} client errors: {:?}",
        errors.len(),
        errors.iter().map(|e| &e.1).collect::<Vec<_>>()
    );
    for (at, what) in errors.iter() {
        let since = at.saturating_duration_since(killed);
        assert!(
            since < Duration::from_millis(100),
            "error {since:?} after the kill: {what}"
        );
    }
    eprintln!(
        "failover: out of rotation after {out:?}, back after {back:?}, {} client errors",
        errors.len()
    );
}
