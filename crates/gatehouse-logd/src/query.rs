//! Queries over the store: lines oldest first across hosts, reading only the segments and
//! blocks whose time range matches. Readers never modify files, so `gatehouse logs` can read the
//! directory `gatehouse serve` is writing: a block being written at the tail ends the read there,
//! a segment deleted under the reader is skipped, and the WAL is read too, so a line is visible as
//! soon as `append` returns.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use regex::bytes::Regex;

use crate::store::format::{self, BlockRef, BlockView, WalRecord};
use crate::{Flags, Line};

/// What to look for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Empty: every host.
    pub hosts: Vec<String>,
    /// received_us >= since.
    pub since_us: Option<i64>,
    /// received_us < until.
    pub until_us: Option<i64>,
    pub grep: Option<Regex>,
    /// Only the last N matching lines (still given oldest first).
    pub last: Option<usize>,
}

/// Where a follow is: per host, the next seq to read.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    hosts: BTreeMap<String, HostCursor>,
}

impl Cursor {
    /// The next seq to read of a host, None for a host the cursor has not seen.
    pub fn next_seq(&self, host: &str) -> Option<u64> {
        self.hosts.get(host).map(|h| h.next_seq)
    }

    /// Every host of the cursor and its next seq.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.hosts.iter().map(|(k, v)| (k.as_str(), v.next_seq))
    }
}

#[derive(Clone, Debug, Default)]
struct HostCursor {
    next_seq: u64,
    /// The segment (by first seq) and offset where the blocks read so far end.
    hint: Option<(u64, u64)>,
    /// The host's files as they were before the last read: unchanged means nothing is new.
    fingerprint: Option<Fingerprint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    last_seg: Option<(u64, u64, u64)>,
    wal: Option<(u64, u64, Option<SystemTime>)>,
}

/// A host's files, for `gatehouse logs --hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSummary {
    pub host: String,
    pub segments: usize,
    /// All the host's files: segments, indexes, WAL.
    pub disk_bytes: u64,
    pub lines: u64,
    pub first_us: Option<i64>,
    pub last_us: Option<i64>,
}

/// What a search read, for tests and benchmarks.
#[doc(hidden)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchStats {
    /// Segment files opened (to walk their block headers or read blocks).
    pub segments_opened: usize,
    /// Index files read.
    pub indexes_read: usize,
    /// Blocks read and decompressed.
    pub blocks_read: usize,
    /// Compressed bytes read.
    pub bytes_read: u64,
    /// Blocks whose trigram filter showed they cannot match (not decompressed).
    pub blocks_skipped: usize,
    /// Hosts skipped because nothing changed since the cursor.
    pub hosts_unchanged: usize,
}

#[derive(Default)]
struct Counters {
    segments_opened: AtomicUsize,
    indexes_read: AtomicUsize,
    blocks_read: AtomicUsize,
    bytes_read: AtomicU64,
    blocks_skipped: AtomicUsize,
    hosts_unchanged: AtomicUsize,
}

impl Counters {
    fn stats(&self) -> SearchStats {
        SearchStats {
            segments_opened: self.segments_opened.load(Ordering::Relaxed),
            indexes_read: self.indexes_read.load(Ordering::Relaxed),
            blocks_read: self.blocks_read.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            blocks_skipped: self.blocks_skipped.load(Ordering::Relaxed),
            hosts_unchanged: self.hosts_unchanged.load(Ordering::Relaxed),
        }
    }
}

/// Lines matching `query`, oldest first across hosts (within a host in seq order); the cursor
/// returned is just past the newest line of every host of the query, for following.
pub fn search(dir: &Path, query: &Query, visit: impl FnMut(&Line) -> ControlFlow<()>) -> io::Result<Cursor> {
    search_stats(dir, query, None, visit).map(|(cursor, _)| cursor)
}

/// Like [`search`], only lines at or after the cursor (hosts new since: from their start); moves
/// the cursor. Cheap when nothing is new: a stat of each host's files.
pub fn search_after(
    dir: &Path,
    query: &Query,
    cursor: &mut Cursor,
    visit: impl FnMut(&Line) -> ControlFlow<()>,
) -> io::Result<()> {
    let (next, _) = search_stats(dir, query, Some(cursor), visit)?;
    *cursor = next;
    Ok(())
}

