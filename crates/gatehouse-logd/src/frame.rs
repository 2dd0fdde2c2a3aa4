//! RFC 6587 framing of a syslog TCP (or TLS) byte stream: octet counting
//! (`LEN SP MSG`) or LF termination, decided per frame, with `max_message`
//! truncation.
//!
//! Hand-written on purpose: no maintained crate decodes RFC 6587 over tokio
//! with truncation. The candidates (`syslog_loose` parses a message, not a
//! stream; tokio-util's `LinesCodec`/`LengthDelimitedCodec` do one framing
//! each, not both decided per frame, and a too-long frame is an error that
//! ends the stream, not a cut message; small receivers such as
//! bunny-syslog-receiver pick one framing per connection and drop a
//! connection whose frame is too long) would buffer an oversize message
//! whole or drop it. Here a message longer than `max_message` keeps its first
//! `max_message` bytes (flagged [`Flags::TRUNCATED`]) and the rest of that
//! frame is skipped as it arrives, never buffered.
//!
//! The [`Decoder`] owns one reusable buffer: the reader reads straight into
//! [`Decoder::read_buf`], and [`Decoder::next_frame`] hands out slices of it,
//! so framing copies nothing except, now and then, an incomplete frame moved
//! to the front of the buffer.

use crate::Flags;

/// The read size the decoder offers at least (the buffer is larger when
/// `max_message` needs it).
pub const READ_SIZE: usize = 64 * 1024;

/// More digits than this in an octet count is not a length: the frame is
/// LF-terminated (rsyslog allows at most 9 digits too).
const MAX_LEN_DIGITS: usize = 9;

/// One message out of the stream, borrowed from the decoder's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub message: &'a [u8],
    /// [`Flags::TRUNCATED`] when the message was cut at `max_message`.
    pub flags: Flags,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a frame.
    Start,
    /// Skipping the rest of a truncated octet-counted frame: this many bytes.
    SkipOctets(usize),
    /// Skipping the rest of a truncated LF-terminated frame, through the LF.
    SkipLine,
}

/// An incremental RFC 6587 decoder. Read into [`Decoder::read_buf`], call
/// [`Decoder::filled`], then take frames with [`Decoder::next_frame`] until it
/// returns `None`; at the end of the stream, [`Decoder::finish`] gives what is
/// left.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// In an LF frame at `start`, bytes `start..start + scanned` hold no LF.
    scanned: usize,
    max_message: usize,
    state: State,
}

impl Decoder {
    pub fn new(max_message: usize) -> Decoder {
        let max_message = max_message.max(1);
        Decoder {
            buf: vec![0; Self::capacity_for(max_message)],
            start: 0,
            end: 0,
            scanned: 0,
            max_message,
            state: State::Start,
        }
    }

    fn capacity_for(max_message: usize) -> usize {
        // An incomplete frame is at most max_message + 2 (CR LF) + the length
        // field and its space; leave at least a quarter of a read beyond that.
        READ_SIZE.max(max_message + MAX_LEN_DIGITS + 3 + READ_SIZE / 4)
    }

    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Changes the limit for the frames still to come (the buffer grows when needed).
    pub fn set_max_message(&mut self, max_message: usize) {
        let max_message = max_message.max(1);
        self.max_message = max_message;
        let capacity = Self::capacity_for(max_message);
        if capacity > self.buf.len() {
            self.buf.resize(capacity, 0);
        }
    }

    /// Bytes received but not yet handed out as frames.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Where to read next: never empty once the frames available were taken.
    pub fn read_buf(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`Decoder::read_buf`].
    pub fn filled(&mut self, n: usize) {
        assert!(
            self.end + n <= self.buf.len(),
            "filled more than read_buf offered"
        );
        self.end += n;
    }

