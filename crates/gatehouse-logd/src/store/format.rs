//! The on-disk formats, shared by the writer (`store`) and the readers (`query`).
//!
//! Segment file `SEQ0.seg`: `SEG_MAGIC` (8 bytes, version included), then blocks. A block is a
//! fixed 56-byte header, a trigram filter, then its zstd payload:
//!
//! ```text
//! magic u32 | compressed len u32 | uncompressed len u32 | count u32 | first seq u64
//! | min received_us i64 | max received_us i64 | crc32 of filter and payload u32 | filter len u32
//! | reserved u32 | crc32 of the 52 bytes before u32
//! ```
//!
//! The filter is a bitmap (one hash) of every 3-byte sequence of the text: a search for a literal
//! skips, without decompressing it, a block missing one of the literal's trigrams.
//!
//! The uncompressed payload is columnar: `count` × received_us (i64 LE), `count` × flags (u8),
//! `count` × length (u32 LE), then the messages joined with `\n` (so a regex runs over all of them
//! at once).
//!
//! Index `SEQ0.idx` (written when a segment is sealed): `IDX_MAGIC`, segment length u64, block count
//! u32, then per block its offset u64 and its 48-byte header, then a crc32 of everything before.
//!
//! WAL `wal`: `WAL_MAGIC`, base seq u64 (the next seq when it was last emptied), then records:
//! `len u32 | crc32 u32 | seq u64 | received_us i64 | flags u8 | message`, the crc over everything
//! after itself.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::{Entry, Flags};

pub(crate) const SEG_MAGIC: [u8; 8] = *b"GHSEG\0\0\x01";
pub(crate) const SEG_HEADER_LEN: u64 = 8;
pub(crate) const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"GHBK");
pub(crate) const BLOCK_HEADER_LEN: usize = 56;
pub(crate) const IDX_MAGIC: [u8; 8] = *b"GHIDX\0\0\x01";
pub(crate) const WAL_MAGIC: [u8; 8] = *b"GHWAL\0\0\x01";
pub(crate) const WAL_HEADER_LEN: usize = 16;
pub(crate) const WAL_RECORD_HEADER: usize = 25;
/// Bytes per record in the columns before the text.
pub(crate) const META_BYTES: usize = 13;
/// No block or WAL record is larger than this; a larger length is corruption.
pub(crate) const MAX_LEN: u32 = 1 << 30;
/// The largest filter, in bytes.
pub(crate) const MAX_FILTER: u32 = 1 << 16;

/// The zstd level of blocks: level 1 compresses log text about as well as 3 at twice the speed.
pub(crate) const ZSTD_LEVEL: i32 = 1;

pub(crate) fn seg_name(seq0: u64) -> String {
    format!("{seq0:020}.seg")
}

pub(crate) fn idx_name(seq0: u64) -> String {
    format!("{seq0:020}.idx")
}

/// The first seq of a segment file name `SEQ0.seg`, or None for any other name.
pub(crate) fn parse_seg_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockHeader {
    pub clen: u32,
    pub ulen: u32,
    pub count: u32,
    pub first_seq: u64,
    pub min_us: i64,
    pub max_us: i64,
    pub crc: u32,
    pub flen: u32,
}