fn missing_dir(dir: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("log directory {}: {e}", dir.display()))
}

/// The hosts of the directory, sorted.
/// The hosts a store holds, sorted (the status page's host filter); a
/// cheap directory listing, unlike [`hosts`].
pub fn host_names(dir: &Path) -> io::Result<Vec<String>> {
    list_hosts(dir)
}

fn list_hosts(dir: &Path) -> io::Result<Vec<String>> {
    let mut hosts = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| missing_dir(dir, e))? {
        let entry = entry.map_err(|e| missing_dir(dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
            && let Some(name) = entry.file_name().to_str()
        {
            hosts.push(name.to_string());
        }
    }
    hosts.sort();
    Ok(hosts)
}

/// The first seqs of a host's segments, sorted; empty when the host does not exist.
fn list_segments(host_dir: &Path) -> io::Result<Vec<u64>> {
    let entries = match fs::read_dir(host_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", host_dir.display()))),
    };
    let mut seqs = Vec::new();
    for entry in entries.flatten() {
        if let Some(seq0) = entry.file_name().to_str().and_then(format::parse_seg_name) {
            seqs.push(seq0);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn fingerprint(host_dir: &Path, segs: &[u64]) -> Fingerprint {
    let last_seg = segs.last().and_then(|&seq0| {
        let m = fs::metadata(host_dir.join(format::seg_name(seq0))).ok()?;
        Some((seq0, m.ino(), m.len()))
    });
    let wal = fs::metadata(host_dir.join("wal"))
        .ok()
        .map(|m| (m.ino(), m.len(), m.modified().ok()));
    Fingerprint { last_seg, wal }
}

/// One unit of work: a block, or the WAL's records.
enum Job {
    Block {
        path: Arc<PathBuf>,
        block: BlockRef,
    },
    Wal {
        buf: Arc<Vec<u8>>,
        records: Vec<WalRecord>,
    },
}

/// What is to be read of one host.
struct HostPlan {
    host: Arc<str>,
    jobs: Vec<Job>,
    /// Per job, a time that never decreases along the host's jobs: the order workers take jobs in.
    keys: Vec<i64>,
    min_seq: u64,
    cursor: HostCursor,
}

struct Filter<'a> {
    since: i64,
    until: i64,
    grep: Option<&'a Regex>,
    /// The pattern has `^`, `$`, `\A` or `\z`: match each record alone, not the joined text.
    per_record: bool,
    /// Every match contains one of these: blocks whose filter lacks them all are skipped.
    literals: Option<Vec<Vec<u8>>>,
}

impl Filter<'_> {
    fn new(query: &Query) -> Filter<'_> {
        let per_record = query.grep.as_ref().is_some_and(|re| {
            let s = re.as_str();
            s.contains('^') || s.contains('$') || s.contains("\\A") || s.contains("\\z")
        });
        Filter {
            since: query.since_us.unwrap_or(i64::MIN),
            until: query.until_us.unwrap_or(i64::MAX),
            grep: query.grep.as_ref(),
            per_record,
            literals: query.grep.as_ref().and_then(required_literals),
        }
    }

    fn overlaps(&self, min_us: i64, max_us: i64) -> bool {
        max_us >= self.since && min_us < self.until
    }

    fn in_range(&self, t: i64) -> bool {
        t >= self.since && t < self.until
    }
}

/// The literals one of which every match contains, when the pattern is a plain literal or an
/// alternation of plain literals (each of 3 bytes or more), matched case-sensitively. None when
/// unsure: the pattern as written is checked against its own literals, so flags set outside it
/// (a case-insensitive builder, ignored whitespace) turn the filter off rather than hide matches.
fn required_literals(re: &Regex) -> Option<Vec<Vec<u8>>> {
    let mut branches = Vec::new();
    let mut branch = String::new();
    let mut chars = re.as_str().chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let e = chars.next()?;
                if !e.is_ascii_punctuation() {
                    return None;
                }
                branch.push(e);
            }
            '|' => branches.push(std::mem::take(&mut branch)),
            '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '#' => return None,
            c => branch.push(c),
        }
    }
    branches.push(branch);
    for b in &branches {
        if b.len() < 3 || !re.is_match(b.as_bytes()) {
            return None;
        }
        let flipped: String = b
            .chars()
            .flat_map(|c| {
                let v: Vec<char> = if c.is_lowercase() {
                    c.to_uppercase().collect()
                } else {
                    c.to_lowercase().collect()
                };
                v
            })
            .collect();
        if flipped != *b && re.is_match(flipped.as_bytes()) {
            return None;
        }
    }
    Some(branches.into_iter().map(String::into_bytes).collect())
}

