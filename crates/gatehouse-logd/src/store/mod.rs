//! Per-host segments of zstd blocks (each with a trigram filter), behind a write-ahead tail.
//!
//! `DIR/HOST/` holds `SEQ0.seg` segment files (blocks of records, see [`format`]), a `SEQ0.idx`
//! beside each sealed segment, and `wal`: the records not yet in a block, written with one
//! `write(2)` per batch so a `kill -9` loses nothing `append` returned for. The same records wait
//! in memory as the pending block; when it is `block_size` bytes (or older than `block_age` at a
//! `maintain`) it is compressed onto the active segment and the WAL is emptied.

pub(crate) mod format;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use format::{BlockRef, Columns, ScanEnd};

use crate::Batch;

/// How the store lays out and keeps its files.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub dir: PathBuf,
    /// A segment holding more than this many bytes is sealed and a new one started.
    pub segment_size: u64,
    /// A segment whose first record is older than this is sealed (at a `maintain`).
    pub segment_age: Duration,
    /// Sealed segments whose newest record is older than this are deleted.
    pub retention: Option<Duration>,
    /// Total bytes of segment files, all hosts: the oldest sealed segments go first.
    pub max_size: Option<u64>,
    /// How often dirty files are fsynced.
    pub fsync: Duration,
    /// Uncompressed bytes per block.
    pub block_size: usize,
    /// A pending block older than this is written out (at a `maintain`).
    pub block_age: Duration,
}

impl StoreOptions {
    pub fn new(dir: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            dir: dir.into(),
            segment_size: 128 << 20,
            segment_age: Duration::from_secs(3600),
            retention: None,
            max_size: None,
            fsync: Duration::from_secs(1),
            block_size: 256 << 10,
            block_age: Duration::from_secs(10),
        }
    }
}

/// What a `maintain` did.
#[derive(Debug, Default)]
pub struct Maintenance {
    pub deleted_segments: Vec<PathBuf>,
    pub deleted_bytes: u64,
    pub rotated: usize,
}

/// Every host's log under one directory.
pub struct Store {
    inner: Arc<Inner>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    dir: PathBuf,
    /// Everything but `dir` may change while running (`Store::set_limits`).
    options: RwLock<StoreOptions>,
    hosts: RwLock<BTreeMap<String, Arc<HostLog>>>,
}

/// One host's log; `append` from any number of tasks.
pub struct HostLog {
    name: String,
    dir: PathBuf,
    wal_path: PathBuf,
    block_size: usize,
    segment_size: AtomicU64,
    state: Mutex<HostState>,
}

struct Active {
    file: Arc<File>,
    path: PathBuf,
    seq0: u64,
    len: u64,
    blocks: Vec<BlockRef>,
    first_us: i64,
}

struct Sealed {
    seq0: u64,
    path: PathBuf,
    idx: PathBuf,
    bytes: u64,
    max_us: i64,
}

struct HostState {
    wal: Arc<File>,
    wal_len: u64,
    wal_buf: Vec<u8>,
    pending: Columns,
    pending_since: Option<SystemTime>,
    next_seq: u64,
    active: Option<Active>,
    sealed: Vec<Sealed>,
    compressor: zstd::bulk::Compressor<'static>,
    raw: Vec<u8>,
    out: Vec<u8>,
    wal_dirty: bool,
    seg_dirty: bool,
    dir_dirty: bool,
}

pub(crate) fn with_path(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let path = path.display().to_string();
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {path}: {e}"))
}