impl BlockHeader {
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.count as u64
    }

    pub fn encode(&self) -> [u8; BLOCK_HEADER_LEN] {
        let mut b = [0u8; BLOCK_HEADER_LEN];
        b[0..4].copy_from_slice(&BLOCK_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.clen.to_le_bytes());
        b[8..12].copy_from_slice(&self.ulen.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.min_us.to_le_bytes());
        b[32..40].copy_from_slice(&self.max_us.to_le_bytes());
        b[40..44].copy_from_slice(&self.crc.to_le_bytes());
        b[44..48].copy_from_slice(&self.flen.to_le_bytes());
        let hcrc = crc32fast::hash(&b[0..52]);
        b[52..56].copy_from_slice(&hcrc.to_le_bytes());
        b
    }

    /// None when the magic or the header crc is wrong, or the lengths are absurd.
    pub fn decode(b: &[u8]) -> Option<BlockHeader> {
        if b.len() < BLOCK_HEADER_LEN
            || u32_at(b, 0) != BLOCK_MAGIC
            || u32_at(b, 52) != crc32fast::hash(&b[0..52])
        {
            return None;
        }
        let h = BlockHeader {
            clen: u32_at(b, 4),
            ulen: u32_at(b, 8),
            count: u32_at(b, 12),
            first_seq: u64_at(b, 16),
            min_us: u64_at(b, 24) as i64,
            max_us: u64_at(b, 32) as i64,
            crc: u32_at(b, 40),
            flen: u32_at(b, 44),
        };
        if h.clen > MAX_LEN
            || h.ulen > MAX_LEN
            || h.flen > MAX_FILTER
            || h.count == 0
            || (h.count as u64) * (META_BYTES as u64) > h.ulen as u64
        {
            return None;
        }
        Some(h)
    }
}

/// A block and where it is in its segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockRef {
    pub offset: u64,
    pub header: BlockHeader,
}

impl BlockRef {
    /// Where the filter starts; the payload follows it.
    pub fn body(&self) -> u64 {
        self.offset + BLOCK_HEADER_LEN as u64
    }

    pub fn body_len(&self) -> usize {
        self.header.flen as usize + self.header.clen as usize
    }

    pub fn end(&self) -> u64 {
        self.body() + self.body_len() as u64
    }
}

/// The filter size for a text: about one bit per 8 bytes, a power of two.
fn filter_bits(text_len: usize) -> usize {
    (text_len / 8)
        .next_power_of_two()
        .clamp(1024, MAX_FILTER as usize * 8)
}

#[inline]
fn trigram_bit(b0: u8, b1: u8, b2: u8, shift: u32) -> usize {
    let v = u32::from_le_bytes([b0, b1, b2, 0]);
    (v.wrapping_mul(0x9E37_79B1) >> shift) as usize
}

/// Set the bit of every trigram of `text` in a filter sized for it, appended to `out`.
pub(crate) fn build_filter(text: &[u8], out: &mut Vec<u8>) {
    const CHUNK: usize = 2048;
    let bits = filter_bits(text.len());
    let shift = 32 - bits.trailing_zeros();
    let start = out.len();
    out.resize(start + bits / 8, 0);
    let filter = &mut out[start..];
    let mask = filter.len() - 1;
    let positions = text.len().saturating_sub(2);
    // Hash a chunk of positions in a loop the compiler vectorizes, then set the bits.
    let mut idx = [0u32; CHUNK];
    let mut at = 0;
    while at < positions {
        let n = CHUNK.min(positions - at);
        let (a, b, c) = (
            &text[at..at + n],
            &text[at + 1..at + n + 1],
            &text[at + 2..at + n + 2],
        );
        for (i, slot) in idx[..n].iter_mut().enumerate() {
            let v = a[i] as u32 | (b[i] as u32) << 8 | (c[i] as u32) << 16;
            *slot = v.wrapping_mul(0x9E37_79B1) >> shift;
        }
        for &bit in &idx[..n] {
            filter[(bit as usize >> 3) & mask] |= 1 << (bit & 7);
        }
        at += n;
    }
}

