//! Taking a lab apart: processes by pid (SIGTERM, a grace period, SIGKILL), then
//! whatever still runs inside the lab's namespaces (nginx workers), then the
//! namespaces, then the run directory.
//!
//! Every function here reports problems as strings instead of stopping at the first
//! one: teardown runs from `Drop`, possibly during a panic, and must do as much as it
//! can and never panic itself.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::topology::{self, NETNS_DIR};

/// How long a process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a SIGKILLed process to disappear.
const KILL_WAIT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(10);

/// Stops processes this process spawned and reaps them, so none is left a zombie.
pub(crate) fn stop_children(children: &mut [Child]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut running: Vec<&mut Child> = Vec::new();
    for child in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            signal(child.id(), Signal::TERM, &mut problems);
            running.push(child);
        }
    }
    let deadline = Instant::now() + GRACE;
    while !running.is_empty() && Instant::now() < deadline {
        running.retain_mut(|child| matches!(child.try_wait(), Ok(None)));
        if !running.is_empty() {
            std::thread::sleep(POLL);
        }
    }
    for child in running {
        // Child::kill sends SIGKILL; wait() then reaps it.
        if let Err(err) = child.kill() {
            problems.push(format!("SIGKILL to pid {}: {err}", child.id()));
        }
        if let Err(err) = child.wait() {
            problems.push(format!("reaping pid {}: {err}", child.id()));
        }
    }
    problems
}

/// Stops processes that are not our children (those of a persisted lab, or nginx
/// workers). Their parent reaps them; we only wait until they are gone.
pub(crate) fn stop_pids(pids: &[u32]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut running: Vec<u32> = pids.iter().copied().filter(|&pid| is_running(pid)).collect();
    for &pid in &running {
        signal(pid, Signal::TERM, &mut problems);
    }
    wait_gone(&mut running, GRACE);
    for &pid in &running {
        signal(pid, Signal::KILL, &mut problems);
    }
    wait_gone(&mut running, KILL_WAIT);
    for pid in running {
        problems.push(format!("pid {pid} is still running after SIGKILL"));
    }
    problems
}

fn wait_gone(pids: &mut Vec<u32>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        pids.retain(|&pid| is_running(pid));
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(POLL);
    }
}

fn signal(pid: u32, sig: Signal, problems: &mut Vec<String>) {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        problems.push(format!("pid {pid} is not a valid process id"));
        return;
    };
    match kill_process(target, sig) {
        // Already gone between our check and the signal: that is what we wanted.
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(err) => problems.push(format!("signal {sig:?} to pid {pid}: {err}")),
    }
}

/// Whether `pid` exists and is not a zombie (a zombie has exited; only its entry
/// waits for a parent to reap it).
pub(crate) fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 3, the state, follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// Whether `pid` runs in the network namespace `ns`; `None` if that cannot be told
/// (the namespace is gone, or we may not look at the process). A recorded pid is
/// only signalled when this is `Some(true)`, so a pid reused by an unrelated
/// process is spared.
pub(crate) fn in_namespace(pid: u32, ns: &str) -> Option<bool> {
    let ns_handle = std::fs::metadata(Path::new(NETNS_DIR).join(ns)).ok()?;
    match std::fs::metadata(format!("/proc/{pid}/ns/net")) {
        Ok(proc_ns) => Some(ns_handle.dev() == proc_ns.dev() && ns_handle.ino() == proc_ns.ino()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
    }
}

/// Kills every process left in `ns` except `spared`. A few rounds, because an nginx
/// master that has not yet seen its SIGTERM may respawn a worker we just killed.
pub(crate) fn kill_namespace_pids(ns: &str, spared: &[u32]) -> Vec<String> {
    let me = std::process::id();
    let mut problems = Vec::new();
    for _round in 0..3 {
        let pids = match topology::namespace_pids(ns) {
            Ok(pids) => pids,
            Err(err) => {
                if topology::namespace_exists(ns) {
                    problems.push(format!("{err:#}"));
                }
                return problems;
            }
        };
        let targets: Vec<u32> = pids
            .into_iter()
            .filter(|pid| *pid != me && !spared.contains(pid))
            .collect();
        if targets.is_empty() {
            return problems;
        }
        problems = stop_pids(&targets);
    }
    problems
}

/// For each namespace: kill what still runs in it, then delete it. Then remove the
/// run directory, if given.
pub(crate) fn remove_namespaces_and_dir(namespaces: &[String], run_dir: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    for ns in namespaces {
        if !topology::namespace_exists(ns) {
            continue;
        }
        problems.extend(kill_namespace_pids(ns, &[]));
        if let Err(err) = topology::delete_namespace(ns) {
            problems.push(format!("{err:#}"));
        }
    }
    if let Some(dir) = run_dir {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => problems.push(format!("removing {}: {err}", dir.display())),
        }
    }
    problems
}
