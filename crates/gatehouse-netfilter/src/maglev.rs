//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4).
//!
//! Each backend has its own pseudo-random permutation of the table's slots;
//! backends take turns claiming their next preferred free slot until the table
//! is full. Every backend ends up with its exact share (within one slot), and
//! a flow's slot depends only on its hash, so the kernel can look it up with
//! `jhash ip saddr . tcp sport mod 65537`.
//!
//! The paper's procedure, rerun on a smaller set, moves a few flows of
//! surviving backends too. Given the table that is live, [`table`] instead keeps
//! every slot whose backend survives and refills only the freed ones by the same
//! turn-taking: removing one backend moves exactly that backend's flows, adding
//! one moves only the flows it takes over.

/// Table size: a prime (the permutation needs it) well above 100 × the number
/// of backends we expect, as the paper advises.
pub const TABLE_SIZE: usize = 65537;

/// A backend as the table sees it: a stable identity and a weight.
pub struct Member<'a> {
    pub id: &'a str,
    pub weight: u32,
}

/// Build the table. `previous[slot]` is the index (into `members`) of the
/// backend that holds the slot in the live table, if that backend is still a
/// member; pass `None` for a fresh table.
///
/// Turns are taken in order of identity, not of the config file, so reordering
/// the backends list changes nothing.
pub fn table(members: &[Member<'_>], previous: Option<&[Option<usize>]>) -> Vec<usize> {
    assert!(!members.is_empty(), "a Maglev table needs a backend");
    let quotas = quotas(members);
    let mut owner: Vec<Option<usize>> = vec![None; TABLE_SIZE];
    let mut held = vec![0usize; members.len()];
    if let Some(previous) = previous {
        assert_eq!(previous.len(), TABLE_SIZE, "previous table has the wrong size");
        for (slot, &prev) in previous.iter().enumerate() {
            if let Some(b) = prev
                && held[b] < quotas[b]
            {
                owner[slot] = Some(b);
                held[b] += 1;
            }
        }
    }

    let mut turn_order: Vec<usize> = (0..members.len()).collect();
    turn_order.sort_by_key(|&i| members[i].id);
    let permutations: Vec<(usize, usize)> = members.iter().map(|m| permutation(m.id)).collect();
    let mut next = vec![0usize; members.len()];
    let mut free = owner.iter().filter(|o| o.is_none()).count();
    while free > 0 {
        for &b in &turn_order {
            if held[b] == quotas[b] {
                continue;
            }
            let (offset, skip) = permutations[b];
            // The permutation visits every slot (skip and size are coprime), and
            // a backend below its quota means a free slot remains.
            let slot = loop {
                let candidate = (offset + next[b] * skip) % TABLE_SIZE;
                next[b] += 1;
                if owner[candidate].is_none() {
                    break candidate;
                }
            };
            owner[slot] = Some(b);
            held[b] += 1;
            free -= 1;
            if free == 0 {
                break;
            }
        }
    }
    owner.into_iter().map(|o| o.expect("table is full")).collect()
}

/// Each member's exact number of slots: its weighted share of the table, the
/// remainder going to the largest fractions (ties to the lower identity).
fn quotas(members: &[Member<'_>]) -> Vec<usize> {
    let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    let size = TABLE_SIZE as u64;
    let mut quotas: Vec<usize> = members
        .iter()
        .map(|m| (size * u64::from(m.weight) / total) as usize)
        .collect();
    let mut remainder = TABLE_SIZE - quotas.iter().sum::<usize>();
    let mut by_fraction: Vec<usize> = (0..members.len()).collect();
    by_fraction.sort_by_key(|&i| {
        let fraction = size * u64::from(members[i].weight) % total;
        (std::cmp::Reverse(fraction), members[i].id)
    });
    for &i in by_fraction.iter().cycle() {
        if remainder == 0 {
            break;
        }
        quotas[i] += 1;
        remainder -= 1;
    }
    quotas
}

/// (offset, skip) of a backend's permutation, from two hashes of its identity.
fn permutation(id: &str) -> (usize, usize) {
    let h = fnv1a(id.as_bytes());
    let offset = mix(h ^ 0x6f66_6673_6574_0000) % TABLE_SIZE as u64;
    let skip = mix(h ^ 0x0000_736b_6970_0000) % (TABLE_SIZE as u64 - 1) + 1;
    (offset as usize, skip as usize)
}

/// FNV-1a, written out because the table must be the same on every gateway
/// and every build: std's hasher is not stable across Rust versions, and this
/// is eight lines.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 200, 11 + i % 200))
            .collect()
    }

    fn members(ids: &[String]) -> Vec<Member<'_>> {
        ids.iter().map(|id| Member { id, weight: 1 }).collect()
    }

    fn counts(table: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &b in table {
            c[b] += 1;
        }
        c
    }

    /// Map a table over `old` ids to indices of `new` ids (None if gone).
    fn carry(table: &[usize], old: &[String], new: &[String]) -> Vec<Option<usize>> {
        table
            .iter()
            .map(|&b| new.iter().position(|id| *id == old[b]))
            .collect()
    }

    #[test]
    fn every_backend_gets_its_share_within_one_percent() {
        for n in [2, 3, 7, 16, 64, 100] {
            let ids = ids(n);
            let t = table(&members(&ids), None);
            let ideal = TABLE_SIZE as f64 / n as f64;
            for (i, &c) in counts(&t, n).iter().enumerate() {
                let error = (c as f64 - ideal).abs() / ideal;
                assert!(error < 0.01, "n={n}: backend {i} has {c} slots, ideal {ideal:.1}");
            }
        }
    }

    #[test]
    fn weights_set_the_shares() {
        let ids = ids(2);
        let m = vec![
            Member {
                id: &ids[0],
                weight: 3,
            },
            Member {
                id: &ids[1],
                weight: 1,
            },
        ];
        let c = counts(&table(&m, None), 2);
        assert_eq!(c[0] + c[1], TABLE_SIZE);
        assert!((c[0] as f64 / TABLE_SIZE as f64 - 0.75).abs() < 0.0001, "{c:?}");
    }

    #[test]
    fn fresh_tables_are_deterministic_and_ignore_config_order() {
        let ids = ids(5);
        let a = table(&members(&ids), None);
        let mut reversed = ids.clone();
        reversed.reverse();
        let b = table(&members(&reversed), None);
        for slot in 0..TABLE_SIZE {
            assert_eq!(ids[a[slot]], reversed[b[slot]]);
        }
        assert_eq!(a, table(&members(&ids), None));
    }

    #[test]
    fn removing_a_backend_moves_only_its_slots() {
        let old = ids(10);
        let before = table(&members(&old), None);
        let new: Vec<String> = old.iter().filter(|id| *id != &old[3]).cloned().collect();
        let after = table(&members(&new), Some(&carry(&before, &old, &new)));
        let mut moved = 0;
        for slot in 0..TABLE_SIZE {
            let was = &old[before[slot]];
            let now = &new[after[slot]];
            if was != &old[3] {
                assert_eq!(was, now, "slot {slot} of a surviving backend moved");
            } else {
                moved += 1;
            }
        }
        assert_eq!(moved, counts(&before, 10)[3]);
        // and the freed slots are spread evenly over the nine survivors
        let c = counts(&after, 9);
        assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1, "{c:?}");
    }

    #[test]
    fn adding_a_backend_moves_only_what_it_takes() {
        let old = ids(9);
        let before = table(&members(&old), None);
        let new = ids(10);
        let after = table(&members(&new), Some(&carry(&before, &old, &new)));
        let c = counts(&after, 10);
        for slot in 0..TABLE_SIZE {
            let now = &new[after[slot]];
            if now != &new[9] {
                assert_eq!(&old[before[slot]], now);
            }
        }
        assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1, "{c:?}");
    }

    #[test]
    fn the_papers_procedure_alone_would_move_some_survivors() {
        // Why `previous` exists: a fresh table for nine backends disagrees with
        // the ten-backend table on slots the removed backend never held.
        let old = ids(10);
        let before = table(&members(&old), None);
        let new: Vec<String> = old.iter().filter(|id| *id != &old[3]).cloned().collect();
        let fresh = table(&members(&new), None);
        let disturbed = (0..TABLE_SIZE)
            .filter(|&s| old[before[s]] != old[3] && old[before[s]] != new[fresh[s]])
            .count();
        assert!(disturbed > 0);
        // ...but only a little, as the paper says.
        assert!((disturbed as f64) < 0.05 * TABLE_SIZE as f64, "{disturbed}");
    }
}
