//! Health changes as map updates: when a nat service's backend leaves or
//! re-enters rotation, its map `backends_<service>` is rewritten in one nft
//! transaction. The rule that reads the map never changes, so conntrack
//! entries, round-robin counters and every other service are left alone.
//!
//! The slot tables are the ones `plan` builds, with the down backends' slots
//! reassigned (`slots::table`), or, for Maglev, refilled from the live table so
//! that only the flows of the backend that left move (`maglev::table`).
//!
//! nft 1.0.6 refuses to `add` an element whose key exists with another value,
//! so a batch either flushes the map and adds every slot, or deletes the slots
//! that change and adds them back; either way the kernel commits it whole.

use std::fmt::Write;
use std::net::SocketAddrV4;

use anyhow::bail;
use gatehouse_config::{Balance, Mode, Service};

use crate::host::Host;
use crate::nft::{FAMILY, TABLE};
use crate::{live, plan};

/// Slots per line in a script: short lines keep nft's error positions useful.
const SLOTS_PER_LINE: usize = 8;

/// Rewrites one nat service's backend map as its backends' health changes.
#[derive(Debug)]
pub struct MapWriter {
    host: Host,
    service: String,
    map: String,
    balance: Balance,
    backends: Vec<(SocketAddrV4, u32)>,
    slot_count: usize,
    /// The live map, slot by slot, as last read or written; `None` after a
    /// failed write (someone may have replaced the table), until read again.
    live: Option<Vec<SocketAddrV4>>,
}

impl MapWriter {
    /// For a nat service of the applied farm. Reads the live map once: to
    /// check it is there with the slot count the plan gives it, and so that
    /// Maglev keeps flows where they are.
    pub fn new(host: Host, service: &Service) -> anyhow::Result<MapWriter> {
        let mut writer = MapWriter::unread(host, service)?;
        writer.live = Some(writer.read_live()?);
        Ok(writer)
    }

    /// The writer before it has looked at the host.
    fn unread(host: Host, service: &Service) -> anyhow::Result<MapWriter> {
        if service.mode != Mode::Nat {
            bail!(
                "service {} is not a nat service: it has no kernel map (the userspace proxy balances it)",
                service.name.value
            );
        }
        let backends = plan::nat_backends(service);
        Ok(MapWriter {
            host,
            service: service.name.value.clone(),
            map: plan::map_name(service),
            balance: service.balance,
            slot_count: plan::slot_count(service.balance, &backends),
            backends,
            live: None,
        })
    }

    pub fn map_name(&self) -> &str {
        &self.map
    }

    /// The nft script that puts the map in the state for `up` (one flag per
    /// backend, in config order; all false fails open: every backend takes
    /// traffic). Empty when the map already is in that state.
    pub fn script(&self, up: &[bool]) -> String {
        self.render(&self.slots_for(up))
    }

    /// Put the map in the state for `up` with one `nft -f -` (one
    /// transaction). Returns whether anything was written: a slot table that
    /// would not change is not.
    pub fn write(&mut self, up: &[bool]) -> anyhow::Result<bool> {
        if self.live.is_none() {
            self.live = Some(self.read_live()?);
        }
        let slots = self.slots_for(up);
        let script = self.render(&slots);
        if script.is_empty() {
            return Ok(false);
        }
        if let Err(e) = self.host.nft(&["-f", "-"], Some(&script)) {
            // The batch changed nothing, but what made it fail (a table
            // replaced or removed under us) may have: look again next time.
            self.live = None;
            return Err(e.context(format!("rewriting map {}", self.map)));
        }
        self.live = Some(slots);
        Ok(true)
    }

    /// The map for `up`, slot by slot.
    fn slots_for(&self, up: &[bool]) -> Vec<SocketAddrV4> {
        assert_eq!(
            up.len(),
            self.backends.len(),
            "one up flag per backend of {}",
            self.service
        );
        plan::slot_table(self.balance, &self.backends, up, self.live.as_deref())
            .into_iter()
            .map(|b| self.backends[b].0)
            .collect()
    }

