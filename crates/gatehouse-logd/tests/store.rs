//! The store and the queries over it, on real files.

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_logd::query::{self, Cursor, Query, SearchStats};
use gatehouse_logd::store::{Store, StoreOptions};
use gatehouse_logd::{Batch, Flags, Line};
use regex::bytes::Regex;

use gatehouse_lab::loopback::TempDir;

const HOUR_US: i64 = 3_600_000_000;

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn at(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us as u64)
}

/// A message of exactly 30 bytes.
fn msg(host: &str, i: u64) -> String {
    let m = format!("<13>{host} message {i:06}");
    format!("{m:.<30}")
}

/// raw block size of `n` records of 30 bytes: 13 bytes of columns each, the text, the separators.
fn raw(n: usize) -> usize {
    n * 13 + n * 30 + n - 1
}

fn batch(host: &str, seqs: std::ops::Range<u64>, time: impl Fn(u64) -> i64) -> Batch {
    let mut b = Batch::new();
    for i in seqs {
        b.push(time(i), Flags::default(), msg(host, i).as_bytes());
    }
    b
}

fn options(dir: &Path) -> StoreOptions {
    let mut o = StoreOptions::new(dir);
    o.fsync = Duration::from_secs(3600);
    o
}

fn all(dir: &Path, query: &Query) -> Vec<Line> {
    let mut lines = Vec::new();
    query::search(dir, query, |l| {
        lines.push(l.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    lines
}

fn stats(dir: &Path, query: &Query) -> (Vec<Line>, SearchStats) {
    let mut lines = Vec::new();
    let (_, stats) = query::search_stats(dir, query, None, |l| {
        lines.push(l.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    (lines, stats)
}

fn seqs(lines: &[Line]) -> Vec<u64> {
    lines.iter().map(|l| l.seq).collect()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn host(name: &str) -> Query {
    Query {
        hosts: vec![name.to_string()],
        ..Query::default()
    }
}

#[test]
fn lines_come_back_in_order_with_their_seqs_flags_and_times() {
    let tmp = TempDir::new("order");
    let store = Store::open(options(&tmp.0)).unwrap();
    let web1 = store.host("web1").unwrap();
    assert_eq!(web1.name(), "web1");
    let mut b = Batch::new();
    b.push(10, Flags::default(), b"<13>one");
    b.push(11, Flags::UNPARSED | Flags::BINARY, b"\xff\x00two\nlines");
    b.push(12, Flags::TRUNCATED, b"");
    web1.append(&b).unwrap();
    web1.append(&batch("web1", 3..10, |i| 10 + i as i64)).unwrap();
    let lines = all(&tmp.0, &Query::default());
    assert_eq!(seqs(&lines), (0..10).collect::<Vec<_>>());
    assert_eq!(lines[1].message, b"\xff\x00two\nlines");
    assert_eq!(lines[1].flags, Flags::UNPARSED | Flags::BINARY);
    assert_eq!(lines[2].message, b"");
    assert_eq!(lines[2].flags, Flags::TRUNCATED);
    assert_eq!(&*lines[0].host, "web1");
    assert_eq!(lines[9].message, msg("web1", 9).as_bytes());
    assert_eq!(lines[9].received_us, 19);
    // The same after the pending block is written out.
    store.flush().unwrap();
    assert_eq!(files(&tmp.0.join("web1"), "seg").len(), 1);
    assert_eq!(all(&tmp.0, &Query::default()), lines);
    // And after a reopen; new lines continue the seqs.
    drop(store);
    let store = Store::open(options(&tmp.0)).unwrap();
    store
        .host("web1")
        .unwrap()
        .append(&batch("web1", 10..12, |i| 10 + i as i64))
        .unwrap();
    let again = all(&tmp.0, &Query::default());
    assert_eq!(again[..10], lines[..]);
    assert_eq!(seqs(&again[10..]), [10, 11]);
    assert_eq!(store.dir(), tmp.0);
    assert_eq!(store.options().block_size, 256 << 10);
}

#[test]
fn lines_are_visible_from_the_wal_before_any_block() {
    let tmp = TempDir::new("wal");
    let store = Store::open(options(&tmp.0)).unwrap();
    let web1 = store.host("web1").unwrap();
    web1.append(&batch("web1", 0..5, |i| i as i64)).unwrap();
    assert!(files(&tmp.0.join("web1"), "seg").is_empty());
    let lines = all(&tmp.0, &Query::default());
    assert_eq!(seqs(&lines), [0, 1, 2, 3, 4]);
    assert_eq!(lines[4].message, msg("web1", 4).as_bytes());
    // Killed without a flush: the WAL brings them back.
    drop(store);
    let store = Store::open(options(&tmp.0)).unwrap();
    assert_eq!(all(&tmp.0, &Query::default()), lines);
    store
        .host("web1")
        .unwrap()
        .append(&batch("web1", 5..6, |i| i as i64))
        .unwrap();
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn a_block_is_written_at_block_size_and_at_block_age() {
    let tmp = TempDir::new("blocks");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    o.block_age = Duration::from_secs(10);
    let store = Store::open(o).unwrap();
    let t0 = now_us();
    let web1 = store.host("web1").unwrap();
    let dir = tmp.0.join("web1");
    let wal_len = || fs::metadata(dir.join("wal")).unwrap().len();
    web1.append(&batch("web1", 0..9, |i| t0 + i as i64)).unwrap();
    assert!(files(&dir, "seg").is_empty());
    assert_eq!(wal_len(), 16 + 9 * (25 + 30));
    web1.append(&batch("web1", 9..10, |i| t0 + i as i64)).unwrap();
    // Ten records: a block; the WAL is emptied (its header stays).
    let segs = files(&dir, "seg");
    assert_eq!(segs.len(), 1);
    assert_eq!(wal_len(), 16);
    let seg_len = fs::metadata(&segs[0]).unwrap().len();
    let (lines, s) = stats(&tmp.0, &Query::default());
    assert_eq!(seqs(&lines), (0..10).collect::<Vec<_>>());
    assert_eq!(s.blocks_read, 1);
    // Three more wait in the WAL until the block is older than block_age.
    web1.append(&batch("web1", 10..13, |i| t0 + i as i64)).unwrap();
    let m = store.maintain(SystemTime::now()).unwrap();
    assert_eq!(m.rotated, 0);
    assert_eq!(fs::metadata(&segs[0]).unwrap().len(), seg_len);
    store
        .maintain(SystemTime::now() + Duration::from_secs(11))
        .unwrap();
    assert!(fs::metadata(&segs[0]).unwrap().len() > seg_len);
    assert_eq!(wal_len(), 16);
    let (lines, s) = stats(&tmp.0, &Query::default());
    assert_eq!(seqs(&lines), (0..13).collect::<Vec<_>>());
    assert_eq!(s.blocks_read, 2);
}

#[test]
fn a_torn_segment_tail_and_wal_garbage_are_cut_at_open() {
    let tmp = TempDir::new("torn");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    let store = Store::open(o.clone()).unwrap();
    let web1 = store.host("web1").unwrap();
    for b in 0..6 {
        web1.append(&batch("web1", b * 10..b * 10 + 10, |i| i as i64))
            .unwrap();
    }
    web1.append(&batch("web1", 60..65, |i| i as i64)).unwrap();
    drop(web1);
    drop(store); // a kill: no flush
    let dir = tmp.0.join("web1");
    let seg = files(&dir, "seg").remove(0);
    let len = fs::metadata(&seg).unwrap().len();
    // Cut the last block (seqs 50..60) in the middle; garbage after the WAL's records.
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let mut wal = fs::read(dir.join("wal")).unwrap();
    wal.extend_from_slice(b"\x05\x00\x00\x00garbage garbage garbage garbage");
    fs::write(dir.join("wal"), &wal).unwrap();
    // A reader copes before any recovery: it stops at the torn block.
    let expected: Vec<u64> = (0..50).chain(60..65).collect();
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), expected);

    let store = Store::open(o).unwrap();
    let lines = all(&tmp.0, &Query::default());
    assert_eq!(seqs(&lines), expected);
    for l in &lines {
        assert_eq!(l.message, msg("web1", l.seq).as_bytes());
    }
    let web1 = store.host("web1").unwrap();
    web1.append(&batch("web1", 65..67, |i| i as i64)).unwrap();
    let expected: Vec<u64> = (0..50).chain(60..67).collect();
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), expected);
    // And again through blocks only.
    store.flush().unwrap();
    drop(store);
    let _store = Store::open(options(&tmp.0)).unwrap();
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), expected);
}

#[test]
fn a_crash_between_block_write_and_wal_truncation_duplicates_nothing() {
    let tmp = TempDir::new("dup");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    let store = Store::open(o.clone()).unwrap();
    let web1 = store.host("web1").unwrap();
    let dir = tmp.0.join("web1");
    web1.append(&batch("web1", 0..7, |i| i as i64)).unwrap();
    let before = fs::read(dir.join("wal")).unwrap();
    web1.append(&batch("web1", 7..10, |i| i as i64)).unwrap();
    assert_eq!(files(&dir, "seg").len(), 1);
    drop(web1);
    drop(store);
    // The WAL as if the truncation never happened: records 0..7, all in the block too.
    fs::write(dir.join("wal"), &before).unwrap();
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), (0..10).collect::<Vec<_>>());
    let store = Store::open(o).unwrap();
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), (0..10).collect::<Vec<_>>());
    assert_eq!(fs::metadata(dir.join("wal")).unwrap().len(), 16);
    store
        .host("web1")
        .unwrap()
        .append(&batch("web1", 10..11, |i| i as i64))
        .unwrap();
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), (0..11).collect::<Vec<_>>());
}

