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

/// A listing taken apart: its text without map element blocks, and each
/// block (joined onto one line, braces removed) with the map it belongs to.
/// Element blocks are where nft's own line wrapping lives, so comparisons
/// take them out and look at the slots instead.
struct Split {
    text: String,
    blocks: Vec<(String, String)>,
}

fn split(listing: &str) -> Split {
    let mut out = Split {
        text: String::new(),
        blocks: Vec::new(),
    };
    let mut map: Option<String> = None;
    let mut lines = listing.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(first) = trimmed.strip_prefix("elements = {") {
            let mut block = first.to_owned();
            while !block.trim_end().ends_with('}') {
                let Some(more) = lines.next() else { break };
                block.push(' ');
                block.push_str(more.trim());
            }
            if let Some(name) = &map {
                let block = block.trim_end().trim_end_matches('}').to_owned();
                out.blocks.push((name.clone(), block));
            }
            continue;
        }
        if let Some(name) = trimmed
            .strip_prefix("map ")
            .and_then(|rest| rest.strip_suffix(" {"))
        {
            map = Some(name.to_owned());
        } else if trimmed.starts_with("typeof ") || trimmed.starts_with("type ") {
            // Only maps from slot to `ip daddr . tcp dport` are ours to read.
            if !trimmed.ends_with(": ip daddr . tcp dport") {
                map = None;
            }
        } else if trimmed == "}" {
            map = None;
        }
        out.text.push_str(line);
        out.text.push('\n');
    }
    out
}

/// The listing without map elements (compared separately, slot by slot).
pub fn without_elements(listing: &str) -> String {
    split(listing).text
}

/// Backend maps from an `nft list table` listing: map name → backend per
/// slot. Only maps of our shape (slot → `ip daddr . tcp dport`, slots exactly
/// 0..N) are read; anything else is not ours to interpret.
pub fn maps_from_listing(listing: &str) -> LiveMaps {
    split(listing)
        .blocks
        .into_iter()
        .filter_map(|(name, block)| Some((name, parse_elements(&block)?)))
        .collect()
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

    #[test]
    fn element_blocks_are_left_out_of_the_text_diff() {
        let listing = "table inet gatehouse {\n\tmap m {\n\t\ttypeof numgen inc mod 8 : ip daddr . tcp dport\n\
                       \t\telements = { 0 : 10.0.0.11 . 80, 1 : 10.0.0.12 . 80,\n\t\t\t     2 : 10.0.0.11 . 80 }\n\t}\n}\n";
        let stripped = without_elements(listing);
        assert!(!stripped.contains("10.0.0.11"), "{stripped}");
        assert!(stripped.contains("typeof numgen"));
        assert!(stripped.ends_with("\t}\n}\n"));
    }
}