    /// Copies as much of `bytes` as fits and returns how much that was: take
    /// the frames out and push the rest. For tests and callers without a reader.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let space = self.read_buf();
        let n = space.len().min(bytes.len());
        space[..n].copy_from_slice(&bytes[..n]);
        self.filled(n);
        n
    }

    /// The next complete frame, if there is one. Empty messages are skipped.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            match self.state {
                State::SkipOctets(remaining) => {
                    let n = remaining.min(pending.len());
                    self.start += n;
                    if n < remaining {
                        self.state = State::SkipOctets(remaining - n);
                        return None;
                    }
                    self.state = State::Start;
                }
                State::SkipLine => match find_lf(pending) {
                    Some(at) => {
                        self.start += at + 1;
                        self.state = State::Start;
                    }
                    None => {
                        self.start = self.end;
                        return None;
                    }
                },
                State::Start => {
                    let first = *pending.first()?;
                    if (b'1'..=b'9').contains(&first) {
                        match octet_count(pending) {
                            Count::NeedMore => return None,
                            Count::Length { header, len } => return self.octet_frame(header, len),
                            Count::NotALength => {}
                        }
                    }
                    match self.lf_frame() {
                        LfFrame::Frame(start, len, flags) => {
                            return Some(Frame {
                                message: &self.buf[start..start + len],
                                flags,
                            });
                        }
                        LfFrame::Empty => {}
                        LfFrame::NeedMore => return None,
                    }
                }
            }
        }
    }

    /// An octet-counted frame whose length field (with its space) is `header` bytes.
    fn octet_frame(&mut self, header: usize, len: usize) -> Option<Frame<'_>> {
        let body_start = self.start + header;
        let available = self.end - body_start;
        let max = self.max_message;
        if len <= max + 2 {
            if available < len {
                return None;
            }
            self.start = body_start + len;
            let body = &self.buf[body_start..body_start + len];
            let mut kept = len;
            if body.ends_with(b"\r\n") {
                kept -= 2;
            } else if body.ends_with(b"\n") {
                kept -= 1;
            }
            let mut flags = Flags::default();
            if kept > max {
                kept = max;
                flags = Flags::TRUNCATED;
            }
            if kept == 0 {
                return self.next_frame();
            }
            Some(Frame {
                message: &self.buf[body_start..body_start + kept],
                flags,
            })
        } else {
            // Longer than any message kept: cut at max, skip the rest as it comes.
            if available < max {
                return None;
            }
            self.start = body_start + max;
            self.state = State::SkipOctets(len - max);
            Some(Frame {
                message: &self.buf[body_start..body_start + max],
                flags: Flags::TRUNCATED,
            })
        }
    }

    /// An LF-terminated frame at `start`: (start, length, flags) of its message.
    fn lf_frame(&mut self) -> LfFrame {
        let pending = &self.buf[self.start..self.end];
        let max = self.max_message;
        match find_lf(&pending[self.scanned..]) {
            Some(at) => {
                let at = self.scanned + at;
                let start = self.start;
                self.start += at + 1;
                self.scanned = 0;
                let line = &pending[..at];
                let mut len = line.strip_suffix(b"\r").unwrap_or(line).len();
                if len == 0 {
                    return LfFrame::Empty;
                }
                let mut flags = Flags::default();
                if len > max {
                    len = max;
                    flags = Flags::TRUNCATED;
                }
                LfFrame::Frame(start, len, flags)
            }
            None if pending.len() >= max + 2 => {
                // max + 2 bytes and no LF: longer than max even if it ends in CR LF.
                let start = self.start;
                self.start += max;
                self.scanned = 0;
                self.state = State::SkipLine;
                LfFrame::Frame(start, max, Flags::TRUNCATED)
            }
            None => {
                self.scanned = pending.len();
                LfFrame::NeedMore
            }
        }
    }

    /// At the end of the stream: what is left, as a last message (an
    /// unterminated line, or an incomplete octet-counted frame flagged
    /// truncated). Everything read is kept.
    pub fn finish(&mut self) -> Option<Frame<'_>> {
        let state = std::mem::replace(&mut self.state, State::Start);
        let (start, end) = (self.start, self.end);
        self.start = self.end;
        self.scanned = 0;
        if state != State::Start || start == end {
            return None;
        }
        let pending = &self.buf[start..end];
        let (mut message, mut flags) = match octet_count(pending) {
            Count::Length { header, .. } if pending[0] != b'0' => (&pending[header..], Flags::TRUNCATED),
            _ => (pending.strip_suffix(b"\r").unwrap_or(pending), Flags::default()),
        };
        if message.len() > self.max_message {
            message = &message[..self.max_message];
            flags = Flags::TRUNCATED;
        }
        (!message.is_empty()).then_some(Frame { message, flags })
    }
}