#[test]
fn segments_rotate_by_size_and_by_age_with_indexes() {
    let tmp = TempDir::new("rotate");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    o.segment_size = 300;
    let store = Store::open(o).unwrap();
    let web1 = store.host("web1").unwrap();
    let t0 = now_us();
    for b in 0..8 {
        web1.append(&batch("web1", b * 10..b * 10 + 10, |i| t0 + i as i64))
            .unwrap();
    }
    let dir = tmp.0.join("web1");
    let segs = files(&dir, "seg");
    let idxs = files(&dir, "idx");
    assert!(segs.len() >= 3, "{segs:?}");
    // Every segment is sealed once past segment_size; each is named by its first seq.
    assert_eq!(idxs.len(), segs.len());
    assert!(segs[0].ends_with("00000000000000000000.seg"));
    for s in &segs {
        let seq0: u64 = s.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(seq0 % 10, 0);
    }
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), (0..80).collect::<Vec<_>>());
    let summary = query::hosts(&tmp.0).unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].segments, segs.len());
    assert_eq!(summary[0].lines, 80);
    assert_eq!(
        (summary[0].first_us, summary[0].last_us),
        (Some(t0), Some(t0 + 79))
    );

    // By age: a big segment_size, one segment, sealed when its first record is an hour old.
    let tmp = TempDir::new("rotate-age");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    let store = Store::open(o).unwrap();
    let web1 = store.host("web1").unwrap();
    let dir = tmp.0.join("web1");
    web1.append(&batch("web1", 0..10, |i| t0 + i as i64)).unwrap();
    assert_eq!(store.maintain(at(t0 + HOUR_US / 2)).unwrap().rotated, 0);
    assert!(files(&dir, "idx").is_empty());
    web1.append(&batch("web1", 10..20, |i| t0 + i as i64)).unwrap();
    assert_eq!(store.maintain(at(t0 + HOUR_US + 1)).unwrap().rotated, 1);
    assert_eq!(files(&dir, "idx").len(), 1);
    web1.append(&batch("web1", 20..30, |i| t0 + HOUR_US + i as i64))
        .unwrap();
    let segs = files(&dir, "seg");
    assert_eq!(segs.len(), 2);
    assert!(segs[1].ends_with("00000000000000000020.seg"));
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), (0..30).collect::<Vec<_>>());
}