/// Plan one host: read its WAL first, then its segments' indexes (so a block written and the WAL
/// emptied in between is seen in the segment), keeping only blocks that can match.
fn plan_host(
    dir: &Path,
    host: &str,
    prev: Option<&HostCursor>,
    filter: &Filter,
    counters: &Counters,
) -> io::Result<Option<HostPlan>> {
    let host_dir = dir.join(host);
    let segs = list_segments(&host_dir)?;
    let fp = fingerprint(&host_dir, &segs);
    if let Some(prev) = prev
        && prev.fingerprint.as_ref() == Some(&fp)
    {
        counters.hosts_unchanged.fetch_add(1, Ordering::Relaxed);
        return Ok(None);
    }
    let min_seq = prev.map_or(0, |p| p.next_seq);
    let wal_buf = match fs::read(host_dir.join("wal")) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", host_dir.join("wal").display()),
            ));
        }
    };
    let wal = format::decode_wal(&wal_buf);
    let segs = list_segments(&host_dir)?;

    let mut jobs = Vec::new();
    let mut keys = Vec::new();
    let mut key = i64::MIN;
    let mut blocks_end = 0u64;
    let mut hint = None;
    for (k, &seq0) in segs.iter().enumerate() {
        if segs.get(k + 1).is_some_and(|&next| next <= min_seq) {
            continue;
        }
        let path = host_dir.join(format::seg_name(seq0));
        let start = prev
            .and_then(|p| p.hint)
            .filter(|(s, _)| *s == seq0)
            .map(|(_, off)| off);
        let Some((blocks, end)) = segment_blocks(&path, start, counters)? else {
            continue;
        };
        if let Some(last) = blocks.last() {
            blocks_end = blocks_end.max(last.header.end_seq());
        }
        hint = Some((seq0, end));
        let mut file = None;
        let mut bits = Vec::new();
        let mut shared: Option<Arc<PathBuf>> = None;
        for block in blocks {
            let h = &block.header;
            if h.end_seq() <= min_seq || !filter.overlaps(h.min_us, h.max_us) {
                continue;
            }
            if let Some(literals) = &filter.literals
                && h.flen > 0
            {
                // The block's filter first: for a rare word, most blocks stop here.
                let opened = match file.take() {
                    Some(f) => f,
                    None => {
                        let f = match File::open(&path) {
                            Ok(f) => f,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                            Err(e) => {
                                return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
                            }
                        };
                        counters.segments_opened.fetch_add(1, Ordering::Relaxed);
                        f
                    }
                };
                let f = file.insert(opened);
                bits.resize(h.flen as usize, 0);
                match f.read_exact_at(&mut bits, block.body()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
                }
                if !literals.iter().any(|l| format::filter_may_contain(&bits, l)) {
                    counters.blocks_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            key = key.max(h.min_us);
            keys.push(key);
            let path = shared.get_or_insert_with(|| Arc::new(path.clone())).clone();
            jobs.push(Job::Block { path, block });
        }
    }
    let from = min_seq.max(blocks_end);
    let records: Vec<WalRecord> = wal.records.iter().filter(|r| r.seq >= from).copied().collect();
    let mut next_seq = from.max(wal.base_seq);
    if let Some(last) = records.last() {
        next_seq = next_seq.max(last.seq + 1);
    }
    let records: Vec<WalRecord> = records
        .into_iter()
        .filter(|r| filter.in_range(r.received_us))
        .collect();
    if let Some(min) = records.iter().map(|r| r.received_us).min() {
        keys.push(key.max(min));
        jobs.push(Job::Wal {
            buf: Arc::new(wal_buf),
            records,
        });
    }
    Ok(Some(HostPlan {
        host: host.into(),
        jobs,
        keys,
        min_seq,
        cursor: HostCursor {
            next_seq,
            hint,
            fingerprint: Some(fp),
        },
    }))
}

/// The blocks of a segment (from its index when it is sealed, else by walking its block headers
/// from `start`) and where they end; None when the segment is gone.
fn segment_blocks(
    path: &Path,
    start: Option<u64>,
    counters: &Counters,
) -> io::Result<Option<(Vec<BlockRef>, u64)>> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    if let Ok(buf) = fs::read(path.with_extension("idx")) {
        counters.indexes_read.fetch_add(1, Ordering::Relaxed);
        if let Some((seg_len, blocks)) = format::decode_index(&buf)
            && seg_len == len
        {
            let blocks = match start {
                Some(off) => blocks.into_iter().filter(|b| b.offset >= off).collect(),
                None => blocks,
            };
            return Ok(Some((blocks, len)));
        }
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    counters.segments_opened.fetch_add(1, Ordering::Relaxed);
    let start = match start {
        Some(off) if off >= format::SEG_HEADER_LEN && off <= len => off,
        _ => {
            let mut magic = [0u8; 8];
            if file.read_exact_at(&mut magic, 0).is_err() || magic != format::SEG_MAGIC {
                return Ok(Some((Vec::new(), format::SEG_HEADER_LEN)));
            }
            format::SEG_HEADER_LEN
        }
    };
    let mut blocks = Vec::new();
    let scan = |start: u64, blocks: &mut Vec<BlockRef>| {
        format::scan_blocks(&file, start, len, false, blocks)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let mut start = start;
    let end = scan(start, &mut blocks)?;
    if start > format::SEG_HEADER_LEN
        && blocks.is_empty()
        && matches!(
            end,
            format::ScanEnd::Torn {
                reason: "bad block header",
                ..
            }
        )
    {
        // No block where the last read ended: the tail was cut (a recovery) and rewritten.
        start = format::SEG_HEADER_LEN;
        scan(start, &mut blocks)?;
    }
    let end = blocks.last().map_or(start, |b| b.end());
    Ok(Some((blocks, end)))
}

/// What a thread needs to read blocks: reused buffers and the last segment file opened.
struct Reader {
    decompressor: zstd::bulk::Decompressor<'static>,
    compressed: Vec<u8>,
    raw: Vec<u8>,
    starts: Vec<usize>,
    file: Option<(Arc<PathBuf>, File)>,
}

impl Reader {
    fn new() -> io::Result<Reader> {
        Ok(Reader {
            decompressor: zstd::bulk::Decompressor::new()?,
            compressed: Vec::new(),
            raw: Vec::new(),
            starts: Vec::new(),
            file: None,
        })
    }

    /// The matching lines of a job, in seq order. A block that is gone, short or corrupt gives
    /// nothing (it may be being written, or deleted by retention).
    fn run(
        &mut self,
        host: &Arc<str>,
        job: &Job,
        min_seq: u64,
        filter: &Filter,
        counters: &Counters,
    ) -> io::Result<Vec<Line>> {
        let mut out = Vec::new();
        match job {
            Job::Wal { buf, records } => {
                for r in records {
                    let msg = &buf[r.start..r.end];
                    if filter.grep.is_none_or(|re| re.is_match(msg)) {
                        out.push(line(host, r.seq, r.received_us, r.flags, msg));
                    }
                }
            }
            Job::Block { path, block } => {
                let file = match self.file.take() {
                    Some((p, f)) if Arc::ptr_eq(&p, path) => &self.file.insert((p, f)).1,
                    _ => match File::open(&**path) {
                        Ok(f) => {
                            counters.segments_opened.fetch_add(1, Ordering::Relaxed);
                            &self.file.insert((path.clone(), f)).1
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
                    },
                };
                let h = &block.header;
                self.compressed.resize(block.body_len(), 0);
                match file.read_exact_at(&mut self.compressed, block.body()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(out),
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
                }
                counters.blocks_read.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes_read
                    .fetch_add(block.body_len() as u64, Ordering::Relaxed);
                if format::decompress_block(&mut self.decompressor, h, &self.compressed, &mut self.raw)
                    .is_none()
                {
                    return Ok(out);
                }
                let Some(view) = BlockView::parse(&self.raw, h.count as usize) else {
                    return Ok(out);
                };
                view.starts(&mut self.starts);
                match_block(host, h.first_seq, min_seq, &view, &self.starts, filter, &mut out);
            }
        }
        Ok(out)
    }
}

fn line(host: &Arc<str>, seq: u64, received_us: i64, flags: Flags, message: &[u8]) -> Line {
    Line {
        host: host.clone(),
        seq,
        received_us,
        flags,
        message: message.to_vec(),
    }
}

/// The records of a decoded block that pass the filter, into `out`.
fn match_block(
    host: &Arc<str>,
    first_seq: u64,
    min_seq: u64,
    view: &BlockView,
    starts: &[usize],
    filter: &Filter,
    out: &mut Vec<Line>,
) {
    let text = view.text;
    let record = |i: usize| &text[starts[i]..starts[i + 1] - 1];
    let wanted = |i: usize| first_seq + i as u64 >= min_seq && filter.in_range(view.time(i));
    let emit = |i: usize, out: &mut Vec<Line>| {
        out.push(line(
            host,
            first_seq + i as u64,
            view.time(i),
            view.flags(i),
            record(i),
        ));
    };
    match filter.grep {
        None => (0..view.count).filter(|&i| wanted(i)).for_each(|i| emit(i, out)),
        Some(re) if filter.per_record => (0..view.count)
            .filter(|&i| wanted(i) && re.is_match(record(i)))
            .for_each(|i| emit(i, out)),
        Some(re) => {
            // The regex runs over the whole text; a match is mapped to its record, and one that
            // runs over a separator is checked again against its record alone.
            let mut pos = 0;
            while pos <= text.len() {
                let Some(m) = re.find_at(text, pos) else { break };
                let i = starts.partition_point(|&s| s <= m.start()) - 1;
                let end = starts[i + 1] - 1;
                if wanted(i) && (m.end() <= end || re.is_match(record(i))) {
                    emit(i, out);
                }
                pos = starts[i + 1];
            }
        }
    }
}

/// Search with the counts of what was read; with a cursor, only what is after it.
#[doc(hidden)]
pub fn search_stats(
    dir: &Path,
    query: &Query,
    cursor: Option<&Cursor>,
    mut visit: impl FnMut(&Line) -> ControlFlow<()>,
) -> io::Result<(Cursor, SearchStats)> {
    fs::metadata(dir).map_err(|e| missing_dir(dir, e))?;
    let counters = Counters::default();
    let filter = Filter::new(query);
    let names = if query.hosts.is_empty() {
        list_hosts(dir)?
    } else {
        let mut names = query.hosts.clone();
        names.sort();
        names.dedup();
        names
    };
    let mut next = Cursor::default();
    let mut plans = Vec::new();
    for name in &names {
        let prev = cursor.and_then(|c| c.hosts.get(name));
        match plan_host(dir, name, prev, &filter, &counters)? {
            Some(plan) => {
                next.hosts.insert(name.clone(), plan.cursor.clone());
                plans.push(plan);
            }
            None => {
                next.hosts.insert(name.clone(), prev.cloned().unwrap_or_default());
            }
        }
    }
    let visited = match query.last {
        Some(n) => run_last(&plans, n, &filter, &counters, &mut visit)?,
        None => run_merge(&plans, &filter, &counters, &mut visit)?,
    };
    if let Some(visited) = visited {
        // Stopped early: a cursor only past what was given.
        for (plan, seen) in plans.iter().zip(visited) {
            next.hosts.insert(
                plan.host.to_string(),
                HostCursor {
                    next_seq: seen.unwrap_or(plan.min_seq).max(plan.min_seq),
                    hint: None,
                    fingerprint: None,
                },
            );
        }
    }
    Ok((next, counters.stats()))
}

/// How many jobs of one host may be done or in progress ahead of the one the merge waits for.
const WINDOW: usize = 3;

struct Sched {
    next_take: Vec<usize>,
    consumed: Vec<usize>,
    results: HashMap<(usize, usize), Vec<Line>>,
    stop: bool,
    error: Option<io::Error>,
}

/// Run the jobs of every host, merging their lines by received_us. On a `Break`, the per-host
/// next seq after the last line given (None for a host with none).
fn run_merge(
    plans: &[HostPlan],
    filter: &Filter,
    counters: &Counters,
    visit: &mut impl FnMut(&Line) -> ControlFlow<()>,
) -> io::Result<Option<Vec<Option<u64>>>> {
    let job_counts: Vec<usize> = plans.iter().map(|p| p.jobs.len()).collect();
    let block_jobs = plans
        .iter()
        .flat_map(|p| &p.jobs)
        .filter(|j| matches!(j, Job::Block { .. }))
        .count();
    if block_jobs < 2 {
        let mut reader = Reader::new()?;
        let mut fetch = |h: usize, j: usize| {
            reader.run(
                &plans[h].host,
                &plans[h].jobs[j],
                plans[h].min_seq,
                filter,
                counters,
            )
        };
        return merge(&job_counts, &mut fetch, visit);
    }
    let sched = Mutex::new(Sched {
        next_take: vec![0; plans.len()],
        consumed: vec![0; plans.len()],
        results: HashMap::new(),
        stop: false,
        error: None,
    });
    let cv = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut reader = match Reader::new() {
                    Ok(r) => r,
                    Err(e) => {
                        let mut s = crate::sync::lock(&sched);
                        s.error.get_or_insert(e);
                        cv.notify_all();
                        return;
                    }
                };
                let mut s = crate::sync::lock(&sched);
                loop {
                    if s.stop {
                        return;
                    }
                    let mut best: Option<(i64, usize)> = None;
                    let mut all_taken = true;
                    for (h, plan) in plans.iter().enumerate() {
                        let j = s.next_take[h];
                        if j < plan.jobs.len() {
                            all_taken = false;
                            if j < s.consumed[h] + WINDOW && best.is_none_or(|(k, _)| plan.keys[j] < k) {
                                best = Some((plan.keys[j], h));
                            }
                        }
                    }
                    if all_taken {
                        return;
                    }
                    let Some((_, h)) = best else {
                        s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
                        continue;
                    };
                    let j = s.next_take[h];
                    s.next_take[h] += 1;
                    drop(s);
                    let plan = &plans[h];
                    let res = reader.run(&plan.host, &plan.jobs[j], plan.min_seq, filter, counters);
                    s = crate::sync::lock(&sched);
                    match res {
                        Ok(lines) => {
                            s.results.insert((h, j), lines);
                        }
                        Err(e) => {
                            s.error.get_or_insert(e);
                            s.stop = true;
                        }
                    }
                    cv.notify_all();
                }
            });
        }
        let mut fetch = |h: usize, j: usize| {
            let mut s = crate::sync::lock(&sched);
            loop {
                if let Some(lines) = s.results.remove(&(h, j)) {
                    s.consumed[h] = j + 1;
                    cv.notify_all();
                    return Ok(lines);
                }
                if let Some(e) = s.error.take() {
                    return Err(e);
                }
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        };
        let res = merge(&job_counts, &mut fetch, visit);
        let mut s = crate::sync::lock(&sched);
        s.stop = true;
        cv.notify_all();
        drop(s);
        res
    })
}

