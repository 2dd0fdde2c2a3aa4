//! Apache's combined log format, which every log tool reads:
//! `IP - USER [TIME] "METHOD URI VERSION" STATUS BYTES "REFERER" "USER-AGENT"`.

use std::fmt::Write;
use std::net::IpAddr;
use std::time::SystemTime;

/// What a line says about a request, gathered before the response body is sent.
#[derive(Clone, Debug)]
pub struct Entry {
    pub peer: IpAddr,
    pub user: String,
    pub time: SystemTime,
    pub request_line: String,
    pub status: u16,
    pub referer: String,
    pub user_agent: String,
}

impl Entry {
    /// The line, with the body bytes actually sent ("-" for none, as Apache's %b).
    pub fn line(&self, bytes: u64) -> String {
        let user = if self.user.is_empty() { "-" } else { &self.user };
        let bytes = if bytes == 0 {
            "-".to_string()
        } else {
            bytes.to_string()
        };
        format!(
            "{} - {} [{}] \"{}\" {} {} \"{}\" \"{}\"",
            self.peer,
            quote_free(user),
            clf_time(self.time),
            escape(&self.request_line),
            self.status,
            bytes,
            escape(or_dash(&self.referer)),
            escape(or_dash(&self.user_agent)),
        )
    }
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() { "-" } else { value }
}

/// A user name with spaces and quotes taken out, so the line stays parseable.
fn quote_free(user: &str) -> String {
    user.chars()
        .map(|c| if c.is_whitespace() || c == '"' { '_' } else { c })
        .collect()
}

/// Quotes, backslashes and control characters escaped, as Apache does.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32 & 0xff);
            }
            c => out.push(c),
        }
    }
    out
}

/// `25/Nov/2026:04:19:26 +0000`: humantime's RFC 3339 text, rearranged
/// (the calendar arithmetic stays humantime's).
pub fn clf_time(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // "2026-11-25T04:19:26Z"
    let text = humantime::format_rfc3339_seconds(time).to_string();
    let month: usize = text[5..7].parse().unwrap_or(1);
    format!(
        "{}/{}/{}:{} +0000",
        &text[8..10],
        MONTHS[month.clamp(1, 12) - 1],
        &text[0..4],
        &text[11..19]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn combined_line() {
        let entry = Entry {
            peer: "127.0.0.1".parse().unwrap(),
            user: "alice".into(),
            time: UNIX_EPOCH + Duration::from_secs(1_795_580_366),
            request_line: "POST /alice/repo/config HTTP/1.1".into(),
            status: 200,
            referer: String::new(),
            user_agent: "restic/0.14.0 \"x\"".into(),
        };
        assert_eq!(
            entry.line(4096),
            "127.0.0.1 - alice [25/Nov/2026:04:19:26 +0000] \"POST /alice/repo/config HTTP/1.1\" 200 4096 \
             \"-\" \"restic/0.14.0 \\\"x\\\"\""
        );
        assert!(entry.line(0).contains(" 200 - "));
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "29/Feb/2000:00:00:00 +0000"
        );
    }
}