/// One sealed segment per batch of 10 at `times`, for host `name`.
fn sealed_segments(store: &Store, name: &str, first: u64, times: &[i64]) {
    let h = store.host(name).unwrap();
    for (k, &t) in times.iter().enumerate() {
        let s = first + k as u64 * 10;
        h.append(&batch(name, s..s + 10, |i| t + i as i64)).unwrap();
    }
}

#[test]
fn retention_by_age_deletes_only_the_old_segments() {
    let tmp = TempDir::new("retention");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    o.segment_size = 1;
    o.retention = Some(Duration::from_secs(2 * 3600));
    let store = Store::open(o.clone()).unwrap();
    let t0 = now_us() - 10 * HOUR_US;
    sealed_segments(
        &store,
        "web1",
        0,
        &(0..6).map(|h| t0 + h * HOUR_US).collect::<Vec<_>>(),
    );
    let dir = tmp.0.join("web1");
    assert_eq!(files(&dir, "seg").len(), 6);
    let m = store.maintain(at(t0 + 5 * HOUR_US + 60_000_000)).unwrap();
    // Cutoff: t0 + 3h + 1min: the segments of 0h, 1h, 2h and 3h go.
    let names: Vec<String> = m
        .deleted_segments
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "00000000000000000000.seg",
            "00000000000000000010.seg",
            "00000000000000000020.seg",
            "00000000000000000030.seg"
        ]
    );
    assert!(m.deleted_bytes > 0);
    assert_eq!(files(&dir, "seg").len(), 2);
    assert_eq!(files(&dir, "idx").len(), 2);
    assert_eq!(
        seqs(&all(&tmp.0, &Query::default())),
        (40..60).collect::<Vec<_>>()
    );
    // Everything old: the host keeps its directory and its seqs.
    let m = store.maintain(at(t0 + 20 * HOUR_US)).unwrap();
    assert_eq!(m.deleted_segments.len(), 2);
    assert!(files(&dir, "seg").is_empty());
    assert!(all(&tmp.0, &Query::default()).is_empty());
    drop(store);
    let store = Store::open(o).unwrap();
    store
        .host("web1")
        .unwrap()
        .append(&batch("web1", 60..61, |i| t0 + i as i64))
        .unwrap();
    assert_eq!(seqs(&all(&tmp.0, &Query::default())), [60]);
}