    /// The batch that turns the live map into `slots`. Small maps are written
    /// whole, which does not depend on what we believe is live; a Maglev map
    /// (65,537 slots, about half a second for nft to load) only where slots
    /// change.
    fn render(&self, slots: &[SocketAddrV4]) -> String {
        let (table, map) = (format!("{FAMILY} {TABLE}"), &self.map);
        let mut out = String::new();
        match self.live.as_deref() {
            Some(live) if live == slots => {}
            Some(live) if self.balance == Balance::Maglev && live.len() == slots.len() => {
                let changed: Vec<usize> = (0..slots.len()).filter(|&s| live[s] != slots[s]).collect();
                let _ = write!(out, "delete element {table} {map} ");
                elements(&mut out, changed.iter().map(|slot| slot.to_string()));
                let _ = write!(out, "add element {table} {map} ");
                elements(&mut out, changed.iter().map(|&slot| element(slot, slots[slot])));
            }
            _ => {
                let _ = writeln!(out, "flush map {table} {map}");
                let _ = write!(out, "add element {table} {map} ");
                elements(
                    &mut out,
                    slots.iter().enumerate().map(|(slot, &addr)| element(slot, addr)),
                );
            }
        }
        out
    }

    /// The map as the kernel holds it, checked against the config.
    fn read_live(&self) -> anyhow::Result<Vec<SocketAddrV4>> {
        let map = &self.map;
        let listing = match self.host.nft(&["list", "map", FAMILY, TABLE, map], None) {
            Ok(listing) => listing,
            // nft's own words; `ip netns exec` says "No such file" differently.
            Err(e) if e.to_string().contains("Error: No such file or directory") => {
                bail!("map {map} is not installed: run gatehouse apply")
            }
            Err(e) => return Err(e.context(format!("reading map {map}"))),
        };
        let Some(slots) = live::maps_from_listing(&listing).remove(map) else {
            bail!("map {map} is not a backend map as gatehouse installs it: run gatehouse apply");
        };
        if slots.len() != self.slot_count {
            bail!(
                "map {map} has {} slots, but service {} needs {}: the file changed since it was applied; \
                 run gatehouse apply",
                slots.len(),
                self.service,
                self.slot_count
            );
        }
        Ok(slots)
    }
}

fn element(slot: usize, addr: SocketAddrV4) -> String {
    format!("{slot} : {} . {}", addr.ip(), addr.port())
}

