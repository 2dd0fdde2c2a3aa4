//! The kernel data plane: a `Farm` becomes a ruleset (`plan`), written as
//! nftables text (`nft`) or as iptables-restore text (`iptables`), and installed
//! atomically in gatehouse's own table with rollback and confirm (`apply`).

pub mod apply;
pub mod diff;
pub mod host;
pub mod iptables;
pub mod ir;
pub mod live;
pub mod maglev;
pub mod nft;
pub mod plan;
pub mod slots;
pub mod update;

pub use apply::{Applied, Error, Pending, StateDir, WatchdogOutcome};
pub use host::{Host, HostFacts};
pub use live::LiveTable;