#[test]
fn max_size_deletes_the_globally_oldest_sealed_segments_never_the_active_one() {
    let tmp = TempDir::new("maxsize");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    o.segment_age = Duration::from_secs(1000 * 3600);
    o.segment_size = 1;
    let store = Store::open(o.clone()).unwrap();
    let t0 = now_us() - 10 * HOUR_US;
    // a: 0h 2h 4h 6h; b: 1h 3h 5h; all sealed.
    sealed_segments(
        &store,
        "a",
        0,
        &[t0, t0 + 2 * HOUR_US, t0 + 4 * HOUR_US, t0 + 6 * HOUR_US],
    );
    sealed_segments(
        &store,
        "b",
        0,
        &[t0 + HOUR_US, t0 + 3 * HOUR_US, t0 + 5 * HOUR_US],
    );
    drop(store);
    // c: an active segment older than everything (segment_size large for it).
    o.segment_size = 1 << 30;
    let store = Store::open(o.clone()).unwrap();
    sealed_segments(&store, "c", 0, &[t0 - HOUR_US]);
    let size = |host: &str, seq0: u64| {
        fs::metadata(tmp.0.join(host).join(format!("{seq0:020}.seg")))
            .unwrap()
            .len()
    };
    // Keep a@4h, b@5h, a@6h and the active c; the rest (oldest first) must go.
    let keep = size("a", 20) + size("b", 20) + size("a", 30) + size("c", 0);
    drop(store);
    o.max_size = Some(keep);
    let store = Store::open(o).unwrap();
    let m = store.maintain(SystemTime::now()).unwrap();
    let mut deleted: Vec<String> = m
        .deleted_segments
        .iter()
        .map(|p| {
            let host = p
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            format!(
                "{host}/{}",
                p.file_stem().unwrap().to_string_lossy().trim_start_matches('0')
            )
        })
        .collect();
    // In order of age: a@0h, b@1h, a@2h, b@3h.
    assert_eq!(deleted, ["a/", "b/", "a/10", "b/10"]);
    deleted.clear();
    let lines = all(&tmp.0, &Query::default());
    let got: Vec<(String, u64)> = lines.iter().map(|l| (l.host.to_string(), l.seq)).collect();
    let mut expected: Vec<(String, u64)> = (0..10).map(|i| ("c".to_string(), i)).collect();
    expected.extend((20..30).map(|i| ("a".to_string(), i)));
    expected.extend((20..30).map(|i| ("b".to_string(), i)));
    expected.extend((30..40).map(|i| ("a".to_string(), i)));
    assert_eq!(got, expected);
    // Under the limit: nothing more.
    assert!(
        store
            .maintain(SystemTime::now())
            .unwrap()
            .deleted_segments
            .is_empty()
    );
}

