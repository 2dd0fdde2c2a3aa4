//! Installing the ruleset without ever leaving the gateway half-configured or
//! its owner locked out.
//!
//! - One transaction: the new table replaces the old in a single `nft -f`
//!   batch, checked first with `nft -c`. If the kernel refuses, nothing changed.
//! - Rollback: before each apply the live table (or its absence) is saved in
//!   the state directory; `rollback` puts it back, again in one transaction.
//! - Confirm: with a deadline, a watchdog process restores the saved table
//!   unless `confirm` comes first, like iptables-apply and shorewall's
//!   safe-restart: a rule that cuts your SSH session undoes itself.
//!
//! Every command that changes the table holds the state directory's lock, so
//! an apply, a rollback and the watchdog never interleave.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use gatehouse_config::{Diagnostics, Farm};
use serde::{Deserialize, Serialize};

use crate::host::{self, Host};
use crate::live::{self, LiveTable};
use crate::plan::{self, InRotation, LiveMaps};
use crate::{diff, nft};

/// Why an apply did not happen.
#[derive(Debug)]
pub enum Error {
    /// The farm does not fit this host (exit code 2: fix the file).
    Invalid(Diagnostics),
    /// The host refused or failed (exit code 1).
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::Failed(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(d) => d.fmt(f),
            Error::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for Error {}

/// Where apply keeps what rollback and confirm need.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// A confirm deadline that has not passed or been met yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    pub token: String,
    pub deadline_unix_ms: u64,
}

impl Pending {
    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.deadline_unix_ms.saturating_sub(unix_ms()))
    }
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    /// `/var/lib/gatehouse`, with a subdirectory per network namespace so a lab
    /// gateway's rollback state never mixes with the host's.
    pub fn default_for(netns: Option<&str>) -> StateDir {
        let base = PathBuf::from("/var/lib/gatehouse");
        StateDir::new(match netns {
            Some(ns) => base.join("netns").join(ns),
            None => base,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> anyhow::Result<File> {
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating state directory {}", self.path.display()))?;
        let file = File::create(self.path.join("lock")).context("opening the state lock")?;
        file.lock().context("locking the state directory")?;
        Ok(file)
    }

    fn previous_path(&self) -> PathBuf {
        self.path.join("previous.nft")
    }

    fn pending_path(&self) -> PathBuf {
        self.path.join("pending.json")
    }

    /// Save the table as it was, so rollback can restore it: its text, or an
    /// empty definition for "there was no table".
    fn save_previous(&self, live: Option<&LiveTable>) -> anyhow::Result<()> {
        let text = live.map_or(String::new(), |l| l.text.clone());
        write_atomically(&self.previous_path(), &text)
    }

    fn previous(&self) -> anyhow::Result<Option<String>> {
        match fs::read_to_string(self.previous_path()) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the saved previous table"),
        }
    }

    pub fn pending(&self) -> anyhow::Result<Option<Pending>> {
        match fs::read_to_string(self.pending_path()) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).context("reading pending.json")?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading pending.json"),
        }
    }

    fn set_pending(&self, pending: Option<&Pending>) -> anyhow::Result<()> {
        match pending {
            Some(p) => write_atomically(&self.pending_path(), &serde_json::to_string(p)?),
            None => match fs::remove_file(self.pending_path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context("removing pending.json"),
                _ => Ok(()),
            },
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What `apply` did.
#[derive(Debug)]
pub struct Applied {
    /// The live table differs from what was there before.
    pub changed: bool,
    /// The confirm deadline now running, if any. When `changed`, it is a new
    /// one and the caller starts its watchdog (see [`watchdog`]).
    pub pending: Option<Pending>,
}

/// The ruleset `apply` would install for this farm, given the live table.
pub fn definition(farm: &Farm, live: Option<&LiveTable>) -> (crate::ir::Ruleset, String) {
    definition_in_rotation(farm, live, &InRotation::new())
}

/// As [`definition`], with the maps holding only the backends in rotation.
pub fn definition_in_rotation(
    farm: &Farm,
    live: Option<&LiveTable>,
    rotation: &InRotation,
) -> (crate::ir::Ruleset, String) {
    let empty = LiveMaps::new();
    let ruleset = plan::ruleset_in_rotation(farm, live.map_or(&empty, |l| &l.maps), rotation);
    let text = if ruleset.chains.is_empty() && ruleset.dispatches.is_empty() {
        String::new()
    } else {
        nft::table(&ruleset)
    };
    (ruleset, text)
}

/// Check the farm against the host, then install it in one transaction.
pub fn apply(
    farm: &Farm,
    host: &Host,
    state: &StateDir,
    confirm: Option<Duration>,
) -> Result<Applied, Error> {
    apply_in_rotation(farm, host, state, confirm, &InRotation::new())
}

/// As [`apply`], with each nat map holding only the backends health checks
/// keep in rotation: what `gatehouse serve` applies on start and reload.
pub fn apply_in_rotation(
    farm: &Farm,
    host: &Host,
    state: &StateDir,
    confirm: Option<Duration>,
    rotation: &InRotation,
) -> Result<Applied, Error> {
    if farm.gateway.is_none() {
        return Err(Error::Failed(anyhow::anyhow!(
            "the file has no [gateway] section, so there is nothing to install in the kernel \
             (http and tcp services run under the userspace proxy)"
        )));
    }
    let facts = host.facts()?;
    let problems = host::check(farm, &facts, host);
    if !problems.is_empty() {
        return Err(Error::Invalid(farm.diagnostics(problems)));
    }
    let _lock = state.lock()?;
    let live = live::read(host)?;
    let (ruleset, definition) = definition_in_rotation(farm, live.as_ref(), rotation);
    let pending_before = state.pending()?;
    let probation = pending_before.is_some();

    if let Some(live) = &live
        && diff::is_live(live, &definition, &ruleset)
    {
        // Nothing to install: leave the table (and its round-robin counters)
        // alone, and the saved previous table too, or rollback would lead
        // back to this same table. Applying without --confirm accepts a table
        // on probation; with --confirm, a running deadline keeps running.
        host.enable_ip_forwarding()?;
        let pending = if confirm.is_some() {
            pending_before
        } else {
            state.set_pending(None)?;
            None
        };
        return Ok(Applied {
            changed: false,
            pending,
        });
    }

    let script = nft::replace_script(&definition);
    host.nft(&["-c", "-f", "-"], Some(&script))
        .context("nft refused the generated ruleset; nothing was changed")?;
    // A confirm still pending means the live table is on probation: keep the
    // last good one as the state to return to, whatever this apply brings.
    if !(probation && confirm.is_some()) {
        state.save_previous(live.as_ref())?;
    }
    host.nft(&["-f", "-"], Some(&script))
        .context("nft refused the ruleset; the live ruleset is unchanged")?;
    if let Err(e) = host.enable_ip_forwarding() {
        restore(host, state)?;
        return Err(Error::Failed(e.context("the previous table was restored")));
    }
    // The deadline starts once everything is in place, so the user gets the
    // whole time they asked for to check their access.
    let pending = confirm.map(|wait| Pending {
        token: format!("{:x}-{}", unix_ms(), std::process::id()),
        deadline_unix_ms: unix_ms() + wait.as_millis() as u64,
    });
    state.set_pending(pending.as_ref())?;
    Ok(Applied {
        changed: true,
        pending,
    })
}

/// Put the saved table back (the caller holds the lock).
fn restore(host: &Host, state: &StateDir) -> anyhow::Result<()> {
    let Some(previous) = state.previous()? else {
        bail!(
            "nothing to roll back to: no apply has run with state directory {}",
            state.path.display()
        );
    };
    let script = nft::replace_script(&previous);
    host.nft(&["-f", "-"], Some(&script))
        .context("restoring the previous table")?;
    Ok(())
}

/// Accept the ruleset on probation. Returns whether one was pending.
pub fn confirm(state: &StateDir) -> anyhow::Result<bool> {
    let _lock = state.lock()?;
    let was = state.pending()?.is_some();
    state.set_pending(None)?;
    Ok(was)
}

/// Restore the table saved by the last apply (or rollback, or down), saving
/// the current one in its place so a second rollback undoes the first.
pub fn rollback(host: &Host, state: &StateDir) -> anyhow::Result<()> {
    let _lock = state.lock()?;
    let current = live::read(host)?;
    restore(host, state)?;
    state.save_previous(current.as_ref())?;
    state.set_pending(None)
}

/// Remove gatehouse's table; everything else is left as it is. Returns whether
/// there was a table to remove.
pub fn down(host: &Host, state: &StateDir) -> anyhow::Result<bool> {
    let _lock = state.lock()?;
    let Some(current) = live::read(host)? else {
        state.set_pending(None)?;
        return Ok(false);
    };
    host.nft(&["-f", "-"], Some(&nft::replace_script("")))?;
    state.save_previous(Some(&current))?;
    state.set_pending(None)?;
    Ok(true)
}

#[derive(Debug, PartialEq, Eq)]
pub enum WatchdogOutcome {
    /// `confirm`, `rollback`, `down` or a newer apply took the deadline away.
    Settled,
    /// The deadline passed; the previous table is back.
    RolledBack,
}

/// Wait for the deadline of the pending confirm named `token`; if it is still
/// pending then, restore the previous table. Run in its own process (the
/// binary's hidden `confirm-watchdog` command) so it outlives the SSH session
/// that a bad rule may have cut.
pub fn watchdog(host: &Host, state: &StateDir, token: &str) -> anyhow::Result<WatchdogOutcome> {
    loop {
        let pending = state.pending()?;
        let Some(pending) = pending.filter(|p| p.token == token) else {
            return Ok(WatchdogOutcome::Settled);
        };
        if pending.remaining().is_zero() {
            let _lock = state.lock()?;
            if state.pending()?.is_none_or(|p| p.token != token) {
                return Ok(WatchdogOutcome::Settled);
            }
            let current = live::read(host)?;
            restore(host, state)?;
            state.save_previous(current.as_ref())?;
            state.set_pending(None)?;
            return Ok(WatchdogOutcome::RolledBack);
        }
        std::thread::sleep(pending.remaining().min(Duration::from_millis(100)));
    }
}