/// False when the text the filter was built from cannot contain `literal` (at least 3 bytes).
pub(crate) fn filter_may_contain(filter: &[u8], literal: &[u8]) -> bool {
    let bits = filter.len() * 8;
    if literal.len() < 3 || !bits.is_power_of_two() || bits < 8 {
        return true;
    }
    let shift = 32 - bits.trailing_zeros();
    literal.windows(3).all(|w| {
        let bit = trigram_bit(w[0], w[1], w[2], shift);
        filter[bit >> 3] & (1 << (bit & 7)) != 0
    })
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The records of a block being filled, already in columns.
#[derive(Debug, Default)]
pub(crate) struct Columns {
    pub times: Vec<i64>,
    pub flags: Vec<u8>,
    pub lens: Vec<u32>,
    /// The messages joined with `\n`.
    pub text: Vec<u8>,
    pub first_seq: u64,
    pub min_us: i64,
    pub max_us: i64,
}

impl Columns {
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The uncompressed payload size.
    pub fn raw_len(&self) -> usize {
        self.len() * META_BYTES + self.text.len()
    }

    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.len() as u64
    }

    pub fn push(&mut self, seq: u64, received_us: i64, flags: Flags, message: &[u8]) {
        if self.is_empty() {
            self.first_seq = seq;
            self.min_us = received_us;
            self.max_us = received_us;
        } else {
            debug_assert_eq!(seq, self.end_seq());
            self.min_us = self.min_us.min(received_us);
            self.max_us = self.max_us.max(received_us);
            self.text.push(b'\n');
        }
        self.times.push(received_us);
        self.flags.push(flags.0);
        self.lens.push(message.len() as u32);
        self.text.extend_from_slice(message);
    }

    pub fn clear(&mut self) {
        self.times.clear();
        self.flags.clear();
        self.lens.clear();
        self.text.clear();
    }

    /// The uncompressed payload, into `out` (cleared first).
    pub fn encode_raw(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(self.raw_len());
        for t in &self.times {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out.extend_from_slice(&self.flags);
        for l in &self.lens {
            out.extend_from_slice(&l.to_le_bytes());
        }
        out.extend_from_slice(&self.text);
    }

    /// Compress into `out` (header then payload, ready to be written at the end of a segment).
    pub fn encode_block(
        &self,
        compressor: &mut zstd::bulk::Compressor<'static>,
        raw: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> io::Result<BlockHeader> {
        self.encode_raw(raw);
        let bound = zstd::zstd_safe::compress_bound(raw.len());
        let mut payload = std::mem::take(out);
        payload.clear();
        payload.reserve(bound);
        let res = compressor.compress_to_buffer(&raw[..], &mut payload);
        let clen = match res {
            Ok(n) => n,
            Err(e) => {
                *out = payload;
                return Err(e);
            }
        };
        let mut block = std::mem::take(raw);
        block.clear();
        block.reserve(BLOCK_HEADER_LEN + filter_bits(self.text.len()) / 8 + clen);
        block.resize(BLOCK_HEADER_LEN, 0);
        build_filter(&self.text, &mut block);
        let flen = block.len() - BLOCK_HEADER_LEN;
        block.extend_from_slice(&payload[..clen]);
        let header = BlockHeader {
            clen: clen as u32,
            ulen: self.raw_len() as u32,
            count: self.len() as u32,
            first_seq: self.first_seq,
            min_us: self.min_us,
            max_us: self.max_us,
            crc: crc32fast::hash(&block[BLOCK_HEADER_LEN..]),
            flen: flen as u32,
        };
        block[..BLOCK_HEADER_LEN].copy_from_slice(&header.encode());
        *raw = payload;
        *out = block;
        Ok(header)
    }
}

/// A decoded block: the columns as slices of the uncompressed payload.
pub(crate) struct BlockView<'a> {
    pub count: usize,
    times: &'a [u8],
    flags: &'a [u8],
    lens: &'a [u8],
    pub text: &'a [u8],
}

impl<'a> BlockView<'a> {
    /// None when the payload does not match the header's count (corruption).
    pub fn parse(raw: &'a [u8], count: usize) -> Option<BlockView<'a>> {
        let meta = count.checked_mul(META_BYTES)?;
        if raw.len() < meta || count == 0 {
            return None;
        }
        let (times, rest) = raw.split_at(count * 8);
        let (flags, rest) = rest.split_at(count);
        let (lens, text) = rest.split_at(count * 4);
        let view = BlockView {
            count,
            times,
            flags,
            lens,
            text,
        };
        let total: u64 = (0..count).map(|i| view.len(i) as u64).sum::<u64>() + count as u64 - 1;
        if total != text.len() as u64 {
            return None;
        }
        Some(view)
    }

    pub fn time(&self, i: usize) -> i64 {
        u64_at(self.times, i * 8) as i64
    }

    pub fn flags(&self, i: usize) -> Flags {
        Flags(self.flags[i])
    }

    pub fn len(&self, i: usize) -> usize {
        u32_at(self.lens, i * 4) as usize
    }

    /// The start of every record in `text`, into `starts` (cleared first); one more entry at the
    /// end, `text.len() + 1`, so record i is `starts[i]..starts[i + 1] - 1`.
    pub fn starts(&self, starts: &mut Vec<usize>) {
        starts.clear();
        starts.reserve(self.count + 1);
        let mut at = 0;
        for i in 0..self.count {
            starts.push(at);
            at += self.len(i) + 1;
        }
        starts.push(at);
    }
}

/// Decompress a block's body (filter then payload, the header already checked) into `raw`,
/// checking its crc.
pub(crate) fn decompress_block(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    header: &BlockHeader,
    body: &[u8],
    raw: &mut Vec<u8>,
) -> Option<()> {
    if body.len() != header.flen as usize + header.clen as usize || crc32fast::hash(body) != header.crc {
        return None;
    }
    let payload = &body[header.flen as usize..];
    raw.clear();
    raw.reserve(header.ulen as usize);
    let n = decompressor.decompress_to_buffer(payload, raw).ok()?;
    (n == header.ulen as usize).then_some(())
}

/// How a walk over block headers ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// At the end of the file.
    Clean,
    /// At `offset`, a block that is short or fails a check: nothing after it is read.
    Torn { offset: u64, reason: &'static str },
}

/// Walk the block headers of a segment from `offset` (a block boundary) to `len`, seeking from
/// header to header; with `verify`, also read each payload and check its crc.
pub(crate) fn scan_blocks(
    file: &File,
    mut offset: u64,
    len: u64,
    verify: bool,
    out: &mut Vec<BlockRef>,
) -> io::Result<ScanEnd> {
    let mut hbuf = [0u8; BLOCK_HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        if offset == len {
            return Ok(ScanEnd::Clean);
        }
        if offset + BLOCK_HEADER_LEN as u64 > len {
            return Ok(ScanEnd::Torn {
                offset,
                reason: "short block header",
            });
        }
        if let Err(e) = file.read_exact_at(&mut hbuf, offset) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Ok(ScanEnd::Torn {
                    offset,
                    reason: "short block header",
                });
            }
            return Err(e);
        }
        let Some(header) = BlockHeader::decode(&hbuf) else {
            return Ok(ScanEnd::Torn {
                offset,
                reason: "bad block header",
            });
        };
        let block = BlockRef { offset, header };
        if block.end() > len {
            return Ok(ScanEnd::Torn {
                offset,
                reason: "short block payload",
            });
        }
        if verify {
            payload.resize(block.body_len(), 0);
            if let Err(e) = file.read_exact_at(&mut payload, block.body()) {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    return Ok(ScanEnd::Torn {
                        offset,
                        reason: "short block payload",
                    });
                }
                return Err(e);
            }
            if crc32fast::hash(&payload) != header.crc {
                return Ok(ScanEnd::Torn {
                    offset,
                    reason: "bad block payload crc",
                });
            }
        }
        out.push(block);
        offset = block.end();
    }
}

