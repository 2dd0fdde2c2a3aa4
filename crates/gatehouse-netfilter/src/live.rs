//! What gatehouse's table holds right now, read back from the kernel: its text
//! (to restore it on rollback, and to diff against a plan) and its backend maps
//! slot by slot (so Maglev can keep flows where they are).

use std::net::SocketAddrV4;

use crate::host::Host;
use crate::nft::{FAMILY, TABLE};
use crate::plan::LiveMaps;

#[derive(Debug, Clone)]
pub struct LiveTable {
    /// `nft list table inet gatehouse`, which nft reads back as it is.
    pub text: String,
    pub maps: LiveMaps,
}

/// The live table, or `None` when gatehouse's table is not installed. One
/// listing serves both purposes: on a 65,537-slot Maglev map every listing
/// costs about a second.
pub fn read(host: &Host) -> anyhow::Result<Option<LiveTable>> {
    let text = match host.nft(&["list", "table", FAMILY, TABLE], None) {
        Ok(text) => text,
        Err(e) if e.to_string().contains("No such file or directory") => return Ok(None),
        Err(e) => return Err(e.context("reading gatehouse's live table")),
    };
    let maps = maps_from_listing(&text);
    Ok(Some(LiveTable { text, maps }))
}

/// Backend maps from an `nft list table` listing: map name → backend per
/// slot. Only maps of our shape (slot → `ip daddr . tcp dport`, slots exactly
/// 0..N) are read; anything else is not ours to interpret.
pub fn maps_from_listing(listing: &str) -> LiveMaps {
    let mut maps = LiveMaps::new();
    let mut current: Option<String> = None;
    let mut lines = listing.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("map ").and_then(|rest| rest.strip_suffix(" {")) {
            current = Some(name.to_owned());
        } else if line.starts_with("typeof ") || line.starts_with("type ") {
            if !line.ends_with(": ip daddr . tcp dport") {
                current = None;
            }
        } else if let Some(first) = line.strip_prefix("elements = {") {
            let mut block = first.to_owned();
            while !block.trim_end().ends_with('}') {
                let Some(more) = lines.next() else { break };
                block.push(' ');
                block.push_str(more.trim());
            }
            if let Some(name) = current.take()
                && let Some(slots) = parse_elements(block.trim_end().trim_end_matches('}'))
            {
                maps.insert(name, slots);
            }
        } else if line == "}" {
            current = None;
        }
    }
    maps
}

/// `0 : 10.0.0.11 . 80, 1 : 10.0.0.12 . 80` → the backends in slot order.
fn parse_elements(text: &str) -> Option<Vec<SocketAddrV4>> {
    let mut slots: Vec<(usize, SocketAddrV4)> = Vec::new();
    for element in text.split(',') {
        let (slot, value) = element.split_once(" : ")?;
        let (ip, port) = value.split_once(" . ")?;
        let addr = SocketAddrV4::new(ip.trim().parse().ok()?, port.trim().parse().ok()?);
        slots.push((slot.trim().parse().ok()?, addr));
    }
    slots.sort_by_key(|(slot, _)| *slot);
    let contiguous = slots.iter().enumerate().all(|(i, (slot, _))| *slot == i);
    contiguous.then(|| slots.into_iter().map(|(_, addr)| addr).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "table inet gatehouse {
	map backends_web {
		typeof numgen inc mod 3 : ip daddr . tcp dport
		elements = { 1 : 10.0.0.12 . 80, 0 : 10.0.0.11 . 80,
			     2 : 10.0.0.13 . 8080 }
	}

	map other {
		type ipv4_addr : verdict
		elements = { 10.0.0.1 : accept }
	}

	map gaps {
		typeof numgen inc mod 6 : ip daddr . tcp dport
		elements = { 0 : 10.0.0.11 . 80, 5 : 10.0.0.12 . 80 }
	}

	chain input {
		type filter hook input priority filter; policy drop;
	}
}
";

    #[test]
    fn reads_our_maps_slot_by_slot_across_wrapped_lines() {
        let maps = maps_from_listing(LISTING);
        let slots: Vec<String> = maps["backends_web"].iter().map(|a| a.to_string()).collect();
        assert_eq!(slots, ["10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:8080"]);
    }

    #[test]
    fn maps_of_another_shape_or_with_gaps_are_not_ours() {
        let maps = maps_from_listing(LISTING);
        assert!(!maps.contains_key("other"));
        assert!(!maps.contains_key("gaps"));
        assert_eq!(maps.len(), 1);
    }
}
