//! Backend state shared by both data planes.
//!
//! One [`Pool`] per service holds its backends: whether each is up (decided by
//! active checks with rise/fall, and by failures the proxy reports), since
//! when, and its statistics. The kernel data plane watches a pool's changes to
//! rewrite its nftables map; the proxy reads `is_up` and the connection gauges
//! on every pick. Neither data plane knows the other: they meet here.

mod check;
mod metrics;
mod pool;

pub use check::{USER_AGENT as CHECK_USER_AGENT, probe};
pub use metrics::{BackendStats, Metrics, ServiceStats};
pub use pool::{Backend, Outcome, Pool, Snapshot, State};
