//! One tcp-mode connection: pick a backend, connect (retrying on another
//! backend when the connect fails), then relay bytes until both sides close
//! or the connection idles out.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::access_log;
use crate::balance::{MAX_ATTEMPTS, Pick, Tried};
use crate::body::InFlight;
use crate::proxy_protocol::Addresses;
use crate::settings::Settings;
use crate::stream::ClientStream;
use crate::tunnel;
use crate::upstream::ConnectError;

pub(crate) async fn serve(settings: Arc<Settings>, client: ClientStream, addresses: Addresses) {
    let started = Instant::now();
    let wall = SystemTime::now();
    let ip = addresses.source.ip();
    // Validation gives a tcp service its own backends and no routes.
    let Some(target) = settings.targets.first() else {
        return;
    };
    let backends = target.pool.backends();
    let attempts = backends.len().min(MAX_ATTEMPTS);
    let mut tried = Tried::default();
    let mut connected = None;
    while tried.len() < attempts {
        let pick = Pick {
            client: ip,
            cookie: None,
            tried: &tried,
        };
        let Some(i) = target.balancer.pick(backends, &pick) else {
            break;
        };
        tried.push(i);
        let backend = &backends[i];
        let in_flight = InFlight::new(backend.clone());
        let connecting = Instant::now();
        match target.upstreams[i]
            .open(settings.timeouts.connect, addresses)
            .await
        {
            Ok(stream) => {
                // A tcp connection counts as one 2xx answer once connected.
                backend.stats.response(200);
                backend.stats.observe_latency(connecting.elapsed().as_secs_f64());
                target.pool.report_success(backend);
                connected = Some((backend.addr, stream, in_flight));
                break;
            }
            Err(e) => {
                match e {
                    ConnectError::Timeout(_) => backend.stats.timeouts.inc(),
                    ConnectError::Io(_) => backend.stats.connect_errors.inc(),
                };
                target.backend_failed(i, e.to_string());
            }
        }
    }
    let Some((addr, stream, in_flight)) = connected else {
        target.pool.stats.no_backend.inc();
        if let Some(sink) = &settings.log {
            sink.send(access_log::tcp_line(
                ip,
                wall,
                None,
                0,
                0,
                started.elapsed(),
                "no-backend",
            ));
        }
        return;
    };
    let relayed = tunnel::relay(client, stream, settings.timeouts.idle).await;
    drop(in_flight);
    if let tunnel::End::Error(e) = &relayed.end {
        tracing::debug!(service = %target.pool.service, %addr, "tcp relay: {e}");
    }
    if let Some(sink) = &settings.log {
        let line = access_log::tcp_line(
            ip,
            wall,
            Some(addr),
            relayed.up,
            relayed.down,
            started.elapsed(),
            relayed.end.as_str(),
        );
        sink.send(line);
    }
}
