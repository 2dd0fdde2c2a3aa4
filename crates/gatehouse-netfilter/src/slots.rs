//! Slot tables for round-robin, weighted, random and source-hash balancing.
//!
//! The kernel picks `key mod S` and looks the result up in a map of S slots, so
//! the balancing method is in the rule and the backends are in the map: a
//! backend going down or coming back is a map rewrite, never a rule rewrite.
//! S is fixed by the configured backends, so the rule never changes while the
//! file does not.

/// How many slots a service gets.
///
/// The table must repeat the weighted cycle exactly (so all-up balancing is
/// exact), and for small farms it is also a multiple of every possible count of
/// surviving backends, so that shares stay exact when some are down. Larger
/// farms get at least `LARGE_FARM_SLOTS` slots, where one slot more or less is
/// a rounding error.
pub fn slot_count(weights: &[u32]) -> usize {
    const EXACT_UP_TO: usize = 8;
    const LARGE_FARM_SLOTS: usize = 1024;
    let cycle = cycle_len(weights);
    if weights.len() <= EXACT_UP_TO {
        let survivors = (1..=weights.len()).fold(1, lcm);
        lcm(cycle, survivors)
    } else {
        cycle * LARGE_FARM_SLOTS.div_ceil(cycle)
    }
}

/// Length of one weighted cycle: the slot table repeats it, so its first
/// `cycle_len` slots are the whole pattern.
pub fn cycle_len(weights: &[u32]) -> usize {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w as usize)).max(1);
    weights
        .iter()
        .map(|&w| w as usize / divisor)
        .sum::<usize>()
        .max(1)
}

/// The slot table: `result[i]` is the index of the backend for slot `i`.
///
/// Slots are laid out by smooth weighted round-robin (nginx's algorithm), so a
/// counter walking the slots interleaves backends instead of sending one
/// backend's whole share in a burst. Slots of backends marked down go to the
/// live ones, again by smooth weighted round-robin, and every live backend
/// keeps its own slots: for source hashing, only the dead backend's clients
/// move. When every backend is down the table keeps all of them (fail-open).
pub fn table(weights: &[u32], up: &[bool]) -> Vec<usize> {
    assert_eq!(weights.len(), up.len(), "one up flag per backend");
    let size = slot_count(weights);
    let mut slots = smooth_sequence(weights, size);
    if up.iter().any(|&u| u) && up.iter().any(|&u| !u) {
        let live_weights: Vec<u32> = weights
            .iter()
            .zip(up)
            .map(|(&w, &u)| if u { w } else { 0 })
            .collect();
        let orphans = slots.iter().filter(|&&b| !up[b]).count();
        let mut heirs = smooth_sequence(&live_weights, orphans).into_iter();
        for slot in slots.iter_mut().filter(|b| !up[**b]) {
            *slot = heirs.next().expect("one heir per orphaned slot");
        }
    }
    slots
}

/// `len` picks by smooth weighted round-robin; backend `i` is picked in
/// proportion to `weights[i]` (zero weights are never picked).
fn smooth_sequence(weights: &[u32], len: usize) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            current[i] += i64::from(w);
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best.expect("smooth_sequence needs a positive weight");
        current[best] -= total;
        out.push(best);
    }
    out
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(slots: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &s in slots {
            c[s] += 1;
        }
        c
    }

    #[test]
    fn the_seed_farm_needs_two_slots() {
        assert_eq!(slot_count(&[1, 1]), 2);
        assert_eq!(table(&[1, 1], &[true, true]), vec![0, 1]);
    }

    #[test]
    fn round_robin_interleaves_and_survives_any_failure_exactly() {
        let weights = [1; 5];
        let slots = table(&weights, &[true; 5]);
        assert_eq!(slots.len(), 60);
        assert_eq!(&slots[..10], &[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
        // Any two down: the three survivors share exactly.
        let up = [true, false, true, false, true];
        let c = counts(&table(&weights, &up), 5);
        assert_eq!(c, vec![20, 0, 20, 0, 20]);
    }

    #[test]
    fn weighted_is_smooth_and_exact() {
        let slots = table(&[3, 1], &[true, true]);
        assert_eq!(counts(&slots, 2), vec![slots.len() * 3 / 4, slots.len() / 4]);
        // Smooth: the light backend is not starved for three slots in a row and
        // then given one; 3:1 reads a a b a, not a a a b twice over.
        assert_eq!(&slots[..4], &[0, 0, 1, 0]);
    }

    #[test]
    fn weights_with_a_common_factor_make_the_same_table() {
        assert_eq!(table(&[6, 2], &[true, true]), table(&[3, 1], &[true, true]));
    }

    #[test]
    fn a_dead_backends_slots_go_to_the_living_and_no_other_slot_moves() {
        let weights = [1, 2, 1, 1];
        let all = table(&weights, &[true; 4]);
        let one_down = table(&weights, &[true, false, true, true]);
        for (before, after) in all.iter().zip(&one_down) {
            if *before != 1 {
                assert_eq!(before, after, "a live backend's slot moved");
            } else {
                assert_ne!(*after, 1);
            }
        }
        let c = counts(&one_down, 4);
        assert_eq!(c[1], 0);
        assert_eq!(c[0], c[2]);
        assert_eq!(c[2], c[3]);
    }

    #[test]
    fn all_down_fails_open() {
        let t = table(&[1, 1, 1], &[false; 3]);
        assert_eq!(counts(&t, 3), vec![2, 2, 2]);
    }

    #[test]
    fn large_farms_get_at_least_1024_slots_in_whole_cycles() {
        let weights = vec![1; 64];
        assert_eq!(slot_count(&weights), 1024);
        let weights = vec![1; 1000];
        assert_eq!(slot_count(&weights), 2000);
        let c = counts(&table(&vec![1; 1000], &vec![true; 1000]), 1000);
        assert!(c.iter().all(|&n| n == 2));
    }
}
