//! The backup server: restic's REST protocol, answered as restic/rest-server answers it, with
//! append-only and quotas per user.
//!
//! A request goes `server` (connection, TLS) → `handler` (auth, path, dispatch) → `store`
//! (files on disk); `usage` keeps the bytes stored for quotas, `metrics` the counters,
//! `access_log` the combined log line, `body` streams responses.

mod access_log;
mod body;
mod handler;
mod htpasswd;
mod metrics;
mod path;
mod range;
mod repos;
mod server;
mod store;
mod sync;
mod usage;

pub use metrics::{BackupMetrics, RepoStats};
pub use repos::{RepoInfo, repositories};
pub use server::BackupServer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use tokio_rustls::rustls;

/// What the backup server serves, and to whom.
#[derive(Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// HTTPS when set (the config should offer ALPN http/1.1).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Repositories live under it.
    pub dir: PathBuf,
    /// None: no authentication, as rest-server --no-auth.
    pub htpasswd: Option<PathBuf>,
    /// `/USER/...` belongs to USER alone (rest-server --private-repos).
    pub private_repos: bool,
    /// The default for everyone: no deletes but of locks.
    pub append_only: bool,
    /// Refuse (400) an upload whose SHA-256 is not its name. Off only on a
    /// machine too slow to hash (rest-server's `--no-verify-upload`): a
    /// corrupt upload then goes unnoticed until `restic check --read-data`.
    pub verify_uploads: bool,
    /// Overrides per user; a user's quota caps the bytes under `/USER/`.
    pub users: HashMap<String, UserOptions>,
    /// Bytes of the whole directory (rest-server --max-size).
    pub max_size: Option<u64>,
    /// One Apache combined line per request, without the trailing newline.
    pub access_log: Option<Arc<dyn Fn(String) + Send + Sync>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("dir", &self.dir)
            .field("htpasswd", &self.htpasswd)
            .field("private_repos", &self.private_repos)
            .field("append_only", &self.append_only)
            .field("verify_uploads", &self.verify_uploads)
            .field("users", &self.users)
            .field("max_size", &self.max_size)
            .field("access_log", &self.access_log.is_some())
            .finish()
    }
}

/// What one user gets beyond the defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserOptions {
    /// Overrides [`Options::append_only`] for this user.
    pub append_only: Option<bool>,
    /// Bytes under `/USER/`, whoever writes there.
    pub quota: Option<u64>,
}