/// The k-way merge: `fetch(h, j)` gives the lines of job j of host h.
fn merge(
    jobs: &[usize],
    fetch: &mut impl FnMut(usize, usize) -> io::Result<Vec<Line>>,
    visit: &mut impl FnMut(&Line) -> ControlFlow<()>,
) -> io::Result<Option<Vec<Option<u64>>>> {
    let mut heads: Vec<VecDeque<Line>> = jobs.iter().map(|_| VecDeque::new()).collect();
    let mut next_job = vec![0usize; jobs.len()];
    let mut seen: Vec<Option<u64>> = vec![None; jobs.len()];
    loop {
        let mut best: Option<(i64, usize)> = None;
        for h in 0..jobs.len() {
            while heads[h].is_empty() && next_job[h] < jobs[h] {
                heads[h] = fetch(h, next_job[h])?.into();
                next_job[h] += 1;
            }
            if let Some(l) = heads[h].front()
                && best.is_none_or(|(t, _)| l.received_us < t)
            {
                best = Some((l.received_us, h));
            }
        }
        // `best` names a host whose queue has a front line.
        let Some((_, h)) = best else { return Ok(None) };
        let Some(line) = heads[h].pop_front() else {
            return Ok(None);
        };
        seen[h] = Some(line.seq + 1);
        if visit(&line).is_break() {
            return Ok(Some(seen));
        }
    }
}

