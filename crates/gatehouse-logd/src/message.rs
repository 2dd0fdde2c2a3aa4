//! What a stored message is: [`classify`] sets its flags at ingest (it runs
//! once per message, so it is cheap: one UTF-8 check and one syslog_loose
//! parse, no allocation for UTF-8 input), and [`write_text`] and [`to_json`]
//! show it to queries.
//!
//! syslog_loose is loose: a missing `<PRI>` is fine with it, and anything it
//! cannot parse comes back as a message with no header. So a message is
//! parsed here only when it has a `<PRI>` with a valid value *and*
//! syslog_loose recognises an RFC 5424 or RFC 3164 header after it (its exact
//! mode: a 3164 header needs a timestamp).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use syslog_loose::{Message, Variant};

use crate::{Flags, Line};

/// The flags a message gets from its bytes: [`Flags::BINARY`] when it is not
/// UTF-8 (it is then parsed lossily decoded), [`Flags::UNPARSED`] when it has
/// no syslog header.
pub fn classify(message: &[u8]) -> Flags {
    classify_frame(message, false)
}

/// [`classify`] for a frame that may have been cut at `max_message`: a UTF-8
/// character cut in two at the end does not make it binary.
pub(crate) fn classify_frame(message: &[u8], truncated: bool) -> Flags {
    match std::str::from_utf8(message) {
        Ok(text) => header_flags(text),
        Err(error) if truncated && error.error_len().is_none() => {
            // Valid up to a character cut at the end.
            let text = std::str::from_utf8(&message[..error.valid_up_to()]).unwrap_or_default();
            header_flags(text)
        }
        Err(_) => Flags::BINARY | header_flags(&String::from_utf8_lossy(message)),
    }
}

fn header_flags(text: &str) -> Flags {
    // Most garbage fails here, before syslog_loose sees it.
    if !text.trim_start().starts_with('<') {
        return Flags::UNPARSED;
    }
    if fast_header(text) {
        return Flags::default();
    }
    // Only whether it parses matters here: a leap year accepts every date.
    match parse(text, |_| 2024) {
        Some(_) => Flags::default(),
        None => Flags::UNPARSED,
    }
}

/// Whether `text` starts with one of the common headers in a form syslog_loose
/// certainly accepts: `<PRI>` then an RFC 3164 timestamp (`Nov 25 04:19:26`)
/// or an RFC 3339 one (rsyslog's forward format), or an RFC 5424 header with
/// plain fields. syslog_loose takes about 800 ns a
/// message (chrono, and an allocation for the month name); this takes a few
/// tens. Anything else goes to syslog_loose. (One difference: syslog_loose
/// reads a 3164 time in the local zone and rejects one in a DST gap; this
/// accepts it.)
fn fast_header(text: &str) -> bool {
    let b = text.trim().as_bytes();
    let Some(mut i) = fast_pri(b) else {
        return false;
    };
    if b.get(i..i + 2) == Some(b"1 ") {
        // RFC 5424: VERSION SP TIMESTAMP SP HOSTNAME SP APP SP PROCID SP MSGID SP "-"
        i += 2;
        i = if b.get(i) == Some(&b'-') {
            i + 1
        } else {
            match rfc3339(b, i) {
                Some(end) => end,
                None => return false,
            }
        };
        for _ in 0..4 {
            if b.get(i) != Some(&b' ') {
                return false;
            }
            let start = i + 1;
            i = start;
            while b
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
            {
                i += 1;
            }
            if i == start {
                return false;
            }
        }
        // Structured data: "-", or elements, which syslog_loose takes as long as
        // the first is closed (an element it cannot read is skipped).
        return match b.get(i..i + 2) {
            Some(b" -") => matches!(b.get(i + 2), None | Some(b' ')),
            Some(b" [") => b[i + 2..].contains(&b']'),
            _ => false,
        };
    }
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        // rsyslog's RSYSLOG_ForwardFormat: an RFC 3339 time, then a space.
        return rfc3339(b, i).is_some_and(|end| b.get(end) == Some(&b' '));
    }
    // Mmm dd hh:mm:ss
    let Some(month) = b.get(i..i + 3).and_then(|m| {
        let m = [
            m[0].to_ascii_lowercase(),
            m[1].to_ascii_lowercase(),
            m[2].to_ascii_lowercase(),
        ];
        MONTHS.iter().position(|name| name == &m)
    }) else {
        return false;
    };
    i += 3;
    if b.get(i) != Some(&b' ') {
        return false;
    }
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let day_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) && i - day_start < 3 {
        i += 1;
    }
    let Some(day) = number(b, day_start, i - day_start) else {
        return false;
    };
    if i - day_start > 2 || day == 0 || day > days_in_month(2024, month as u32 + 1) || b.get(i) != Some(&b' ')
    {
        return false;
    }
    fast_time(b, i + 1).is_some_and(|end| !b.get(end).is_some_and(u8::is_ascii_digit))
}

