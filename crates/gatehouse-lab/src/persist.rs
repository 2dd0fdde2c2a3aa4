//! A lab that outlives the process that built it (`gatehouse lab up`): its record
//! in `run_dir/lab.json`, and `down` and `status` working from that record alone.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::WebKind;
use crate::teardown;
use crate::topology;

pub(crate) const RECORD_FILE: &str = "lab.json";

/// What `lab.json` holds: enough to find and remove everything the lab made.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Record {
    pub name: String,
    pub backends: usize,
    pub web: WebKind,
    pub builtin_web: Vec<String>,
    pub run_dir: PathBuf,
    pub namespaces: Vec<String>,
    pub processes: Vec<RecordedProcess>,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct RecordedProcess {
    pub pid: u32,
    pub ns: String,
    /// The process's log, relative to the run dir (e.g. `web1/nginx.log`).
    pub what: String,
}

pub(crate) fn write(record: &Record) -> Result<PathBuf> {
    let path = record.run_dir.join(RECORD_FILE);
    let json = serde_json::to_string_pretty(record).context("encoding lab.json")?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn read(run_dir: &Path) -> Result<Record> {
    let path = run_dir.join(RECORD_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: is a lab up with this run directory?", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a lab record; remove the lab by hand (`ip netns del NAME-...`, then the directory)",
            path.display()
        )
    })
}

pub(crate) fn down(run_dir: &Path) -> Result<()> {
    if !run_dir.exists() {
        return Ok(());
    }
    let record = read(run_dir)?;
    // Recorded pids first (nginx masters, so they stop their own workers), but only
    // those still inside the lab's namespace: a pid may since have been reused.
    let pids: Vec<u32> = record
        .processes
        .iter()
        .filter(|p| teardown::in_namespace(p.pid, &p.ns) == Some(true))
        .map(|p| p.pid)
        .collect();
    let mut problems = teardown::stop_pids(&pids);
    problems.extend(teardown::remove_namespaces_and_dir(
        &record.namespaces,
        Some(run_dir),
    ));
    if !problems.is_empty() {
        bail!("tearing down lab {}: {}", record.name, problems.join("; "));
    }
    Ok(())
}

/// A persisted lab as it is now.
#[derive(Debug, Clone)]
pub struct LabStatus {
    pub name: String,
    pub run_dir: PathBuf,
    pub backends: usize,
    pub web: WebKind,
    pub namespaces: Vec<NamespaceStatus>,
    pub processes: Vec<ProcessStatus>,
}

#[derive(Debug, Clone)]
pub struct NamespaceStatus {
    pub name: String,
    pub exists: bool,
}

#[derive(Debug, Clone)]
pub struct ProcessStatus {
    pub pid: u32,
    pub ns: String,
    pub what: String,
    /// Running, and (where that can be checked) still inside its namespace, so not
    /// a reused pid.
    pub running: bool,
}

impl LabStatus {
    /// Every namespace exists and every recorded process runs.
    pub fn is_healthy(&self) -> bool {
        self.namespaces.iter().all(|n| n.exists) && self.processes.iter().all(|p| p.running)
    }
}

pub(crate) fn status(run_dir: &Path) -> Result<LabStatus> {
    let record = read(run_dir)?;
    Ok(LabStatus {
        namespaces: record
            .namespaces
            .iter()
            .map(|ns| NamespaceStatus {
                name: ns.clone(),
                exists: topology::namespace_exists(ns),
            })
            .collect(),
        processes: record
            .processes
            .iter()
            .map(|p| ProcessStatus {
                pid: p.pid,
                ns: p.ns.clone(),
                what: p.what.clone(),
                // Without root the namespace cannot be checked; trust the pid then.
                running: teardown::is_running(p.pid) && teardown::in_namespace(p.pid, &p.ns) != Some(false),
            })
            .collect(),
        name: record.name,
        run_dir: record.run_dir,
        backends: record.backends,
        web: record.web,
    })
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let health = if self.is_healthy() { "up" } else { "DEGRADED" };
        writeln!(
            f,
            "lab {} is {health}: {} {} web server(s), run dir {}",
            self.name,
            self.backends,
            self.web,
            self.run_dir.display()
        )?;
        let width = self
            .namespaces
            .iter()
            .map(|n| n.name.len())
            .max()
            .unwrap_or(9)
            .max(9);
        writeln!(f, "  {:<width$}  STATE", "NAMESPACE")?;
        for ns in &self.namespaces {
            let state = if ns.exists { "present" } else { "MISSING" };
            writeln!(f, "  {:<width$}  {state}", ns.name)?;
        }
        writeln!(f, "  {:<8}  {:<width$}  {:<8}  LOG", "PID", "NAMESPACE", "STATE")?;
        for p in &self.processes {
            let state = if p.running { "running" } else { "GONE" };
            writeln!(f, "  {:<8}  {:<width$}  {state:<8}  {}", p.pid, p.ns, p.what)?;
        }
        Ok(())
    }
}