/// Only the last `n` lines: each host read newest block first until it has `n`, then merged.
fn run_last(
    plans: &[HostPlan],
    n: usize,
    filter: &Filter,
    counters: &Counters,
    visit: &mut impl FnMut(&Line) -> ControlFlow<()>,
) -> io::Result<Option<Vec<Option<u64>>>> {
    let tail = |plan: &HostPlan, reader: &mut Reader| -> io::Result<Vec<Line>> {
        let mut chunks = Vec::new();
        let mut count = 0;
        for job in plan.jobs.iter().rev() {
            if count >= n {
                break;
            }
            let lines = reader.run(&plan.host, job, plan.min_seq, filter, counters)?;
            count += lines.len();
            chunks.push(lines);
        }
        let mut lines: Vec<Line> = chunks.into_iter().rev().flatten().collect();
        let extra = lines.len().saturating_sub(n);
        lines.drain(..extra);
        Ok(lines)
    };
    let per_host: Vec<io::Result<Vec<Line>>> = if plans.len() < 2 {
        let mut reader = Reader::new()?;
        plans.iter().map(|p| tail(p, &mut reader)).collect()
    } else {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<io::Result<Vec<Line>>>>> =
            plans.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let mut reader = match Reader::new() {
                        Ok(r) => r,
                        Err(e) => {
                            let h = next.fetch_add(1, Ordering::Relaxed);
                            if h < plans.len() {
                                *crate::sync::lock(&slots[h]) = Some(Err(e));
                            }
                            return;
                        }
                    };
                    loop {
                        let h = next.fetch_add(1, Ordering::Relaxed);
                        if h >= plans.len() {
                            return;
                        }
                        *crate::sync::lock(&slots[h]) = Some(tail(&plans[h], &mut reader));
                    }
                });
            }
        });
        slots
            .into_iter()
            .map(|s| {
                s.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| Ok(Vec::new()))
            })
            .collect()
    };
    let mut per_host = per_host.into_iter().collect::<io::Result<Vec<Vec<Line>>>>()?;
    // Merge everything, keep the last n.
    let mut merged = Vec::new();
    let mut cut: Vec<Option<Vec<Line>>> = per_host.iter_mut().map(|v| Some(std::mem::take(v))).collect();
    let mut fetch = |h: usize, _j: usize| Ok(cut[h].take().unwrap_or_default());
    merge(&vec![1; plans.len()], &mut fetch, &mut |l: &Line| {
        merged.push(l.clone());
        ControlFlow::Continue(())
    })?;
    let extra = merged.len().saturating_sub(n);
    let mut seen: Vec<Option<u64>> = vec![None; plans.len()];
    let index: HashMap<&str, usize> = plans.iter().enumerate().map(|(i, p)| (&*p.host, i)).collect();
    for l in &merged[extra..] {
        seen[index[&*l.host]] = Some(l.seq + 1);
        if visit(l).is_break() {
            return Ok(Some(seen));
        }
    }
    Ok(None)
}