const MONTHS: [[u8; 3]; 12] = [
    *b"jan", *b"feb", *b"mar", *b"apr", *b"may", *b"jun", *b"jul", *b"aug", *b"sep", *b"oct", *b"nov",
    *b"dec",
];

/// `<PRI>` with PRI 0..=191 without leading zeros: the index after `>`.
fn fast_pri(b: &[u8]) -> Option<usize> {
    if b.first() != Some(&b'<') {
        return None;
    }
    let end = (1..5).find(|&i| b.get(i) == Some(&b'>'))?;
    let digits = end - 1;
    let pri = number(b, 1, digits)?;
    (digits > 0 && (digits == 1 || b[1] != b'0') && pri <= 191).then_some(end + 1)
}

/// The value of `len` ASCII digits at `at`.
fn number(b: &[u8], at: usize, len: usize) -> Option<u32> {
    let digits = b.get(at..at + len)?;
    if len == 0 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// `HH:MM:SS` at `at`: the index after it.
fn fast_time(b: &[u8], at: usize) -> Option<usize> {
    let (hour, minute, second) = (number(b, at, 2)?, number(b, at + 3, 2)?, number(b, at + 6, 2)?);
    let colons = b.get(at + 2) == Some(&b':') && b.get(at + 5) == Some(&b':');
    (colons && hour < 24 && minute < 60 && second < 60).then_some(at + 8)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` at `at`: the index after it.
fn rfc3339(b: &[u8], at: usize) -> Option<usize> {
    let (year, month, day) = (number(b, at, 4)?, number(b, at + 5, 2)?, number(b, at + 8, 2)?);
    if b.get(at + 4) != Some(&b'-') || b.get(at + 7) != Some(&b'-') || b.get(at + 10) != Some(&b'T') {
        return None;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year as i32, month) {
        return None;
    }
    let mut i = fast_time(b, at + 11)?;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 9 {
            return None;
        }
    }
    match b.get(i)? {
        b'Z' => Some(i + 1),
        b'+' | b'-' => {
            let (hours, minutes) = (number(b, i + 1, 2)?, number(b, i + 4, 2)?);
            (b.get(i + 3) == Some(&b':') && hours < 24 && minutes < 60).then_some(i + 6)
        }
        _ => None,
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// syslog_loose's parse, `None` unless there is a valid `<PRI>` and a header.
fn parse(
    text: &str,
    get_year: impl FnOnce((u32, u32, u32, u32, u32)) -> i32 + Copy,
) -> Option<Message<&str>> {
    if !text.trim_start().starts_with('<') {
        return None;
    }
    let message = syslog_loose::parse_message_with_year_exact(text, get_year, Variant::Either).ok()?;
    message.facility.is_some().then_some(message)
}

/// The text of a line, `HOST | TIME APP[PID]: MSG` (TIME: when it was
/// received, RFC 3339 UTC); structured data is left to the JSON form. A line without a syslog header, or binary, is
/// `HOST | TIME RAW`. Control characters are escaped as `\xNN`, so a line is
/// always one line.
pub fn write_text(line: &Line, out: &mut String) {
    out.push_str(&line.host);
    out.push_str(" | ");
    let _ = write!(
        out,
        "{}",
        humantime::format_rfc3339_seconds(system_time(line.received_us))
    );
    out.push(' ');
    let raw = String::from_utf8_lossy(&line.message);
    let parsed = if line.flags.contains(Flags::UNPARSED) || line.flags.contains(Flags::BINARY) {
        None
    } else {
        parse(&raw, year_guess(line.received_us))
    };
    let Some(message) = parsed else {
        push_escaped(out, &raw);
        return;
    };
    if let Some(app) = message.appname {
        push_escaped(out, app);
        if let Some(procid) = &message.procid {
            out.push('[');
            push_escaped(out, &procid.to_string());
            out.push(']');
        }
        out.push_str(": ");
    }
    // Structured data stays out of the text, as in rsyslog's traditional
    // file format: logger adds `[timeQuality ...]` to every line, which
    // would bury the message. `--json` has it.
    push_escaped(out, message.msg);
}

/// A line as JSON: always `host`, `seq`, `received` (RFC 3339, microseconds),
/// `flags` (names), `raw` (the whole message, lossily decoded) and `message`
/// (the body after the header when it parsed, else the whole message); when
/// it parsed also `facility`, `severity`, `timestamp` (the header's, RFC
/// 3339; a 3164 one gets its year from `received`), `hostname` (the
/// header's), `app`, `procid`, `msgid` and `structured_data` (`{id: {name:
/// value}}`), each only when present.
pub fn to_json(line: &Line) -> Value {
    let raw = String::from_utf8_lossy(&line.message);
    let mut object = Map::new();
    object.insert("host".into(), json!(&*line.host));
    object.insert("seq".into(), json!(line.seq));
    object.insert(
        "received".into(),
        json!(humantime::format_rfc3339_micros(system_time(line.received_us)).to_string()),
    );
    object.insert("flags".into(), json!(line.flags.names()));
    let parsed = if line.flags.contains(Flags::UNPARSED) {
        None
    } else {
        parse(&raw, year_guess(line.received_us))
    };
    match parsed {
        Some(message) => {
            if let Some(facility) = message.facility {
                object.insert("facility".into(), json!(facility.as_str()));
            }
            if let Some(severity) = message.severity {
                object.insert("severity".into(), json!(severity.as_str()));
            }
            if let Some(timestamp) = message.timestamp {
                object.insert("timestamp".into(), json!(timestamp.to_rfc3339()));
            }
            let fields = [
                ("hostname", message.hostname),
                ("app", message.appname),
                ("msgid", message.msgid),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    object.insert(name.into(), json!(value));
                }
            }
            if let Some(procid) = &message.procid {
                object.insert("procid".into(), json!(procid.to_string()));
            }
            if !message.structured_data.is_empty() {
                let mut data = Map::new();
                for element in &message.structured_data {
                    let params: Map<String, Value> = element
                        .params()
                        .map(|(name, value)| (name.to_string(), json!(value)))
                        .collect();
                    data.insert(element.id.to_string(), Value::Object(params));
                }
                object.insert("structured_data".into(), Value::Object(data));
            }
            object.insert("message".into(), json!(message.msg));
        }
        None => {
            object.insert("message".into(), json!(&*raw));
        }
    }
    object.insert("raw".into(), json!(&*raw));
    Value::Object(object)
}

fn system_time(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// The year for a 3164 timestamp (which has none) received at `received_us`.
fn year_guess(received_us: i64) -> impl FnOnce((u32, u32, u32, u32, u32)) -> i32 + Copy {
    use chrono::Datelike;
    let received = chrono::DateTime::from_timestamp_micros(received_us.max(0)).unwrap_or_default();
    let (year, month) = (received.year(), received.month());
    move |(header_month, ..)| if header_month > month + 1 { year - 1 } else { year }
}

/// Appends `text` with control characters (C0, DEL, C1) as `\xNN`.
fn push_escaped(out: &mut String, text: &str) {
    for ch in text.chars() {
        if ch.is_control() {
            let _ = write!(out, "\\x{:02x}", ch as u32);
        } else {
            out.push(ch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = r#"<190>Nov 25 04:19:26 web1 nginx: 10.0.0.1 - - [25/Nov/2026:04:19:26 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/7.88.1""#;
    const LOGGER_5424: &str = r#"<13>1 2026-11-25T04:19:26.123456+00:00 web1 root 1234 - [timeQuality tzKnown="1" isSynced="0"] hello"#;
    const LOGGER_3164: &str = "<13>Nov 25 04:19:26 root[1234]: hello";
    // rsyslog's RSYSLOG_ForwardFormat and RSYSLOG_TraditionalForwardFormat
    // and RSYSLOG_SyslogProtocol23Format, as omfwd sends them.
    const RSYSLOG_FORWARD: &str =
        "<30>2026-11-25T04:19:26.123456+00:00 web1 sshd[812]: Accepted publickey for deploy";
    const RSYSLOG_TRADITIONAL: &str = "<30>Nov 25 04:19:26 web1 sshd[812]: Accepted publickey for deploy";
    const RSYSLOG_PROTOCOL23: &str =
        "<30>1 2026-11-25T04:19:26.123456+00:00 web1 sshd 812 - - Accepted publickey";

    // 2026-11-25T04:19:26.5Z
    const RECEIVED: i64 = 1_795_580_366_500_000;

    fn line(message: &[u8]) -> Line {
        Line {
            host: "web1.example".into(),
            seq: 7,
            received_us: RECEIVED,
            flags: classify(message),
            message: message.to_vec(),
        }
    }

    fn text(message: &[u8]) -> String {
        let mut out = String::new();
        write_text(&line(message), &mut out);
        out
    }

    #[test]
    fn real_senders_parse() {
        for message in [
            NGINX,
            LOGGER_5424,
            LOGGER_3164,
            RSYSLOG_FORWARD,
            RSYSLOG_TRADITIONAL,
            RSYSLOG_PROTOCOL23,
        ] {
            assert_eq!(classify(message.as_bytes()), Flags::default(), "{message}");
        }
        // syslog_loose accepts these; they have a header.
        assert_eq!(classify(b"<13>1 - - - - - -"), Flags::default());
        assert_eq!(
            classify(b"<13>Feb 29 00:00:00 host app: leap day"),
            Flags::default()
        );
    }

    #[test]
    fn garbage_is_unparsed() {
        for message in [
            &b"hello world"[..],
            b"Nov 25 04:19:26 web1 nginx: no pri",
            b"<13>no header at all",
            b"<999>Nov 25 04:19:26 web1 app: bad pri",
            b"<>Nov 25 04:19:26 x",
            b"<13",
            b"{\"json\": true}",
            b"",
        ] {
            assert_eq!(
                classify(message),
                Flags::UNPARSED,
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn binary_is_flagged_and_still_parsed() {
        assert_eq!(classify(b"<13>Nov 25 04:19:26 host app: caf\xe9"), Flags::BINARY);
        assert_eq!(classify(b"\x00\x01\xff\xfe"), Flags::BINARY | Flags::UNPARSED);
        // A NUL is valid UTF-8: not binary, just unparsed.
        assert_eq!(classify(b"a\x00b"), Flags::UNPARSED);
        // A character cut by truncation is not binary.
        let cut = "<13>Nov 25 04:19:26 host app: caf\u{e9}".as_bytes();
        let cut = &cut[..cut.len() - 1];
        assert_eq!(classify(cut), Flags::BINARY);
        assert_eq!(classify_frame(cut, true), Flags::default());
    }

    #[test]
    fn text_of_real_senders() {
        assert_eq!(
            text(NGINX.as_bytes()),
            r#"web1.example | 2026-11-25T04:19:26Z nginx: 10.0.0.1 - - [25/Nov/2026:04:19:26 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/7.88.1""#
        );
        assert_eq!(
            text(LOGGER_5424.as_bytes()),
            r#"web1.example | 2026-11-25T04:19:26Z root[1234]: hello"#
        );
        assert_eq!(
            text(LOGGER_3164.as_bytes()),
            "web1.example | 2026-11-25T04:19:26Z root[1234]: hello"
        );
        assert_eq!(
            text(RSYSLOG_TRADITIONAL.as_bytes()),
            "web1.example | 2026-11-25T04:19:26Z sshd[812]: Accepted publickey for deploy"
        );
        assert_eq!(
            text(RSYSLOG_PROTOCOL23.as_bytes()),
            "web1.example | 2026-11-25T04:19:26Z sshd[812]: Accepted publickey"
        );
    }

    #[test]
    fn text_of_unparsed_and_binary_is_raw_and_escaped() {
        assert_eq!(
            text(b"hello\tworld\r\n"),
            "web1.example | 2026-11-25T04:19:26Z hello\\x09world\\x0d\\x0a"
        );
        assert_eq!(
            text(b"<13>Nov 25 04:19:26 host app: \xff\x00bin"),
            "web1.example | 2026-11-25T04:19:26Z <13>Nov 25 04:19:26 host app: \u{fffd}\\x00bin"
        );
        assert_eq!(text(b"<13>Nov 25 04:19:26 host app: a\x1b[31mred"), {
            "web1.example | 2026-11-25T04:19:26Z app: a\\x1b[31mred"
        });
        assert_eq!(
            text("x\u{85}y\u{7f}".as_bytes()),
            "web1.example | 2026-11-25T04:19:26Z x\\x85y\\x7f"
        );
        for message in [&b"a\nb"[..], b"<13>1 - - - - - - a\nb\x00", b"\xff\n\r"] {
            let out = text(message);
            assert!(!out.chars().any(|c| c.is_control()), "{out:?}");
        }
    }

    #[test]
    fn json_of_a_5424_message() {
        let value = to_json(&line(LOGGER_5424.as_bytes()));
        assert_eq!(
            value,
            json!({
                "host": "web1.example",
                "seq": 7,
                "received": "2026-11-25T04:19:26.500000Z",
                "flags": [],
                "facility": "user",
                "severity": "notice",
                "timestamp": "2026-11-25T04:19:26.123456+00:00",
                "hostname": "web1",
                "app": "root",
                "procid": "1234",
                "structured_data": {"timeQuality": {"tzKnown": "1", "isSynced": "0"}},
                "message": "hello",
                "raw": LOGGER_5424,
            })
        );
    }

    #[test]
    fn json_of_a_3164_message_takes_the_year_from_received() {
        let value = to_json(&line(NGINX.as_bytes()));
        assert_eq!(value["facility"], "local7");
        assert_eq!(value["severity"], "info");
        assert_eq!(value["app"], "nginx");
        assert_eq!(value["hostname"], "web1");
        assert!(
            value["timestamp"]
                .as_str()
                .unwrap()
                .starts_with("2026-11-25T04:19:26"),
            "{value}"
        );
        assert!(value["message"].as_str().unwrap().starts_with("10.0.0.1 - -"));
        // A December message received in January is from last year.
        let mut january = line(b"<13>Dec 31 23:59:59 host app: late");
        january.received_us = 1_798_761_600_000_000; // 2027-01-01T00:00:00Z
        assert!(
            to_json(&january)["timestamp"]
                .as_str()
                .unwrap()
                .starts_with("2026-12-31")
        );
    }

    #[test]
    fn json_of_garbage_and_binary() {
        let value = to_json(&line(b"\xffgarbage"));
        assert_eq!(value["flags"], json!(["unparsed", "binary"]));
        assert_eq!(value["message"], "\u{fffd}garbage");
        assert_eq!(value["raw"], "\u{fffd}garbage");
        assert!(value.get("facility").is_none());
    }

    #[test]
    fn a_3164_date_gets_the_year_it_was_most_likely_sent_in() {
        // Received 2026-11-25: November is this year, a January header
        // too (a slightly fast clock), a December one last year's.
        let guess = year_guess(RECEIVED);
        assert_eq!(guess((11, 25, 4, 19, 26)), 2026);
        assert_eq!(guess((12, 31, 23, 59, 59)), 2026);
        // Received 2027-01-04: a December header is from the year before.
        let january = year_guess(RECEIVED + 40 * 86_400_000_000);
        assert_eq!(january((12, 31, 23, 0, 0)), 2026);
        assert_eq!(january((1, 4, 0, 0, 0)), 2027);
    }

    #[test]
    fn the_fast_path_accepts_only_what_syslog_loose_accepts() {
        let seeds = [
            NGINX,
            LOGGER_5424,
            LOGGER_3164,
            RSYSLOG_FORWARD,
            RSYSLOG_TRADITIONAL,
            RSYSLOG_PROTOCOL23,
            "<13>1 - - - - - -",
            "<0>Feb 29 23:59:59 h a: leap",
            "<191>Dec  5 00:00:00 host: x",
            "<13>2026-02-28T23:59:59.123456789-05:30 host app[1]: zoned",
            "<13>1 2026-11-25T04:19:26Z host app 1234 ID47 - msg",
            "<13>1 2026-11-25T04:19:26Z host app 1234 ID47 -",
            "<13>Nov 25 04:19:26: host app: colon",
            "<13>Nov 25 04:19:26 host app: [unclosed \"quote",
            "<13>Nov 25 04:19:26 [id a=\"1\"] msg",
            "<13>1 2026-11-25T04:19:26Z h a 1 - [a b=\"]\"][c] [d e=\"\\\"\"] msg",
            "<13>1 - h a 1 - []",
        ];
        let mut fast = 0;
        let mut checked = 0;
        for seed in seeds {
            assert!(fast_header(seed), "{seed}");
            let mut variants: Vec<String> = Vec::new();
            for cut in 0..=seed.len() {
                if seed.is_char_boundary(cut) {
                    variants.push(seed[..cut].to_string());
                    for insert in [" ", "0", "9", ":", "-", "x", "[", "\t", "3", "Z", "+"] {
                        variants.push(format!("{}{insert}{}", &seed[..cut], &seed[cut..]));
                        if cut < seed.len() && seed.is_char_boundary(cut + 1) {
                            variants.push(format!("{}{insert}{}", &seed[..cut], &seed[cut + 1..]));
                        }
                    }
                }
            }
            for variant in variants {
                checked += 1;
                if fast_header(&variant) {
                    fast += 1;
                    assert!(
                        parse(&variant, |_| 2024).is_some(),
                        "fast path accepted {variant:?}"
                    );
                }
            }
        }
        assert!(fast > 1000, "{fast} of {checked}");
    }
}
