//! Serve the proxy services of a gatehouse.toml, nothing else: for quick
//! benchmarks of the data plane without the rest of `gatehouse serve`.
//!
//!     cargo run --release -p gatehouse-proxy --example proxy -- gatehouse.toml
//!
//! Worker threads: as many as the CPUs this process may run on (so
//! `taskset -c 1` gives one), or GATEHOUSE_WORKERS; GATEHOUSE_CURRENT_THREAD=1
//! runs tokio's single-threaded scheduler instead, for comparison.

use std::sync::Arc;

use gatehouse_config::Farm;
use gatehouse_health::{Metrics, Pool};
use gatehouse_proxy::Server;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: proxy GATEHOUSE.TOML")?;
    let text = std::fs::read_to_string(&path)?;
    let farm = Farm::parse(&path, &text).map_err(|e| e.to_string())?;
    let workers = match std::env::var("GATEHOUSE_WORKERS") {
        Ok(n) => n.parse()?,
        Err(_) => std::thread::available_parallelism()?.get(),
    };
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let runtime = if std::env::var_os("GATEHOUSE_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let metrics = Metrics::new();
        let mut servers = Vec::new();
        for service in farm.proxy_services() {
            let pools: Vec<Arc<Pool>> = Pool::for_service(service, &metrics, &[]);
            for pool in &pools {
                tokio::spawn(pool.clone().run_checks());
            }
            let server = Server::start(service, pools, &metrics).await?;
            eprintln!("{}: listening on {}", service.name.value, server.local_addr());
            servers.push(server);
        }
        std::future::pending::<()>().await;
        Ok(())
    })
}
