//! The kernel data plane under `serve`: a nat service's nftables map follows
//! its pool's health. The checks decide (gatehouse-health); this task only
//! turns each decision into one map rewrite (gatehouse-netfilter's
//! `MapWriter`), so the time from a backend's death to its removal is the
//! checks' `interval × fall` plus one nft transaction.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::Service;
use gatehouse_health::Pool;
use gatehouse_netfilter::Host;
use gatehouse_netfilter::update::MapWriter;

/// How long a failed write waits before trying again (with the state of that
/// moment, not the one that failed).
const RETRY: Duration = Duration::from_secs(1);

/// Keep a nat service's kernel map in step with its pool's health until the
/// task is aborted (on reload or stop). Writes the current state at once, then
/// after every change of `pool.changes()`.
pub async fn follow(host: Host, service: Service, pool: Arc<Pool>) {
    let name = service.name.value.clone();
    let service = Arc::new(service);
    let mut changes = pool.changes();
    let mut writer: Option<MapWriter> = None;
    loop {
        // Mark what we are about to write as seen first: a change that lands
        // while nft runs then wakes us for another round.
        changes.borrow_and_update();
        let up = pool.up();
        let (returned, result) = write(host.clone(), service.clone(), writer.take(), up.clone()).await;
        writer = returned;
        match (result, &writer) {
            (Ok(true), Some(w)) => {
                pool.stats.map_generation.inc();
                log_rotation(&name, w.map_name(), &pool, &up);
            }
            (Ok(_), _) => tracing::debug!(service = %name, "kernel map already as health says"),
            (Err(e), _) => {
                // The error names the map ("map backends_web is not installed: ...").
                tracing::error!(service = %name, "kernel map not updated: {e:#}; trying again in 1 s");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        if changes.changed().await.is_err() {
            return; // the pool is gone: nothing left to follow
        }
    }
}

/// One write on a blocking thread (it runs `nft`, and for a Maglev map reads
/// 65,537 slots). The writer is created on first use, and dropped after a
/// failure to create it, so the next try reads the live map again.
async fn write(
    host: Host,
    service: Arc<Service>,
    writer: Option<MapWriter>,
    up: Vec<bool>,
) -> (Option<MapWriter>, anyhow::Result<bool>) {
    let job = tokio::task::spawn_blocking(move || {
        let mut writer = match writer {
            Some(writer) => writer,
            None => match MapWriter::new(host, &service) {
                Ok(writer) => writer,
                Err(e) => return (None, Err(e)),
            },
        };
        let result = writer.write(&up);
        (Some(writer), result)
    });
    match job.await {
        Ok(done) => done,
        Err(e) => (None, Err(anyhow::anyhow!("the map writer failed: {e}"))),
    }
}

/// "map backends_web: 1 of 2 backends in rotation (10.0.0.12:80 out)".
fn log_rotation(service: &str, map: &str, pool: &Pool, up: &[bool]) {
    let backends = pool.backends();
    let total = backends.len();
    if !up.contains(&true) {
        tracing::error!(
            service = %service,
            "map {map}: EVERY BACKEND IS DOWN: failing open, all {total} backends in rotation"
        );
        return;
    }
    let out: Vec<String> = backends
        .iter()
        .zip(up)
        .filter(|(_, up)| !**up)
        .map(|(b, _)| {
            let addr = b.addr.to_string();
            if b.label == addr {
                addr
            } else {
                format!("{} {addr}", b.label)
            }
        })
        .collect();
    let count = up.iter().filter(|u| **u).count();
    if out.is_empty() {
        tracing::info!(service = %service, "map {map}: {count} of {total} backends in rotation");
    } else {
        tracing::info!(
            service = %service,
            "map {map}: {count} of {total} backends in rotation ({} out)",
            out.join(", ")
        );
    }
}