#[test]
fn since_and_until_read_only_the_segments_and_blocks_in_range() {
    let tmp = TempDir::new("range");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    o.segment_size = 1;
    let store = Store::open(o).unwrap();
    let t0 = now_us() - 10 * HOUR_US;
    sealed_segments(
        &store,
        "web1",
        0,
        &(0..6).map(|h| t0 + h * HOUR_US).collect::<Vec<_>>(),
    );
    let h = store.host("web1").unwrap();
    h.append(&batch("web1", 60..63, |i| t0 + 6 * HOUR_US + i as i64))
        .unwrap(); // WAL only
    let (lines, s) = stats(&tmp.0, &Query::default());
    assert_eq!(lines.len(), 63);
    assert_eq!((s.segments_opened, s.blocks_read, s.indexes_read), (6, 6, 6));
    // [2h, 4h): the segments of 2h and 3h only.
    let q = Query {
        since_us: Some(t0 + 2 * HOUR_US),
        until_us: Some(t0 + 4 * HOUR_US),
        ..Query::default()
    };
    let (lines, s) = stats(&tmp.0, &q);
    assert_eq!(seqs(&lines), (20..40).collect::<Vec<_>>());
    assert_eq!((s.segments_opened, s.blocks_read), (2, 2));
    // Within a block, record by record: since = the 5th record of the 1h segment.
    let q = Query {
        since_us: Some(t0 + HOUR_US + 15),
        until_us: Some(t0 + 2 * HOUR_US + 22),
        ..Query::default()
    };
    let (lines, s) = stats(&tmp.0, &q);
    assert_eq!(seqs(&lines), (15..22).collect::<Vec<_>>());
    assert_eq!(s.blocks_read, 2);
    // The WAL's lines are filtered too; no block is read for them.
    let q = Query {
        since_us: Some(t0 + 6 * HOUR_US + 61),
        ..Query::default()
    };
    let (lines, s) = stats(&tmp.0, &q);
    assert_eq!(seqs(&lines), [61, 62]);
    assert_eq!((s.segments_opened, s.blocks_read), (0, 0));
    // Nothing in range: nothing read.
    let q = Query {
        until_us: Some(t0),
        ..Query::default()
    };
    let (lines, s) = stats(&tmp.0, &q);
    assert!(lines.is_empty());
    assert_eq!((s.segments_opened, s.blocks_read), (0, 0));
}

#[test]
fn grep_matches_records_not_the_joined_text() {
    let tmp = TempDir::new("grep");
    let mut o = options(&tmp.0);
    o.block_size = 1 << 20;
    let store = Store::open(o).unwrap();
    let h = store.host("web1").unwrap();
    let mut b = Batch::new();
    let texts: [&[u8]; 8] = [
        b"<13>alpha foo",
        b"bar omega",
        b"<13>needle in a haystack",
        b"no match here",
        b"<14>NEEDLE twice needle",
        b"a line\nwith a newline needle",
        b"ends with z",
        b"a and z",
    ];
    for (i, t) in texts.iter().enumerate() {
        b.push(i as i64, Flags::default(), t);
    }
    h.append(&b).unwrap();
    let grep = |re: &str| {
        let q = Query {
            grep: Some(Regex::new(re).unwrap()),
            ..Query::default()
        };
        seqs(&all(&tmp.0, &q))
    };
    // From the WAL, then from a block: the same answers.
    for round in 0..2 {
        assert_eq!(grep("needle"), [2, 4, 5], "round {round}");
        assert_eq!(grep("(?i)needle"), [2, 4, 5]);
        // A match across the separator between two records is not a match.
        assert_eq!(grep("foo\nbar"), Vec::<u64>::new());
        assert_eq!(grep("(?s)foo.bar"), Vec::<u64>::new());
        assert_eq!(grep("(?s)a.*z"), [7]);
        // Anchors are per record.
        assert_eq!(grep("^<13>"), [0, 2]);
        assert_eq!(grep("needle$"), [4, 5]);
        assert_eq!(grep("(?m)^with"), [5]);
        assert_eq!(grep(r"\bomega\b"), [1]);
        assert_eq!(grep("z$"), [6, 7]);
        store.flush().unwrap();
    }
}