enum LfFrame {
    Frame(usize, usize, Flags),
    Empty,
    NeedMore,
}

enum Count {
    Length { header: usize, len: usize },
    NeedMore,
    NotALength,
}

/// Reads `LEN SP` at the start of `bytes` (which starts with a digit).
fn octet_count(bytes: &[u8]) -> Count {
    let mut len = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(MAX_LEN_DIGITS + 1) {
        match b {
            b'0'..=b'9' if i < MAX_LEN_DIGITS => len = len * 10 + (b - b'0') as usize,
            b' ' if i > 0 => return Count::Length { header: i + 1, len },
            _ => return Count::NotALength,
        }
    }
    Count::NeedMore
}

/// The position of the first LF: eight bytes at a time.
#[inline]
pub(crate) fn find_lf(bytes: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = LO * b'\n' as u64;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap()) ^ LF;
        let found = word.wrapping_sub(LO) & !word & HI;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|at| offset + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Flags = Flags::TRUNCATED;
    const N: Flags = Flags(0);

    /// Feeds `input` in pieces of `chunk` bytes, taking the frames after each.
    fn decode(max: usize, input: &[u8], chunk: usize) -> Vec<(Vec<u8>, Flags)> {
        let mut decoder = Decoder::new(max);
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            let mut piece = piece;
            while !piece.is_empty() {
                let n = decoder.push(piece);
                piece = &piece[n..];
                while let Some(frame) = decoder.next_frame() {
                    out.push((frame.message.to_vec(), frame.flags));
                }
            }
            assert!(
                decoder.pending() <= max + MAX_LEN_DIGITS + 3,
                "buffered {}",
                decoder.pending()
            );
        }
        if let Some(frame) = decoder.finish() {
            out.push((frame.message.to_vec(), frame.flags));
        }
        out
    }

    /// Feeds `input` split in two at every position, and whole.
    fn decode_splits(max: usize, input: &[u8]) -> Vec<(Vec<u8>, Flags)> {
        let whole = decode(max, input, input.len());
        for at in 0..=input.len() {
            let mut decoder = Decoder::new(max);
            let mut out = Vec::new();
            for part in [&input[..at], &input[at..]] {
                decoder.push(part);
                while let Some(frame) = decoder.next_frame() {
                    out.push((frame.message.to_vec(), frame.flags));
                }
            }
            if let Some(frame) = decoder.finish() {
                out.push((frame.message.to_vec(), frame.flags));
            }
            assert_eq!(
                out,
                whole,
                "split at {at} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(decode(max, input, 1), whole, "byte at a time");
        whole
    }

    fn frames(list: &[(&str, Flags)]) -> Vec<(Vec<u8>, Flags)> {
        list.iter().map(|(m, f)| (m.as_bytes().to_vec(), *f)).collect()
    }

    #[test]
    fn lf_framing_strips_cr_and_skips_empty_lines() {
        let out = decode_splits(100, b"<13>one\n<13>two\r\n\n\r\n<13>three\n");
        assert_eq!(out, frames(&[("<13>one", N), ("<13>two", N), ("<13>three", N)]));
    }

    #[test]
    fn octet_counting_with_and_without_rsyslogs_trailing_lf() {
        let out = decode_splits(100, b"7 <13>one8 <13>two\n11 <13>three\r\n");
        assert_eq!(out, frames(&[("<13>one", N), ("<13>two", N), ("<13>three", N)]));
    }

    #[test]
    fn one_connection_may_mix_framings() {
        let out = decode_splits(100, b"<13>lf\n7 <13>oct<13>lf again\n9 <13>octet\n");
        assert_eq!(
            out,
            frames(&[
                ("<13>lf", N),
                ("<13>oct", N),
                ("<13>lf again", N),
                ("<13>octet", N)
            ])
        );
    }

    #[test]
    fn a_length_that_is_not_a_number_or_too_long_means_lf_framing() {
        let out = decode_splits(100, b"2026-11-25 hello\n1234567890 x\n12ab\n5\n42 <13>hi\n");
        // "42 <13>hi\n" is a valid count of 42 bytes with only 8 arriving: kept at the end, truncated.
        assert_eq!(
            out,
            frames(&[
                ("2026-11-25 hello", N),
                ("1234567890 x", N),
                ("12ab", N),
                ("5", N),
                ("<13>hi\n", T)
            ])
        );
    }

    #[test]
    fn a_message_starting_with_a_digit_and_space_is_taken_as_a_count() {
        // RFC 6587's heuristic: unavoidable, and what rsyslog does too.
        let out = decode_splits(100, b"3 abcdef\n");
        assert_eq!(out, frames(&[("abc", N), ("def", N)]));
    }

    #[test]
    fn long_lf_lines_are_cut_and_the_rest_skipped() {
        let out = decode_splits(5, b"0123456789\n01234\r\n012345\r\nabc\n0123456\r");
        assert_eq!(
            out,
            frames(&[("01234", T), ("01234", N), ("01234", T), ("abc", N), ("01234", T)])
        );
    }

    #[test]
    fn long_octet_frames_are_cut_and_the_rest_skipped() {
        let out = decode_splits(5, b"10 0123456789abc\n6 01234\n7 01234\r\n6 012345");
        assert_eq!(
            out,
            frames(&[("01234", T), ("abc", N), ("01234", N), ("01234", N), ("01234", T)])
        );
    }

    #[test]
    fn a_huge_frame_is_never_buffered_whole() {
        let mut input = b"<13>big ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 << 20));
        input.extend_from_slice(b"\n<13>after\n");
        for chunk in [1000, 65536, 100_000] {
            let out = decode(1024, &input, chunk);
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].0, &input[..1024]);
            assert_eq!(out[0].1, T);
            assert_eq!(out[1], (b"<13>after".to_vec(), N));
        }
        let mut counted = format!("{} ", 3 << 20).into_bytes();
        counted.extend(std::iter::repeat_n(b'y', 3 << 20));
        counted.extend_from_slice(b"9 <13>after");
        let out = decode(1024, &counted, 7777);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], (vec![b'y'; 1024], T));
        assert_eq!(out[1], (b"<13>after".to_vec(), N));
    }

    #[test]
    fn finish_keeps_an_unterminated_line() {
        assert_eq!(
            decode_splits(100, b"<13>a\n<13>tail\r"),
            frames(&[("<13>a", N), ("<13>tail", N)])
        );
        assert_eq!(decode_splits(100, b"12"), frames(&[("12", N)]));
        assert_eq!(decode_splits(100, b""), frames(&[]));
    }

    #[test]
    fn messages_are_exact_across_many_reads_and_compactions() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for i in 0..5000 {
            let message = format!(
                "<13>Nov 25 04:19:26 web1 app[1]: message number {i} {}",
                "z".repeat(i % 97)
            );
            if i % 3 == 0 {
                input.extend_from_slice(format!("{} {message}", message.len()).as_bytes());
            } else {
                input.extend_from_slice(message.as_bytes());
                input.push(b'\n');
            }
            expected.push((message.into_bytes(), N));
        }
        for chunk in [1, 13, 4096, 65536, 1 << 20] {
            assert_eq!(decode(300, &input, chunk), expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn find_lf_agrees_with_position() {
        let text = b"abcdefghijklmnopqrstuvwxyz\n0123\n";
        for start in 0..text.len() {
            for end in start..=text.len() {
                let s = &text[start..end];
                assert_eq!(find_lf(s), s.iter().position(|&b| b == b'\n'));
            }
        }
        assert_eq!(find_lf(&[0x8a, 0x0b, 0x09, b'\n']), Some(3));
    }
}
