//! The `Range` header as Go's `http.ServeContent` reads it, which is what rest-server answers
//! with: one range gives 206, several a multipart/byteranges 206, an unsatisfiable or malformed
//! one 416, and ranges that add up to more than the object are ignored (the whole object, 200).

/// A byte range: start and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub length: u64,
}

/// What to send for a GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Whole,
    Ranges(Vec<ByteRange>),
    Unsatisfiable,
}

/// Reads a `Range` header against an object of `size` bytes.
pub fn plan(header: Option<&str>, size: u64) -> Plan {
    let Some(header) = header else { return Plan::Whole };
    if header.is_empty() {
        return Plan::Whole;
    }
    let Some(specs) = header.strip_prefix("bytes=") else {
        return Plan::Unsatisfiable;
    };
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for spec in specs.split(',') {
        let spec = spec.trim_matches([' ', '\t']);
        if spec.is_empty() {
            continue;
        }
        let Some((start, end)) = spec.split_once('-') else {
            return Plan::Unsatisfiable;
        };
        let (start, end) = (start.trim_matches([' ', '\t']), end.trim_matches([' ', '\t']));
        if start.is_empty() {
            // A suffix: the last N bytes.
            if end.is_empty() || end.starts_with('-') {
                return Plan::Unsatisfiable;
            }
            let Ok(mut n) = end.parse::<u64>() else {
                return Plan::Unsatisfiable;
            };
            if n == 0 {
                // Go: a zero-length suffix never overlaps.
                no_overlap = true;
                continue;
            }
            n = n.min(size);
            ranges.push(ByteRange {
                start: size - n,
                length: n,
            });
            continue;
        }
        let Ok(first) = start.parse::<u64>() else {
            return Plan::Unsatisfiable;
        };
        if start.starts_with(['+', '-']) {
            return Plan::Unsatisfiable;
        }
        if first >= size {
            no_overlap = true;
            continue;
        }
        let length = if end.is_empty() {
            size - first
        } else {
            let Ok(last) = end.parse::<u64>() else {
                return Plan::Unsatisfiable;
            };
            if end.starts_with(['+', '-']) || first > last {
                return Plan::Unsatisfiable;
            }
            last.min(size - 1) - first + 1
        };
        ranges.push(ByteRange { start: first, length });
    }
    if ranges.is_empty() {
        return if no_overlap {
            Plan::Unsatisfiable
        } else {
            Plan::Whole
        };
    }
    let sum: u64 = ranges.iter().map(|r| r.length).sum();
    if sum > size {
        Plan::Whole
    } else {
        Plan::Ranges(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, length: u64) -> ByteRange {
        ByteRange { start, length }
    }

    #[test]
    fn ranges_as_go_reads_them() {
        assert_eq!(plan(None, 10), Plan::Whole);
        assert_eq!(plan(Some("bytes=0-3"), 10), Plan::Ranges(vec![r(0, 4)]));
        assert_eq!(plan(Some("bytes=5-"), 10), Plan::Ranges(vec![r(5, 5)]));
        assert_eq!(plan(Some("bytes=-3"), 10), Plan::Ranges(vec![r(7, 3)]));
        assert_eq!(plan(Some("bytes=-30"), 10), Plan::Ranges(vec![r(0, 10)]));
        assert_eq!(plan(Some("bytes=8-100"), 10), Plan::Ranges(vec![r(8, 2)]));
        assert_eq!(
            plan(Some("bytes=0-1, 4-5"), 10),
            Plan::Ranges(vec![r(0, 2), r(4, 2)])
        );
        assert_eq!(plan(Some("bytes=0-9,0-9"), 10), Plan::Whole);
        assert_eq!(plan(Some("bytes=10-"), 10), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=5-2"), 10), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=x-2"), 10), Plan::Unsatisfiable);
        assert_eq!(plan(Some("items=0-2"), 10), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=0-0"), 0), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=20-30,0-1"), 10), Plan::Ranges(vec![r(0, 2)]));
    }
}
