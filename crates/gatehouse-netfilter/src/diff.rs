//! What `apply` would change, for `gatehouse plan` when a table is live.
//!
//! Both sides are compared as nft itself writes them: the planned table is
//! loaded into a throwaway network namespace (`unshare --net`) and listed back,
//! so formatting differences never show up as changes. Backend maps are
//! compared slot by slot and summarised per backend, because a Maglev map has
//! 65,537 lines and "16,384 slots move from 10.0.0.13:80" says what a line diff
//! of them would bury.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddrV4;

use anyhow::Context;

use crate::ir::Ruleset;
use crate::live::{LiveTable, without_elements};
use crate::nft::{FAMILY, TABLE};
use crate::plan::LiveMaps;

/// The difference as text, empty when the live table is what would be applied.
pub fn diff(live: &LiveTable, definition: &str, planned: &Ruleset) -> anyhow::Result<String> {
    let canonical = canonical_listing(definition)?;
    let before = without_elements(&live.text);
    let after = without_elements(&canonical);
    let mut out = String::new();
    if before != after {
        let text = similar::TextDiff::from_lines(&before, &after)
            .unified_diff()
            .context_radius(3)
            .header("live", "planned")
            .to_string();
        out.push_str(&text);
    }
    out.push_str(&map_changes(live, planned));
    Ok(out)
}

/// The table as nft lists it after loading `definition` into an empty
/// network namespace of its own.
pub fn canonical_listing(definition: &str) -> anyhow::Result<String> {
    if definition.is_empty() {
        return Ok(String::new());
    }
    let script = format!("nft -f - && nft list table {FAMILY} {TABLE}");
    let output = std::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let input = definition.to_owned();
            let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
            let output = child.wait_with_output();
            let _ = writer.join();
            output
        })
        .context("running unshare to list the planned table")?;
    if !output.status.success() {
        anyhow::bail!(
            "could not load the planned table in a scratch namespace: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether the live table already is `definition`, without asking nft to
/// load anything: our rendering is exactly nft's listing apart from how map
/// elements wrap (the golden tests hold it to that), and maps are compared
/// slot by slot. A false "no" only costs a needless apply.
pub fn is_live(live: &LiveTable, definition: &str, planned: &Ruleset) -> bool {
    without_elements(&live.text) == without_elements(definition) && live.maps == planned_maps(planned)
}

fn planned_maps(planned: &Ruleset) -> LiveMaps {
    planned
        .dispatches
        .iter()
        .map(|d| (d.map_name(), (0..d.slots.len()).map(|s| d.slot_addr(s)).collect()))
        .collect()
}

fn map_changes(live: &LiveTable, planned: &Ruleset) -> String {
    let mut out = String::new();
    let planned_maps = planned_maps(planned);
    for (name, after) in &planned_maps {
        match live.maps.get(name) {
            None => {
                let _ = writeln!(out, "+ map {name}: {} slots", after.len());
                shares(&mut out, &[], after);
            }
            Some(before) if before != after => {
                let moved = before.iter().zip(after).filter(|(a, b)| a != b).count()
                    + before.len().abs_diff(after.len());
                let _ = writeln!(
                    out,
                    "~ map {name}: {moved} of {} slots change ({} slots before)",
                    after.len(),
                    before.len()
                );
                shares(&mut out, before, after);
            }
            Some(_) => {}
        }
    }
    for name in live.maps.keys().filter(|n| !planned_maps.contains_key(*n)) {
        let _ = writeln!(out, "- map {name}");
    }
    out
}

/// Slots per backend, before and after.
fn shares(out: &mut String, before: &[SocketAddrV4], after: &[SocketAddrV4]) {
    let mut counts: BTreeMap<SocketAddrV4, (usize, usize)> = BTreeMap::new();
    for addr in before {
        counts.entry(*addr).or_default().0 += 1;
    }
    for addr in after {
        counts.entry(*addr).or_default().1 += 1;
    }
    for (addr, (b, a)) in counts {
        let _ = writeln!(out, "    {:<21} {b:>6} -> {a:<6} slots", addr.to_string());
    }
}