/// `{ a, b, ... }` and a newline, a few items per line.
fn elements(out: &mut String, items: impl Iterator<Item = String>) {
    out.push_str("{ ");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(if i % SLOTS_PER_LINE == 0 { ",\n\t" } else { ", " });
        }
        out.push_str(&item);
    }
    out.push_str(" }\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::Farm;

    fn farm(balance: &str, backends: &str) -> Farm {
        let text = format!(
            "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\nlan_subnet = \"10.0.0.0/24\"\n\n[[service]]\n\
             name = \"web\"\nlisten = \"80\"\nmode = \"nat\"\nbalance = \"{balance}\"\nbackends = [{backends}]\n"
        );
        Farm::parse("farm.toml", &text).unwrap_or_else(|d| panic!("{}", d.render(false)))
    }

    fn service(balance: &str, backends: &str) -> Service {
        farm(balance, backends).services[0].clone()
    }

    /// A writer whose live map is the one `apply` installs.
    fn applied(service: &Service) -> MapWriter {
        let mut writer = MapWriter::unread(Host::local(), service).unwrap();
        let all_up = vec![true; writer.backends.len()];
        writer.live = Some(writer.slots_for(&all_up));
        writer
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    const THREE: &str = "{ addr = \"10.0.0.11:80\", weight = 3 }, \"10.0.0.12:80\", \"10.0.0.13:80\"";

    #[test]
    fn all_up_is_the_map_apply_installs() {
        let plain = "\"10.0.0.11:80\", \"10.0.0.12:80\", \"10.0.0.13:80\"";
        for (balance, backends) in [
            ("round-robin", plain),
            ("random", plain),
            ("weighted", THREE),
            ("source-hash", THREE),
            ("maglev", THREE),
        ] {
            let farm = farm(balance, backends);
            let planned = &plan::ruleset(&farm, &plan::LiveMaps::new()).dispatches[0];
            let planned: Vec<SocketAddrV4> = (0..planned.slots.len()).map(|s| planned.slot_addr(s)).collect();
            let mut writer = MapWriter::unread(Host::local(), &farm.services[0]).unwrap();
            assert_eq!(writer.slots_for(&[true; 3]), planned, "{balance}");
            assert_eq!(writer.slot_count, planned.len(), "{balance}");
            writer.live = Some(planned);
            assert_eq!(writer.script(&[true; 3]), "", "{balance}: nothing to write");
            assert_eq!(writer.map_name(), "backends_web");
        }
    }

    #[test]
    fn round_robin_with_one_down_sends_every_slot_to_the_other() {
        let mut writer = applied(&service("round-robin", "\"10.0.0.11:80\", \"10.0.0.12:80\""));
        assert_eq!(
            writer.script(&[true, false]),
            "flush map inet gatehouse backends_web\n\
             add element inet gatehouse backends_web { 0 : 10.0.0.11 . 80, 1 : 10.0.0.11 . 80 }\n"
        );
        // Written: the same state again writes nothing; back up writes the plan's map.
        writer.live = Some(writer.slots_for(&[true, false]));
        assert_eq!(writer.script(&[true, false]), "");
        assert_eq!(
            writer.script(&[true, true]),
            "flush map inet gatehouse backends_web\n\
             add element inet gatehouse backends_web { 0 : 10.0.0.11 . 80, 1 : 10.0.0.12 . 80 }\n"
        );
    }

    #[test]
    fn weighted_with_one_down_keeps_the_survivors_shares() {
        let writer = applied(&service(
            "weighted",
            "{ addr = \"10.0.0.11:80\", weight = 2 }, \"10.0.0.12:80\", \"10.0.0.13:80\"",
        ));
        // All up, 12 slots: .11 .12 .13 .11 repeated. Without .12, its three
        // slots (1, 5, 9) go to .11 and .13 two to one, as their weights say,
        // and no other slot moves.
        assert_eq!(
            writer.script(&[true, false, true]),
            "flush map inet gatehouse backends_web\n\
             add element inet gatehouse backends_web { 0 : 10.0.0.11 . 80, 1 : 10.0.0.11 . 80, \
             2 : 10.0.0.13 . 80, 3 : 10.0.0.11 . 80, 4 : 10.0.0.11 . 80, 5 : 10.0.0.13 . 80, \
             6 : 10.0.0.13 . 80, 7 : 10.0.0.11 . 80,\n\
             \t8 : 10.0.0.11 . 80, 9 : 10.0.0.11 . 80, 10 : 10.0.0.13 . 80, 11 : 10.0.0.11 . 80 }\n"
        );
    }

    #[test]
    fn all_down_fails_open_to_every_backend() {
        let mut writer = applied(&service("round-robin", "\"10.0.0.11:80\", \"10.0.0.12:80\""));
        writer.live = Some(writer.slots_for(&[true, false]));
        assert_eq!(
            writer.script(&[false, false]),
            "flush map inet gatehouse backends_web\n\
             add element inet gatehouse backends_web { 0 : 10.0.0.11 . 80, 1 : 10.0.0.12 . 80 }\n"
        );
    }

    /// `delete element ... { slots }` and `add element ... { slot : addr }`.
    fn parse_delta(script: &str) -> (Vec<usize>, Vec<(usize, SocketAddrV4)>) {
        let body = |prefix: &str| -> String {
            let start = script
                .find(prefix)
                .unwrap_or_else(|| panic!("no {prefix} in script"))
                + prefix.len();
            let end = start + script[start..].find('}').unwrap();
            script[start..end].replace(['\n', '\t'], " ")
        };
        let deleted = body("delete element inet gatehouse backends_web {")
            .split(',')
            .map(|s| s.trim().parse().unwrap())
            .collect();
        let added = body("add element inet gatehouse backends_web {")
            .split(',')
            .map(|e| {
                let (slot, value) = e.split_once(" : ").unwrap();
                let (ip, port) = value.split_once(" . ").unwrap();
                (
                    slot.trim().parse().unwrap(),
                    addr(&format!("{}:{}", ip.trim(), port.trim())),
                )
            })
            .collect();
        (deleted, added)
    }

    #[test]
    fn maglev_with_one_down_moves_only_that_backends_slots() {
        let mut writer = applied(&service(
            "maglev",
            "\"10.0.0.11:80\", \"10.0.0.12:80\", \"10.0.0.13:80\"",
        ));
        let before = writer.live.clone().unwrap();
        let script = writer.script(&[true, false, true]);
        assert!(
            script.starts_with("delete element inet gatehouse backends_web { "),
            "{}",
            &script[..80]
        );
        let (deleted, added) = parse_delta(&script);
        let web2: Vec<usize> = (0..before.len())
            .filter(|&s| before[s] == addr("10.0.0.12:80"))
            .collect();
        assert_eq!(deleted, web2, "exactly web2's slots are rewritten");
        assert_eq!(added.iter().map(|a| a.0).collect::<Vec<_>>(), web2);
        let to_web1 = added.iter().filter(|a| a.1 == addr("10.0.0.11:80")).count();
        let to_web3 = added.iter().filter(|a| a.1 == addr("10.0.0.13:80")).count();
        assert_eq!(to_web1 + to_web3, web2.len(), "none stays with web2");
        assert!(
            to_web1.abs_diff(to_web3) <= 1,
            "shared evenly: {to_web1} and {to_web3}"
        );

        // Written; web2 back: it takes a third of the table again, and only
        // slots it takes change.
        writer.live = Some(writer.slots_for(&[true, false, true]));
        let (deleted, added) = parse_delta(&writer.script(&[true, true, true]));
        assert_eq!(deleted.len(), added.len());
        assert!(added.iter().all(|a| a.1 == addr("10.0.0.12:80")));
        assert!(
            deleted.len().abs_diff(crate::maglev::TABLE_SIZE / 3) <= 1,
            "{}",
            deleted.len()
        );
    }

    #[test]
    fn maglev_all_down_fails_open_and_unread_maps_are_written_whole() {
        let mut writer = applied(&service("maglev", "\"10.0.0.11:80\", \"10.0.0.12:80\""));
        writer.live = Some(writer.slots_for(&[true, false]));
        let (deleted, added) = parse_delta(&writer.script(&[false, false]));
        assert!(deleted.len().abs_diff(crate::maglev::TABLE_SIZE / 2) <= 1);
        assert!(added.iter().all(|a| a.1 == addr("10.0.0.12:80")));

        writer.live = None;
        let script = writer.script(&[true, false]);
        assert!(script.starts_with("flush map inet gatehouse backends_web\nadd element "));
        assert_eq!(
            script.matches(" : 10.0.0.11 . 80").count(),
            crate::maglev::TABLE_SIZE
        );
    }

    #[test]
    fn only_nat_services_have_maps() {
        let text =
            "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"http\"\nbackends = [\"127.0.0.1:1\"]\n";
        let farm = Farm::parse("farm.toml", text).unwrap_or_else(|d| panic!("{}", d.render(false)));
        let error = MapWriter::new(Host::local(), &farm.services[0]).unwrap_err();
        assert!(
            error.to_string().starts_with("service app is not a nat service"),
            "{error}"
        );
    }

    /// Runs nft batches one after the other in a network namespace of its
    /// own (needs root, like the golden tests); returns the listing of our table.
    fn in_scratch_namespace(name: &str, batches: &[String]) -> String {
        let dir = std::env::temp_dir().join(format!("gatehouse-update-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut script = String::new();
        for (i, batch) in batches.iter().enumerate() {
            std::fs::write(dir.join(format!("{i}.nft")), batch).unwrap();
            let _ = write!(script, "nft -f {i}.nft && ");
        }
        script.push_str("nft list table inet gatehouse");
        let out = std::process::Command::new("unshare")
            .args(["--net", "--", "sh", "-c", &script])
            .current_dir(&dir)
            .output()
            .expect("running unshare");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn nft_takes_the_scripts_and_the_map_ends_as_planned() {
        for (balance, backends) in [
            ("round-robin", "\"10.0.0.11:80\", \"10.0.0.12:80\""),
            ("maglev", THREE),
        ] {
            let farm = farm(balance, backends);
            let definition = crate::nft::table(&plan::ruleset(&farm, &plan::LiveMaps::new()));
            let mut writer = applied(&farm.services[0]);
            let mut batches = vec![definition];
            for up in [[true, false, true], [false, false, true], [false, false, false]] {
                let up = &up[3 - writer.backends.len()..];
                batches.push(writer.script(up));
                writer.live = Some(writer.slots_for(up));
            }
            let listing = in_scratch_namespace(balance, &batches);
            let live = live::maps_from_listing(&listing).remove("backends_web");
            assert_eq!(live.as_ref(), writer.live.as_ref(), "{balance}");
        }
    }
}
