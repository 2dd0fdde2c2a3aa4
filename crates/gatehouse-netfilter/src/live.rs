//! What gatehouse's table holds right now, read back from the kernel: its text
//! (to restore it on rollback, and to diff against a plan) and its backend maps
//! slot by slot (so Maglev can keep flows where they are).

use std::net::SocketAddrV4;

use anyhow::Context;

use crate::host::Host;
use crate::nft::{FAMILY, TABLE};
use crate::plan::LiveMaps;

#[derive(Debug, Clone)]
pub struct LiveTable {
    /// `nft list table inet gatehouse`, which nft reads back as it is.
    pub text: String,
    pub maps: LiveMaps,
}

/// The live table, or `None` when gatehouse's table is not installed.
pub fn read(host: &Host) -> anyhow::Result<Option<LiveTable>> {
    let text = match host.nft(&["list", "table", FAMILY, TABLE], None) {
        Ok(text) => text,
        Err(e) if e.to_string().contains("No such file or directory") => return Ok(None),
        Err(e) => return Err(e.context("reading gatehouse's live table")),
    };
    let json = host.nft(&["-j", "list", "table", FAMILY, TABLE], None)?;
    let maps = maps_from_json(&json)?;
    Ok(Some(LiveTable { text, maps }))
}

/// Backend maps from `nft -j list table`: map name → backend per slot. Maps
/// whose slots are not exactly 0..N are left out (not ours to interpret).
pub fn maps_from_json(json: &str) -> anyhow::Result<LiveMaps> {
    let doc: serde_json::Value = serde_json::from_str(json).context("reading `nft -j` output")?;
    let mut maps = LiveMaps::new();
    for object in doc["nftables"].as_array().into_iter().flatten() {
        let map = &object["map"];
        let Some(name) = map["name"].as_str() else {
            continue;
        };
        let mut slots: Vec<(u64, SocketAddrV4)> = Vec::new();
        for elem in map["elem"].as_array().into_iter().flatten() {
            let (Some(slot), Some(concat)) = (elem[0].as_u64(), elem[1]["concat"].as_array()) else {
                continue;
            };
            let (Some(ip), Some(port)) = (
                concat
                    .first()
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok()),
                concat
                    .get(1)
                    .and_then(|v| v.as_u64())
                    .and_then(|p| u16::try_from(p).ok()),
            ) else {
                continue;
            };
            slots.push((slot, SocketAddrV4::new(ip, port)));
        }
        slots.sort_by_key(|(slot, _)| *slot);
        if slots.iter().enumerate().all(|(i, (slot, _))| *slot == i as u64) {
            maps.insert(name.to_owned(), slots.into_iter().map(|(_, addr)| addr).collect());
        }
    }
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slots_in_order() {
        let json = r#"{"nftables":[{"metainfo":{}},{"map":{"name":"backends_web","elem":[
            [1,{"concat":["10.0.0.12",80]}],[0,{"concat":["10.0.0.11",80]}]]}}]}"#;
        let maps = maps_from_json(json).unwrap();
        let slots: Vec<String> = maps["backends_web"].iter().map(|a| a.to_string()).collect();
        assert_eq!(slots, ["10.0.0.11:80", "10.0.0.12:80"]);
    }

    #[test]
    fn maps_with_gaps_are_not_ours() {
        let json = r#"{"nftables":[{"map":{"name":"m","elem":[[0,{"concat":["10.0.0.11",80]}],[5,{"concat":["10.0.0.12",80]}]]}}]}"#;
        assert!(maps_from_json(json).unwrap().is_empty());
    }
}