/// Every host of the directory with what it holds, sorted by host.
pub fn hosts(dir: &Path) -> io::Result<Vec<HostSummary>> {
    let counters = Counters::default();
    let mut out = Vec::new();
    for host in list_hosts(dir)? {
        let host_dir = dir.join(&host);
        let mut s = HostSummary {
            host,
            segments: 0,
            disk_bytes: 0,
            lines: 0,
            first_us: None,
            last_us: None,
        };
        let mut see = |min: i64, max: i64| {
            s.first_us = Some(s.first_us.map_or(min, |f| f.min(min)));
            s.last_us = Some(s.last_us.map_or(max, |l| l.max(max)));
        };
        let wal_buf = fs::read(host_dir.join("wal")).unwrap_or_default();
        let wal = format::decode_wal(&wal_buf);
        let mut blocks_end = 0;
        for seq0 in list_segments(&host_dir)? {
            let path = host_dir.join(format::seg_name(seq0));
            let Some((blocks, _)) = segment_blocks(&path, None, &counters)? else {
                continue;
            };
            s.segments += 1;
            for b in &blocks {
                s.lines += b.header.count as u64;
                blocks_end = blocks_end.max(b.header.end_seq());
                see(b.header.min_us, b.header.max_us);
            }
        }
        for r in wal.records.iter().filter(|r| r.seq >= blocks_end) {
            s.lines += 1;
            see(r.received_us, r.received_us);
        }
        if let Ok(entries) = fs::read_dir(&host_dir) {
            s.disk_bytes = entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
        }
        out.push(s);
    }
    Ok(out)
}