fn now_us(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

impl Store {
    /// Open (creating) the directory and recover every host found in it.
    pub fn open(options: StoreOptions) -> io::Result<Store> {
        fs::create_dir_all(&options.dir).map_err(with_path(&options.dir, "cannot create log directory"))?;
        let mut hosts = BTreeMap::new();
        let entries =
            fs::read_dir(&options.dir).map_err(with_path(&options.dir, "cannot read log directory"))?;
        for entry in entries {
            let entry = entry.map_err(with_path(&options.dir, "cannot read log directory"))?;
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let host = HostLog::open(&name, entry.path(), &options)?;
            hosts.insert(name, Arc::new(host));
        }
        let inner = Arc::new(Inner {
            dir: options.dir.clone(),
            options: RwLock::new(options),
            hosts: RwLock::new(hosts),
        });
        let (stop, rx) = mpsc::channel::<()>();
        let weak = Arc::downgrade(&inner);
        let thread = std::thread::Builder::new()
            .name("logd-store".into())
            .spawn(move || background(weak, rx))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start the store's sync thread: {e}")))?;
        Ok(Store {
            inner,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The host's log, created (with its directory) when new.
    pub fn host(&self, name: &str) -> io::Result<Arc<HostLog>> {
        if let Some(h) = self
            .inner
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(h.clone());
        }
        let mut hosts = self.inner.hosts.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hosts.get(name) {
            return Ok(h.clone());
        }
        let dir = self.inner.dir.join(name);
        fs::create_dir_all(&dir).map_err(with_path(&dir, "cannot create host directory"))?;
        let options = self.inner.options().clone();
        let host = Arc::new(HostLog::open(name, dir, &options)?);
        hosts.insert(name.to_string(), host.clone());
        Ok(host)
    }

    /// Write out old pending blocks, seal old or full segments, apply retention.
    pub fn maintain(&self, now: SystemTime) -> io::Result<Maintenance> {
        self.inner.maintain(now)
    }

    /// fsync what was written since the last sync.
    pub fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    /// For shutdown: every pending block out to its segment, everything fsynced.
    pub fn flush(&self) -> io::Result<()> {
        for host in self.inner.all_hosts() {
            let mut st = host.lock();
            host.write_block(&mut st)?;
            st.wal_dirty = true;
            st.seg_dirty = true;
            st.dir_dirty = true;
            drop(st);
            host.sync()?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> StoreOptions {
        self.inner.options().clone()
    }

    /// Take new sizes, ages, retention and fsync interval while running
    /// (a reload); the directory stays (`options.dir` is ignored). The next
    /// `maintain` applies them to what is on disk.
    pub fn set_limits(&self, options: &StoreOptions) {
        let mut current = self.inner.options.write().unwrap_or_else(|e| e.into_inner());
        *current = StoreOptions {
            dir: self.inner.dir.clone(),
            block_size: current.block_size,
            ..options.clone()
        };
        for host in self.inner.all_hosts() {
            host.segment_size.store(options.segment_size, Ordering::Relaxed);
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn background(weak: Weak<Inner>, rx: mpsc::Receiver<()>) {
    const MAINTAIN: Duration = Duration::from_secs(5);
    let Some(fsync) = weak
        .upgrade()
        .map(|i| i.options().fsync.max(Duration::from_millis(1)))
    else {
        return;
    };
    let (mut next_sync, mut next_maintain) = (Instant::now() + fsync, Instant::now() + MAINTAIN);
    loop {
        let wait = next_sync
            .min(next_maintain)
            .saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let Some(inner) = weak.upgrade() else { return };
        let now = Instant::now();
        if now >= next_sync {
            if let Err(e) = inner.sync() {
                tracing::warn!(error = %e, "log store fsync failed");
            }
            // A reload may have changed the interval.
            next_sync = now + inner.options().fsync.max(Duration::from_millis(1));
        }
        if now >= next_maintain {
            if let Err(e) = inner.maintain(SystemTime::now()) {
                tracing::warn!(error = %e, "log store maintenance failed");
            }
            next_maintain = now + MAINTAIN;
        }
    }
}

impl Inner {
    fn options(&self) -> std::sync::RwLockReadGuard<'_, StoreOptions> {
        self.options.read().unwrap_or_else(|e| e.into_inner())
    }

    fn all_hosts(&self) -> Vec<Arc<HostLog>> {
        self.hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn sync(&self) -> io::Result<()> {
        let mut first_err = None;
        for host in self.all_hosts() {
            if let Err(e) = host.sync() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn maintain(&self, now: SystemTime) -> io::Result<Maintenance> {
        let options = self.options().clone();
        let mut report = Maintenance::default();
        let now_us = now_us(now);
        // (max_us, host, seq0, segment bytes) of every sealed segment.
        let mut sealed = Vec::new();
        let mut total: u64 = 0;
        let hosts = self.all_hosts();
        for host in &hosts {
            let mut st = host.lock();
            if let Some(since) = st.pending_since
                && !st.pending.is_empty()
                && now.duration_since(since).unwrap_or_default() >= options.block_age
            {
                host.write_block(&mut st)?;
            }
            if let Some(active) = &st.active {
                let age_us = now_us.saturating_sub(active.first_us);
                if active.len >= host.segment_size.load(Ordering::Relaxed)
                    || age_us >= options.segment_age.as_micros() as i64
                {
                    host.seal(&mut st)?;
                    report.rotated += 1;
                }
            }
            total += st.active.as_ref().map_or(0, |a| a.len);
            for s in &st.sealed {
                total += s.bytes;
                sealed.push((s.max_us, host.clone(), s.seq0, s.bytes));
            }
        }
        sealed.sort_by_key(|(max_us, host, seq0, _)| (*max_us, host.name.clone(), *seq0));
        let mut delete = Vec::new();
        let mut rest = sealed.into_iter().peekable();
        if let Some(retention) = options.retention {
            let cutoff = now_us.saturating_sub(retention.as_micros() as i64);
            while let Some(next) = rest.next_if(|(max_us, ..)| *max_us < cutoff) {
                total -= next.3;
                delete.push(next);
            }
        }
        if let Some(max_size) = options.max_size {
            while total > max_size {
                let Some(next) = rest.next() else { break };
                total -= next.3;
                delete.push(next);
            }
        }
        for (_, host, seq0, _) in delete {
            host.delete_segment(seq0, &mut report)?;
        }
        Ok(report)
    }
}

impl HostLog {
    /// Open a host's directory, recovering its files: a torn segment tail is cut at the last good
    /// block, the WAL is replayed after the last block and rewritten.
    fn open(name: &str, dir: PathBuf, options: &StoreOptions) -> io::Result<HostLog> {
        let mut seqs = Vec::new();
        let mut idxs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(with_path(&dir, "cannot read host directory"))? {
            let entry = entry.map_err(with_path(&dir, "cannot read host directory"))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some(seq0) = format::parse_seg_name(file_name) {
                seqs.push(seq0);
            } else if let Some(stem) = file_name.strip_suffix(".idx") {
                idxs.push(stem.to_string());
            } else if file_name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        seqs.sort_unstable();
        for stem in idxs {
            if !stem.parse::<u64>().is_ok_and(|s| seqs.binary_search(&s).is_ok()) {
                let _ = fs::remove_file(dir.join(format!("{stem}.idx")));
            }
        }
        let mut sealed = Vec::new();
        let mut active = None;
        let mut end_seq = 0u64;
        for (i, &seq0) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let path = dir.join(format::seg_name(seq0));
            let idx = dir.join(format::idx_name(seq0));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(with_path(&path, "cannot open segment"))?;
            let len = file
                .metadata()
                .map_err(with_path(&path, "cannot stat segment"))?
                .len();
            let mut magic = [0u8; 8];
            if len < format::SEG_HEADER_LEN
                || file.read_exact_at(&mut magic, 0).is_err()
                || magic != format::SEG_MAGIC
            {
                tracing::warn!(host = name, path = %path.display(), "removed a segment without a valid header");
                fs::remove_file(&path).map_err(with_path(&path, "cannot remove segment"))?;
                let _ = fs::remove_file(&idx);
                continue;
            }
            let indexed = fs::read(&idx)
                .ok()
                .and_then(|b| format::decode_index(&b))
                .filter(|(seg_len, blocks)| *seg_len == len && !blocks.is_empty());
            let blocks = match indexed {
                Some((_, blocks)) => blocks,
                None => {
                    let _ = fs::remove_file(&idx);
                    let mut blocks = Vec::new();
                    let end = format::scan_blocks(&file, format::SEG_HEADER_LEN, len, true, &mut blocks)
                        .map_err(with_path(&path, "cannot read segment"))?;
                    if let ScanEnd::Torn { offset, reason } = end {
                        tracing::warn!(
                            host = name,
                            path = %path.display(),
                            offset,
                            reason,
                            "truncated the torn tail of a segment: {} bytes after {} good blocks",
                            len - offset,
                            blocks.len()
                        );
                        file.set_len(offset)
                            .map_err(with_path(&path, "cannot truncate segment"))?;
                        file.sync_all()
                            .map_err(with_path(&path, "cannot fsync segment"))?;
                    }
                    let Some((seg_len, tail_seq)) = blocks.last().map(|b| (b.end(), b.header.end_seq()))
                    else {
                        fs::remove_file(&path).map_err(with_path(&path, "cannot remove segment"))?;
                        continue;
                    };
                    if last {
                        end_seq = end_seq.max(tail_seq);
                        active = Some(Active {
                            file: Arc::new(file),
                            path,
                            seq0,
                            len: seg_len,
                            first_us: blocks[0].header.min_us,
                            blocks,
                        });
                        continue;
                    }
                    write_index(&idx, seg_len, &blocks)?;
                    blocks
                }
            };
            // Both arms give blocks (an index with none is not taken).
            let (Some(tail), Some(max_us)) = (blocks.last(), blocks.iter().map(|b| b.header.max_us).max())
            else {
                continue;
            };
            end_seq = end_seq.max(tail.header.end_seq());
            sealed.push(Sealed {
                seq0,
                bytes: tail.end(),
                max_us,
                path,
                idx,
            });
        }

        let wal_path = dir.join("wal");
        let old = match fs::read(&wal_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(with_path(&wal_path, "cannot read WAL")(e)),
        };
        let contents = format::decode_wal(&old);
        if let Some(reason) = contents.torn {
            tracing::warn!(
                host = name,
                path = %wal_path.display(),
                reason,
                "dropped the torn tail of the WAL: {} bytes after {} good records",
                old.len() - contents.good_end,
                contents.records.len()
            );
        }
        let wal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wal_path)
            .map_err(with_path(&wal_path, "cannot open WAL"))?;
        let block_size = options.block_size.max(1);
        let segment_size = options.segment_size;
        let mut st = HostState {
            wal: Arc::new(wal),
            wal_len: old.len() as u64,
            wal_buf: Vec::new(),
            pending: Columns::default(),
            pending_since: None,
            next_seq: end_seq.max(contents.base_seq),
            active,
            sealed,
            compressor: zstd::bulk::Compressor::new(format::ZSTD_LEVEL)?,
            raw: Vec::new(),
            out: Vec::new(),
            wal_dirty: false,
            seg_dirty: false,
            dir_dirty: false,
        };
        let mut skipped = 0;
        for r in &contents.records {
            if r.seq < st.next_seq {
                skipped += 1;
                continue;
            }
            if r.seq > st.next_seq && !st.pending.is_empty() {
                // A gap (blocks lost in a crash): what came before it becomes a block of its own.
                Self::write_block_inner(&dir, &wal_path, segment_size, &mut st)?;
            }
            if st.pending.is_empty() {
                st.pending_since = Some(SystemTime::now());
            }
            st.pending
                .push(r.seq, r.received_us, r.flags, &old[r.start..r.end]);
            st.next_seq = r.seq + 1;
        }
        if skipped > 0 {
            tracing::warn!(
                host = name,
                path = %wal_path.display(),
                "dropped {skipped} WAL records already in blocks"
            );
        }
        // Rewrite the WAL to hold exactly the pending block.
        let base = if st.pending.is_empty() {
            st.next_seq
        } else {
            st.pending.first_seq
        };
        let mut new = format::wal_header(base).to_vec();
        for r in &contents.records {
            if r.seq >= base {
                let entry = crate::Entry {
                    received_us: r.received_us,
                    flags: r.flags,
                    message: &old[r.start..r.end],
                };
                format::encode_wal_record(&mut new, r.seq, &entry);
            }
        }
        if new != old {
            let tmp = dir.join("wal.tmp");
            fs::write(&tmp, &new).map_err(with_path(&tmp, "cannot write WAL"))?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(with_path(&tmp, "cannot fsync WAL"))?;
            fs::rename(&tmp, &wal_path).map_err(with_path(&wal_path, "cannot replace WAL"))?;
            let wal = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&wal_path)
                .map_err(with_path(&wal_path, "cannot open WAL"))?;
            st.wal = Arc::new(wal);
            st.wal_len = new.len() as u64;
            st.dir_dirty = true;
        }
        if st.dir_dirty {
            sync_dir(&dir)?;
            st.dir_dirty = false;
        }
        Ok(HostLog {
            name: name.to_string(),
            dir,
            wal_path,
            block_size,
            segment_size: AtomicU64::new(segment_size),
            state: Mutex::new(st),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, HostState> {
        crate::sync::lock(&self.state)
    }

    /// Append a batch: each entry gets the next seq; the whole batch goes to the WAL in one write.
    pub fn append(&self, batch: &Batch) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        st.wal_buf.clear();
        st.wal_buf
            .reserve(batch.bytes() + batch.len() * format::WAL_RECORD_HEADER);
        for (seq, entry) in (st.next_seq..).zip(batch.iter()) {
            format::encode_wal_record(&mut st.wal_buf, seq, &entry);
        }
        st.wal
            .write_all_at(&st.wal_buf, st.wal_len)
            .map_err(with_path(&self.wal_path, "cannot write WAL"))?;
        st.wal_len += st.wal_buf.len() as u64;
        st.wal_dirty = true;
        if st.pending.is_empty() {
            st.pending_since = Some(SystemTime::now());
        }
        for (seq, entry) in (st.next_seq..).zip(batch.iter()) {
            st.pending
                .push(seq, entry.received_us, entry.flags, entry.message);
        }
        st.next_seq += batch.len() as u64;
        if st.pending.raw_len() >= self.block_size
            && let Err(e) = self.write_block(st)
        {
            // The batch is in the WAL and the pending block: accepted. The block is tried again.
            tracing::warn!(host = self.name, error = %e, "cannot write a block");
        }
        Ok(())
    }

    fn write_block(&self, st: &mut HostState) -> io::Result<()> {
        Self::write_block_inner(
            &self.dir,
            &self.wal_path,
            self.segment_size.load(Ordering::Relaxed),
            st,
        )
    }

    /// Compress the pending block onto the active segment (starting one if there is none), then
    /// empty the WAL.
    fn write_block_inner(
        dir: &Path,
        wal_path: &Path,
        segment_size: u64,
        st: &mut HostState,
    ) -> io::Result<()> {
        if st.pending.is_empty() {
            return Ok(());
        }
        if st.active.is_none() {
            let seq0 = st.pending.first_seq;
            let path = dir.join(format::seg_name(seq0));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(with_path(&path, "cannot create segment"))?;
            file.write_all_at(&format::SEG_MAGIC, 0)
                .map_err(with_path(&path, "cannot write segment"))?;
            st.active = Some(Active {
                file: Arc::new(file),
                path,
                seq0,
                len: format::SEG_HEADER_LEN,
                blocks: Vec::new(),
                first_us: st.pending.min_us,
            });
            st.dir_dirty = true;
        }
        let header = st
            .pending
            .encode_block(&mut st.compressor, &mut st.raw, &mut st.out)?;
        let Some(active) = st.active.as_mut() else {
            return Err(io::Error::other("no active segment to write a block to"));
        };
        active
            .file
            .write_all_at(&st.out, active.len)
            .map_err(with_path(&active.path, "cannot write segment"))?;
        active.blocks.push(BlockRef {
            offset: active.len,
            header,
        });
        active.len += st.out.len() as u64;
        st.seg_dirty = true;
        st.pending.clear();
        st.pending_since = None;
        st.wal
            .write_all_at(&format::wal_header(st.next_seq), 0)
            .map_err(with_path(wal_path, "cannot write WAL"))?;
        st.wal
            .set_len(format::WAL_HEADER_LEN as u64)
            .map_err(with_path(wal_path, "cannot truncate WAL"))?;
        st.wal_len = format::WAL_HEADER_LEN as u64;
        st.wal_dirty = true;
        if active.len >= segment_size {
            Self::seal_inner(st)?;
        }
        Ok(())
    }

    fn seal(&self, st: &mut HostState) -> io::Result<()> {
        Self::seal_inner(st)
    }

    /// Seal the active segment: fsync it, write its index.
    fn seal_inner(st: &mut HostState) -> io::Result<()> {
        let Some(active) = st.active.take() else {
            return Ok(());
        };
        active
            .file
            .sync_data()
            .map_err(with_path(&active.path, "cannot fsync segment"))?;
        let idx = active.path.with_extension("idx");
        write_index(&idx, active.len, &active.blocks)?;
        st.dir_dirty = true;
        st.sealed.push(Sealed {
            seq0: active.seq0,
            path: active.path,
            idx,
            bytes: active.len,
            max_us: active
                .blocks
                .iter()
                .map(|b| b.header.max_us)
                .max()
                .unwrap_or(active.first_us),
        });
        Ok(())
    }

    fn delete_segment(&self, seq0: u64, report: &mut Maintenance) -> io::Result<()> {
        let mut st = self.lock();
        let Some(i) = st.sealed.iter().position(|s| s.seq0 == seq0) else {
            return Ok(());
        };
        let s = st.sealed.remove(i);
        let idx_bytes = fs::metadata(&s.idx).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&s.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                st.sealed.insert(i, s);
                return Err(e);
            }
        }
        let _ = fs::remove_file(&s.idx);
        st.dir_dirty = true;
        report.deleted_bytes += s.bytes + idx_bytes;
        report.deleted_segments.push(s.path);
        Ok(())
    }

    /// fsync the WAL, the active segment and the directory if they changed.
    fn sync(&self) -> io::Result<()> {
        let mut st = self.lock();
        let wal = std::mem::take(&mut st.wal_dirty).then(|| st.wal.clone());
        let seg = if std::mem::take(&mut st.seg_dirty) {
            st.active.as_ref().map(|a| (a.file.clone(), a.path.clone()))
        } else {
            None
        };
        let dir = std::mem::take(&mut st.dir_dirty);
        drop(st);
        if let Some(wal) = wal {
            wal.sync_data()
                .map_err(with_path(&self.wal_path, "cannot fsync WAL"))?;
        }
        if let Some((seg, path)) = seg {
            seg.sync_data()
                .map_err(with_path(&path, "cannot fsync segment"))?;
        }
        if dir {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(with_path(dir, "cannot fsync directory"))
}

/// Write a segment's index through a temporary file and a rename.
fn write_index(idx: &Path, seg_len: u64, blocks: &[BlockRef]) -> io::Result<()> {
    let tmp = idx.with_extension("idx.tmp");
    fs::write(&tmp, format::encode_index(seg_len, blocks)).map_err(with_path(&tmp, "cannot write index"))?;
    fs::rename(&tmp, idx).map_err(with_path(idx, "cannot write index"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Flags;

    #[test]
    fn an_index_lost_in_a_crash_is_rebuilt_at_open() {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-store-unit-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
        ));
        let mut options = StoreOptions::new(&dir);
        options.block_size = 100;
        options.segment_size = 200;
        let store = Store::open(options.clone()).unwrap();
        let host = store.host("web1").unwrap();
        let mut batch = Batch::new();
        for i in 0..40 {
            batch.clear();
            batch.push(
                i,
                Flags::default(),
                format!("<13>line {i} with some padding text").as_bytes(),
            );
            host.append(&batch).unwrap();
        }
        store.flush().unwrap();
        drop(store);
        let idxs: Vec<PathBuf> = fs::read_dir(dir.join("web1"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "idx"))
            .collect();
        assert!(idxs.len() >= 2);
        let kept = fs::read(&idxs[0]).unwrap();
        for p in &idxs {
            fs::remove_file(p).unwrap();
        }
        let store = Store::open(options).unwrap();
        let host = store.host("web1").unwrap();
        let st = host.lock();
        // Every segment but the last got its index back, identical to the one written at sealing.
        let segs = fs::read_dir(dir.join("web1"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|e| e == "seg"))
            .count();
        assert_eq!(st.sealed.len() + st.active.iter().count(), segs);
        assert!(st.sealed.len() >= idxs.len() - 1);
        assert_eq!(fs::read(&idxs[0]).unwrap(), kept);
        assert_eq!(st.next_seq, 40);
        drop(st);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }
}