/// The sidecar index of a sealed segment.
pub(crate) fn encode_index(seg_len: u64, blocks: &[BlockRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + blocks.len() * (8 + BLOCK_HEADER_LEN) + 4);
    out.extend_from_slice(&IDX_MAGIC);
    out.extend_from_slice(&seg_len.to_le_bytes());
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for b in blocks {
        out.extend_from_slice(&b.offset.to_le_bytes());
        out.extend_from_slice(&b.header.encode());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The blocks of an index and the segment length it was written for; None when it is corrupt.
pub(crate) fn decode_index(buf: &[u8]) -> Option<(u64, Vec<BlockRef>)> {
    if buf.len() < 28 || buf[0..8] != IDX_MAGIC {
        return None;
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body) != u32_at(crc, 0) {
        return None;
    }
    let seg_len = u64_at(body, 8);
    let n = u32_at(body, 16) as usize;
    if body.len() != 24 + n * (8 + BLOCK_HEADER_LEN) {
        return None;
    }
    let mut blocks = Vec::with_capacity(n);
    let mut at = 24;
    for _ in 0..n {
        let offset = u64_at(body, at);
        let header = BlockHeader::decode(&body[at + 8..at + 8 + BLOCK_HEADER_LEN])?;
        blocks.push(BlockRef { offset, header });
        at += 8 + BLOCK_HEADER_LEN;
    }
    Some((seg_len, blocks))
}

pub(crate) fn wal_header(base_seq: u64) -> [u8; WAL_HEADER_LEN] {
    let mut b = [0u8; WAL_HEADER_LEN];
    b[0..8].copy_from_slice(&WAL_MAGIC);
    b[8..16].copy_from_slice(&base_seq.to_le_bytes());
    b
}

/// Append one WAL record for `entry` to `out`.
#[inline]
pub(crate) fn encode_wal_record(out: &mut Vec<u8>, seq: u64, entry: &Entry<'_>) {
    let start = out.len();
    out.extend_from_slice(&(entry.message.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&entry.received_us.to_le_bytes());
    out.push(entry.flags.0);
    out.extend_from_slice(entry.message);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One WAL record; the message is `buf[start..end]` of the buffer it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalRecord {
    pub seq: u64,
    pub received_us: i64,
    pub flags: Flags,
    pub start: usize,
    pub end: usize,
}

/// What a WAL holds.
#[derive(Debug, Default)]
pub(crate) struct WalContents {
    pub base_seq: u64,
    pub records: Vec<WalRecord>,
    /// The end of the last good record (or of the header).
    pub good_end: usize,
    /// Why decoding stopped before the end of the buffer, if it did.
    pub torn: Option<&'static str>,
}

/// Decode a whole WAL; stops at the first torn or corrupt record.
pub(crate) fn decode_wal(buf: &[u8]) -> WalContents {
    let mut w = WalContents::default();
    if buf.is_empty() {
        return w;
    }
    if buf.len() < WAL_HEADER_LEN || buf[0..8] != WAL_MAGIC {
        w.torn = Some("bad WAL header");
        return w;
    }
    w.base_seq = u64_at(buf, 8);
    let mut at = WAL_HEADER_LEN;
    w.good_end = at;
    while at < buf.len() {
        if buf.len() - at < WAL_RECORD_HEADER {
            w.torn = Some("short WAL record header");
            break;
        }
        let len = u32_at(buf, at);
        if len > MAX_LEN {
            w.torn = Some("bad WAL record length");
            break;
        }
        let end = at + WAL_RECORD_HEADER + len as usize;
        if end > buf.len() {
            w.torn = Some("short WAL record");
            break;
        }
        if crc32fast::hash(&buf[at + 8..end]) != u32_at(buf, at + 4) {
            w.torn = Some("bad WAL record crc");
            break;
        }
        let seq = u64_at(buf, at + 8);
        if let Some(last) = w.records.last()
            && seq <= last.seq
        {
            w.torn = Some("WAL record out of sequence");
            break;
        }
        w.records.push(WalRecord {
            seq,
            received_us: u64_at(buf, at + 16) as i64,
            flags: Flags(buf[at + 24]),
            start: at + WAL_RECORD_HEADER,
            end,
        });
        at = end;
        w.good_end = at;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "gatehouse-format-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn columns(first: u64, n: u64) -> Columns {
        let mut c = Columns::default();
        for i in first..first + n {
            let msg = format!("<13>message number {i}");
            c.push(i, 1000 + i as i64, Flags((i % 8) as u8), msg.as_bytes());
        }
        c
    }

    #[test]
    fn a_block_decodes_to_what_was_encoded() {
        let mut c = columns(5, 100);
        c.push(105, 7, Flags::BINARY, b"");
        c.push(106, 2000, Flags::default(), b"two\nlines");
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        let (mut raw, mut out) = (Vec::new(), Vec::new());
        let header = c.encode_block(&mut compressor, &mut raw, &mut out).unwrap();
        assert_eq!(header.count, 102);
        assert_eq!((header.first_seq, header.end_seq()), (5, 107));
        assert_eq!((header.min_us, header.max_us), (7, 2000));
        let decoded = BlockHeader::decode(&out[..BLOCK_HEADER_LEN]).unwrap();
        assert_eq!(decoded, header);
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let mut back = Vec::new();
        decompress_block(&mut d, &decoded, &out[BLOCK_HEADER_LEN..], &mut back).unwrap();
        let mut expected_raw = Vec::new();
        c.encode_raw(&mut expected_raw);
        assert_eq!(back, expected_raw);
        // The filter has every trigram of the text, and lacks most others.
        let filter = &out[BLOCK_HEADER_LEN..BLOCK_HEADER_LEN + decoded.flen as usize];
        assert!(filter_may_contain(filter, b"message number 42"));
        assert!(filter_may_contain(filter, b"two\nlines"));
        assert!(filter_may_contain(filter, b"<1"));
        assert!(!filter_may_contain(filter, b"xyzzy plugh frobozz"));
        let view = BlockView::parse(&back, 102).unwrap();
        let mut starts = Vec::new();
        view.starts(&mut starts);
        for i in 0..100 {
            let msg = &view.text[starts[i]..starts[i + 1] - 1];
            assert_eq!(msg, format!("<13>message number {}", i + 5).as_bytes());
            assert_eq!(view.time(i), 1005 + i as i64);
            assert_eq!(view.flags(i), Flags(((i + 5) % 8) as u8));
        }
        assert_eq!(&view.text[starts[100]..starts[101] - 1], b"");
        assert_eq!(view.flags(100), Flags::BINARY);
        assert_eq!(&view.text[starts[101]..starts[102] - 1], b"two\nlines");
        // A flipped payload byte fails the crc; a flipped header byte fails the header.
        let mut bad = out.clone();
        let last = bad.len() - 3;
        bad[last] ^= 1;
        assert!(decompress_block(&mut d, &decoded, &bad[BLOCK_HEADER_LEN..], &mut back).is_none());
        bad[20] ^= 1;
        assert!(BlockHeader::decode(&bad[..BLOCK_HEADER_LEN]).is_none());
    }

    #[test]
    fn wal_records_decode_until_the_first_torn_one() {
        let mut buf = wal_header(7).to_vec();
        let entries = [
            Entry {
                received_us: 1,
                flags: Flags::default(),
                message: b"one",
            },
            Entry {
                received_us: 2,
                flags: Flags::TRUNCATED,
                message: b"",
            },
            Entry {
                received_us: 3,
                flags: Flags::BINARY,
                message: b"\xff\x00three",
            },
        ];
        for (i, e) in entries.iter().enumerate() {
            encode_wal_record(&mut buf, 7 + i as u64, e);
        }
        let w = decode_wal(&buf);
        assert_eq!(
            (w.base_seq, w.records.len(), w.good_end, w.torn),
            (7, 3, buf.len(), None)
        );
        assert_eq!(w.records[1].flags, Flags::TRUNCATED);
        assert_eq!(&buf[w.records[2].start..w.records[2].end], b"\xff\x00three");
        assert_eq!(w.records[2].seq, 9);
        // Torn: cut in the middle of the last record.
        let w = decode_wal(&buf[..buf.len() - 2]);
        assert_eq!(w.records.len(), 2);
        assert_eq!(w.torn, Some("short WAL record"));
        // Corrupt: a flipped byte in the second record stops there.
        let mut bad = buf.clone();
        bad[WAL_HEADER_LEN + WAL_RECORD_HEADER + 3 + 10] ^= 0x40;
        let w = decode_wal(&bad);
        assert_eq!(w.records.len(), 1);
        assert_eq!(w.torn, Some("bad WAL record crc"));
        assert_eq!(w.good_end, WAL_HEADER_LEN + WAL_RECORD_HEADER + 3);
        // Garbage after good records.
        let mut garbage = buf.clone();
        garbage.extend_from_slice(b"garbage that is long enough to look like a header");
        let w = decode_wal(&garbage);
        assert_eq!((w.records.len(), w.good_end), (3, buf.len()));
        assert!(w.torn.is_some());
        assert!(decode_wal(b"").records.is_empty());
    }

    #[test]
    fn the_index_is_rebuilt_from_block_headers_and_a_torn_tail_is_found() {
        let dir = temp("index");
        let path = dir.join(seg_name(0));
        let mut file = SEG_MAGIC.to_vec();
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        let (mut raw, mut out) = (Vec::new(), Vec::new());
        let mut expected = Vec::new();
        for b in 0..5u64 {
            let c = columns(b * 10, 10);
            let header = c.encode_block(&mut compressor, &mut raw, &mut out).unwrap();
            expected.push(BlockRef {
                offset: file.len() as u64,
                header,
            });
            file.extend_from_slice(&out);
        }
        std::fs::write(&path, &file).unwrap();
        let f = File::open(&path).unwrap();
        let mut blocks = Vec::new();
        let end = scan_blocks(&f, SEG_HEADER_LEN, file.len() as u64, true, &mut blocks).unwrap();
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(blocks, expected);
        // The index file round-trips.
        let idx = encode_index(file.len() as u64, &blocks);
        assert_eq!(decode_index(&idx), Some((file.len() as u64, expected.clone())));
        let mut bad = idx.clone();
        bad[30] ^= 1;
        assert_eq!(decode_index(&bad), None);
        // Cut in the middle of the fourth block.
        let cut = expected[3].offset + 60;
        blocks.clear();
        let end = scan_blocks(&f, SEG_HEADER_LEN, cut, false, &mut blocks).unwrap();
        assert_eq!(
            end,
            ScanEnd::Torn {
                offset: expected[3].offset,
                reason: "short block payload"
            }
        );
        assert_eq!(blocks, expected[..3]);
        // A corrupt payload is found only when verifying.
        let mut corrupt = file.clone();
        corrupt[expected[2].end() as usize - 5] ^= 1;
        std::fs::write(&path, &corrupt).unwrap();
        let f = File::open(&path).unwrap();
        blocks.clear();
        scan_blocks(&f, SEG_HEADER_LEN, file.len() as u64, false, &mut blocks).unwrap();
        assert_eq!(blocks.len(), 5);
        blocks.clear();
        let end = scan_blocks(&f, SEG_HEADER_LEN, file.len() as u64, true, &mut blocks).unwrap();
        assert_eq!(
            end,
            ScanEnd::Torn {
                offset: expected[2].offset,
                reason: "bad block payload crc"
            }
        );
        assert_eq!(blocks.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_filter_has_every_substring_of_the_text() {
        let mut text = Vec::new();
        let mut x: u64 = 88172645463325252;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push(b"abcdefghij \n\xff"[(x % 13) as usize]);
        }
        for len in [0, 1, 2, 3, 7, 8, 9, 2047, 2048, 2049, 2050, 20_000] {
            let mut filter = vec![7u8];
            build_filter(&text[..len], &mut filter);
            assert_eq!(filter[0], 7);
            let filter = &filter[1..];
            assert!(filter.len() >= 128 && filter.len().is_power_of_two());
            for n in 3..12.min(len + 1) {
                for w in text[..len].windows(n) {
                    assert!(filter_may_contain(filter, w));
                }
            }
        }
        let mut filter = Vec::new();
        build_filter(b"only this text", &mut filter);
        assert!(!filter_may_contain(&filter, b"something else entirely"));
        assert!(filter_may_contain(&filter, b"ab"));
    }

    #[test]
    fn segment_names_sort_and_parse() {
        assert_eq!(seg_name(42), "00000000000000000042.seg");
        assert_eq!(parse_seg_name(&seg_name(42)), Some(42));
        assert_eq!(parse_seg_name("42.seg"), None);
        assert_eq!(parse_seg_name(&idx_name(42)), None);
    }
}
