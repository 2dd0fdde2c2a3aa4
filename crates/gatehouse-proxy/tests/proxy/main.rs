//! End-to-end tests of the proxy with real peers on loopback: nginx backends,
//! tiny tokio backends for what nginx cannot do, hyper and curl clients.
//! One test binary, so the tests run in parallel.

mod balancing;
mod certs;
mod common;
mod failover;
mod forwarding;
mod limits;
mod logging;
mod routing;
mod tcp;
mod tls;
mod websocket;