#[test]
fn a_rare_word_skips_blocks_by_their_filter_without_missing_a_match() {
    let tmp = TempDir::new("filter");
    let mut o = options(&tmp.0);
    o.block_size = 4096;
    let store = Store::open(o).unwrap();
    let h = store.host("web1").unwrap();
    let mut b = Batch::new();
    for i in 0..3000u64 {
        let m = match i {
            1234 => "<13>GET /x from 10.0.0.11 xyzzy".to_string(),
            2345 => "<13>Connection Refused by 10.0.0.11".to_string(),
            _ => format!("<13>GET /index.html {i} ok"),
        };
        b.clear();
        b.push(i as i64, Flags::default(), m.as_bytes());
        h.append(&b).unwrap();
    }
    store.flush().unwrap();
    let grep = |re: Regex| {
        let (lines, s) = stats(
            &tmp.0,
            &Query {
                grep: Some(re),
                ..Query::default()
            },
        );
        (seqs(&lines), s)
    };
    let (found, s) = grep(Regex::new("xyzzy").unwrap());
    assert_eq!(found, [1234]);
    assert!(s.blocks_skipped > 10 * s.blocks_read, "{s:?}");
    let (found, s) = grep(Regex::new(r"10\.0\.0\.11").unwrap());
    assert_eq!(found, [1234, 2345]);
    assert!(s.blocks_skipped > 0, "{s:?}");
    let (found, s) = grep(Regex::new("xyzzy|Refused").unwrap());
    assert_eq!(found, [1234, 2345]);
    assert!(s.blocks_skipped > 0, "{s:?}");
    // Flags the pattern does not show turn the filter off, never hide a match.
    let re = regex::bytes::RegexBuilder::new("connection refused")
        .case_insensitive(true)
        .build()
        .unwrap();
    let (found, s) = grep(re);
    assert_eq!(found, [2345]);
    assert_eq!(s.blocks_skipped, 0);
    let re = regex::bytes::RegexBuilder::new("Refu sed")
        .ignore_whitespace(true)
        .build()
        .unwrap();
    assert_eq!(grep(re).0, [2345]);
    let re = regex::bytes::RegexBuilder::new("Refused#comment")
        .ignore_whitespace(true)
        .build()
        .unwrap();
    assert_eq!(grep(re).0, [2345]);
    // Not a plain literal: every block in range is read.
    let (found, s) = grep(Regex::new("xyz+y").unwrap());
    assert_eq!(found, [1234]);
    assert_eq!(s.blocks_skipped, 0);
}

#[test]
fn last_n_across_hosts_is_the_end_of_the_merge_oldest_first() {
    let tmp = TempDir::new("last");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    let store = Store::open(o).unwrap();
    // a at even times, b at odd times; 45 lines each (4 blocks + 5 in the WAL).
    let a = store.host("a").unwrap();
    let b = store.host("b").unwrap();
    for k in 0..9 {
        a.append(&batch("a", k * 5..k * 5 + 5, |i| 2 * i as i64)).unwrap();
        b.append(&batch("b", k * 5..k * 5 + 5, |i| 2 * i as i64 + 1))
            .unwrap();
    }
    let q = Query {
        last: Some(7),
        ..Query::default()
    };
    let got: Vec<(String, u64)> = all(&tmp.0, &q)
        .iter()
        .map(|l| (l.host.to_string(), l.seq))
        .collect();
    let expected: Vec<(String, u64)> = [
        ("b", 41),
        ("a", 42),
        ("b", 42),
        ("a", 43),
        ("b", 43),
        ("a", 44),
        ("b", 44),
    ]
    .iter()
    .map(|(h, s)| (h.to_string(), *s))
    .collect();
    assert_eq!(got, expected);
    // With grep: the last 3 lines whose seq ends in 3, over blocks.
    let q = Query {
        last: Some(3),
        grep: Some(Regex::new("message 0000[0-9]3").unwrap()),
        ..Query::default()
    };
    let got: Vec<(String, u64)> = all(&tmp.0, &q)
        .iter()
        .map(|l| (l.host.to_string(), l.seq))
        .collect();
    assert_eq!(
        got,
        [
            ("b".to_string(), 33),
            ("a".to_string(), 43),
            ("b".to_string(), 43)
        ]
    );
    // The last 1000: everything, merged.
    let q = Query {
        last: Some(1000),
        ..Query::default()
    };
    assert_eq!(all(&tmp.0, &q), all(&tmp.0, &Query::default()));
    // The last 0: nothing.
    assert!(
        all(
            &tmp.0,
            &Query {
                last: Some(0),
                ..Query::default()
            }
        )
        .is_empty()
    );
}

