//! gatehouse.toml, read into one typed model: [`Farm`].
//!
//! Everything downstream (the nftables generator, later the proxy, log and
//! backup servers) works from a `Farm` and never sees TOML. Every value keeps the
//! byte range it came from so that a complaint found at any stage, even at apply
//! time on the host, can name `file:line:column`.

mod backup_server;
mod diagnostic;
mod log_server;
mod model;
mod raw;
mod routes;
mod summary;
mod validate;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics, Source};
pub use model::{
    AccessLog, Admin, Backend, BackendProtocol, BackendTls, BackupServer, BackupUser, Balance, Check, Farm,
    Gateway, Health, Listen, ListenerTls, Located, LogServer, LogTls, Mode, ProxyOptions, ProxyVersion,
    Route, Service, Target, Timeouts, UpstreamOptions,
};

/// Where the config is looked for when no `-c FILE` is given and
/// `$GATEHOUSE_CONFIG` is unset.
pub const DEFAULT_PATH: &str = "/etc/gatehouse/gatehouse.toml";

/// Why a config could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read at all.
    Unreadable { path: PathBuf, error: std::io::Error },
    /// The file was read but is not a valid farm.
    Invalid(Diagnostics),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unreadable { path, error } => write!(
                f,
                "cannot read {}: {error}\n  help: give the file with -c FILE or $GATEHOUSE_CONFIG; \
                 examples/seed-farm.toml is a starting point",
                path.display()
            ),
            LoadError::Invalid(diagnostics) => diagnostics.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

impl Farm {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Farm, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Unreadable {
            path: path.to_owned(),
            error,
        })?;
        Farm::parse(&path.display().to_string(), &text).map_err(LoadError::Invalid)
    }

    /// Validate config text; `name` is how the file is named in diagnostics.
    pub fn parse(name: &str, text: &str) -> Result<Farm, Diagnostics> {
        let source = Source::new(name, text);
        match raw::parse(text) {
            Ok(file) => validate::farm(source, file),
            Err((message, span)) => {
                let mut diagnostic = Diagnostic::new(message).help(
                    "see the config reference in README.md; examples/seed-farm.toml is a complete file",
                );
                if let Some(span) = span {
                    diagnostic = diagnostic.at(span);
                }
                Err(Diagnostics::new(source, vec![diagnostic]))
            }
        }
    }
}

/// The config path by the documented precedence: `-c FILE`, then
/// `$GATEHOUSE_CONFIG`, then [`DEFAULT_PATH`].
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_owned();
    }
    match std::env::var_os("GATEHOUSE_CONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}
