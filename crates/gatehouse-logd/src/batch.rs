//! What ingest hands the store: the messages of one read from one sender,
//! in one contiguous buffer so a read of a thousand messages costs a few
//! allocations, not a thousand.

/// What is known about a stored message beyond its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// syslog_loose found no syslog header (no `<PRI>`, no timestamp):
    /// the message is kept exactly as received.
    pub const UNPARSED: Flags = Flags(1);
    /// The message was longer than `max_message` and was cut there.
    pub const TRUNCATED: Flags = Flags(2);
    /// The bytes are not UTF-8 (binary input); they are kept as they came.
    pub const BINARY: Flags = Flags(4);

    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names of the flags that are set, for JSON output and tests.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Flags::UNPARSED, "unparsed"),
            (Flags::TRUNCATED, "truncated"),
            (Flags::BINARY, "binary"),
        ]
        .into_iter()
        .filter(|(flag, _)| self.contains(*flag))
        .map(|(_, name)| name)
        .collect()
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

/// One message of a batch, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// When the server received it: microseconds since the Unix epoch. Time
    /// filters and ordering use this, not the header's timestamp, which may
    /// lack a year or a zone, or be wrong.
    pub received_us: i64,
    pub flags: Flags,
    /// The message as received (after framing, possibly truncated), header included.
    pub message: &'a [u8],
}

/// One stored message, as a query returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The sender's name: its `hosts` entry, else its address.
    pub host: std::sync::Arc<str>,
    /// Position in that host's log, from 0, never reused.
    pub seq: u64,
    pub received_us: i64,
    pub flags: Flags,
    pub message: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    received_us: i64,
    flags: Flags,
    end: u32,
}

/// Messages in arrival order, for one host.
#[derive(Default, Debug, Clone)]
pub struct Batch {
    text: Vec<u8>,
    metas: Vec<Meta>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn push(&mut self, received_us: i64, flags: Flags, message: &[u8]) {
        self.text.extend_from_slice(message);
        self.metas.push(Meta {
            received_us,
            flags,
            end: self.text.len() as u32,
        });
    }

    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Total bytes of the messages.
    pub fn bytes(&self) -> usize {
        self.text.len()
    }

    /// Empty it, keeping the allocations for the next read.
    pub fn clear(&mut self) {
        self.text.clear();
        self.metas.clear();
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Entry<'_>> + '_ {
        let mut start = 0usize;
        self.metas.iter().map(move |meta| {
            let end = meta.end as usize;
            let entry = Entry {
                received_us: meta.received_us,
                flags: meta.flags,
                message: &self.text[start..end],
            };
            start = end;
            entry
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_back_what_was_pushed_in_order() {
        let mut batch = Batch::new();
        batch.push(1, Flags::default(), b"<13>one");
        batch.push(2, Flags::UNPARSED | Flags::BINARY, b"\xff\x00two");
        batch.push(3, Flags::TRUNCATED, b"");
        let entries: Vec<Entry> = batch.iter().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].message, b"<13>one");
        assert_eq!(entries[1].message, b"\xff\x00two");
        assert_eq!(entries[1].flags.names(), ["unparsed", "binary"]);
        assert_eq!(entries[2].message, b"");
        assert_eq!(entries[2].received_us, 3);
        assert_eq!(batch.bytes(), 12);
        batch.clear();
        assert!(batch.is_empty());
    }
}