#[test]
fn hosts_are_merged_by_received_time_and_can_be_chosen() {
    let tmp = TempDir::new("merge");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    let store = Store::open(o).unwrap();
    let hosts = ["10.0.0.11", "::1", "web1"];
    // Host k's line i at time 3i + k; blocks and WAL mixed.
    for round in 0..5u64 {
        for (k, name) in hosts.iter().enumerate() {
            let h = store.host(name).unwrap();
            h.append(&batch(name, round * 7..round * 7 + 7, |i| {
                3 * i as i64 + k as i64
            }))
            .unwrap();
        }
    }
    let lines = all(&tmp.0, &Query::default());
    assert_eq!(lines.len(), 105);
    for (n, l) in lines.iter().enumerate() {
        assert_eq!(&*l.host, hosts[n % 3]);
        assert_eq!(l.seq, n as u64 / 3);
        assert_eq!(l.received_us, n as i64);
        assert_eq!(l.message, msg(hosts[n % 3], l.seq).as_bytes());
    }
    let q = Query {
        hosts: vec!["web1".into(), "::1".into(), "nosuch".into()],
        ..Query::default()
    };
    let got: Vec<String> = all(&tmp.0, &q).iter().map(|l| l.host.to_string()).collect();
    assert_eq!(got.len(), 70);
    assert_eq!(got[..4], ["::1", "web1", "::1", "web1"]);
    // A visitor can stop the search.
    let mut n = 0;
    query::search(&tmp.0, &Query::default(), |_| {
        n += 1;
        if n == 10 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(n, 10);
    let summary = query::hosts(&tmp.0).unwrap();
    let names: Vec<&str> = summary.iter().map(|s| s.host.as_str()).collect();
    assert_eq!(names, ["10.0.0.11", "::1", "web1"]);
    assert_eq!(summary[0].lines, 35);
    assert_eq!(summary[0].first_us, Some(0));
    assert_eq!(summary[2].last_us, Some(3 * 34 + 2));
    assert!(summary[0].disk_bytes > 0);
    assert_eq!(summary[0].segments, 1);
}

#[test]
fn search_after_gives_only_new_lines_and_is_cheap_when_nothing_is_new() {
    let tmp = TempDir::new("follow");
    let mut o = options(&tmp.0);
    o.block_size = raw(10);
    let store = Store::open(o).unwrap();
    let web1 = store.host("web1").unwrap();
    web1.append(&batch("web1", 0..25, |i| i as i64)).unwrap();
    let q = Query {
        grep: Some(Regex::new("message").unwrap()),
        ..Query::default()
    };
    let mut lines = Vec::new();
    let mut cursor = query::search(&tmp.0, &q, |l| {
        lines.push(l.seq);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(lines.len(), 25);
    assert_eq!(cursor.next_seq("web1"), Some(25));
    let follow = |cursor: &mut Cursor| {
        let mut got = Vec::new();
        let (next, s) = query::search_stats(&tmp.0, &q, Some(cursor), |l| {
            got.push((l.host.to_string(), l.seq));
            ControlFlow::Continue(())
        })
        .unwrap();
        *cursor = next;
        (got, s)
    };
    // Nothing new: nothing read.
    let (got, s) = follow(&mut cursor);
    assert!(got.is_empty());
    assert_eq!((s.hosts_unchanged, s.blocks_read, s.segments_opened), (1, 0, 0));
    // New lines in the WAL, then through a block, then a new host.
    web1.append(&batch("web1", 25..28, |i| i as i64)).unwrap();
    let (got, _) = follow(&mut cursor);
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [25, 26, 27]);
    web1.append(&batch("web1", 28..40, |i| i as i64)).unwrap();
    let (got, s) = follow(&mut cursor);
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        (28..40).collect::<Vec<_>>()
    );
    assert!(s.blocks_read <= 1, "{s:?}");
    let (got, _) = follow(&mut cursor);
    assert!(got.is_empty());
    store
        .host("web2")
        .unwrap()
        .append(&batch("web2", 0..2, |i| 100 + i as i64))
        .unwrap();
    web1.append(&batch("web1", 40..41, |i| 50 + i as i64)).unwrap();
    let (got, _) = follow(&mut cursor);
    assert_eq!(
        got,
        [
            ("web1".to_string(), 40),
            ("web2".to_string(), 0),
            ("web2".to_string(), 1)
        ]
    );
    // search_after itself.
    web1.append(&batch("web1", 41..43, |i| 200 + i as i64)).unwrap();
    let mut got = Vec::new();
    query::search_after(&tmp.0, &q, &mut cursor, |l| {
        got.push(l.seq);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(got, [41, 42]);
    assert_eq!(cursor.next_seq("web1"), Some(43));
    assert_eq!(cursor.next_seq("web2"), Some(2));
    // A cursor for a host with no match still moves past its lines.
    let q = Query {
        grep: Some(Regex::new("nothing matches this").unwrap()),
        ..Query::default()
    };
    let cursor = query::search(&tmp.0, &q, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(cursor.next_seq("web1"), Some(43));
    assert_eq!(cursor.next_seq("web2"), Some(2));
}

#[test]
fn a_missing_directory_is_not_found_and_names_it() {
    let tmp = TempDir::new("missing");
    let dir = tmp.0.join("nope");
    let err = query::search(&dir, &Query::default(), |_| ControlFlow::Continue(())).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
    let err = query::hosts(&dir).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
    // An unknown host yields nothing.
    let _store = Store::open(options(&tmp.0)).unwrap();
    assert!(all(&tmp.0, &host("nosuch")).is_empty());
}

#[test]
fn concurrent_appends_get_unique_seqs_and_lose_nothing() {
    let tmp = TempDir::new("concurrent");
    let mut o = options(&tmp.0);
    o.block_size = 4096;
    o.segment_size = 4096;
    let store = Arc::new(Store::open(o).unwrap());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A reader at the same time (as `gatehouse logs` would be): it always sees a prefix of each log.
    let reader = {
        let (dir, done) = (tmp.0.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || rounds == 0 {
                for name in ["even", "odd"] {
                    let got = seqs(&all(&dir, &host(name)));
                    assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
                }
                rounds += 1;
            }
            rounds
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let name = if t % 2 == 0 { "even" } else { "odd" };
                let h = store.host(name).unwrap();
                for k in 0..100u64 {
                    let mut b = Batch::new();
                    for j in 0..5 {
                        b.push(
                            now_us(),
                            Flags::default(),
                            format!("task {t} batch {k} line {j}").as_bytes(),
                        );
                    }
                    h.append(&b).unwrap();
                    if k % 25 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    for name in ["even", "odd"] {
        let lines = all(&tmp.0, &host(name));
        assert_eq!(seqs(&lines), (0..2000).collect::<Vec<_>>());
        // Within a task, in order.
        let mut per_task = std::collections::HashMap::<String, Vec<String>>::new();
        for l in &lines {
            let s = String::from_utf8(l.message.clone()).unwrap();
            let task = s.split(" batch").next().unwrap().to_string();
            per_task.entry(task).or_default().push(s);
        }
        for (_, v) in per_task {
            assert_eq!(v.len(), 500);
            let expected: Vec<String> = (0..500)
                .map(|n| format!("{} batch {} line {}", &v[0][..6], n / 5, n % 5))
                .collect();
            assert_eq!(v, expected);
        }
    }
    assert!(files(&tmp.0.join("even"), "seg").len() > 1);
    store.flush().unwrap();
}

#[test]
fn the_store_is_shared_between_tasks() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
    check::<gatehouse_logd::store::HostLog>();
    check::<Cursor>();
    check::<Query>();
}
