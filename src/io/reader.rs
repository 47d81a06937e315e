//! Splitting an input stream into numbered lines, without ever holding an over-long line.

use std::io::{self, BufRead, BufReader, Read};

use crossbeam_channel::Sender;

/// One input line (blank lines are skipped but still counted, so numbers match the file).
#[derive(Debug, Clone)]
pub struct RawLine {
    /// 1-based line number in the input.
    pub number: u64,
    pub text: LineText,
}

#[derive(Debug, Clone)]
pub enum LineText {
    /// The line without its `\n` or `\r\n`.
    Bytes(Vec<u8>),
    /// The line exceeded the cap; only its length is kept.
    TooLong(usize),
}

/// The smallest read buffer [`read_lines`] is given: what a pipe holds.
pub const MIN_READ_BUFFER: usize = 64 << 10;

/// Read `input` to its end through a buffer of `buffer` bytes, sending lines in batches of at
/// most `batch` lines. A batch is sent as soon as a read returns, so a trickle of records is
/// not held back waiting for more. Returns when the input ends or the receiver is gone.
pub fn read_lines(
    input: impl Read,
    buffer: usize,
    max_line_bytes: usize,
    batch: usize,
    keep_blank: bool,
    tx: &Sender<Vec<RawLine>>,
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(buffer.max(MIN_READ_BUFFER), input);
    let mut line: Vec<u8> = Vec::new();
    // Length of the line once it passed the cap, whether it held anything but whitespace, and
    // whether its last byte so far is a CR (not counted if the line ends there: CR LF).
    let mut too_long: Option<(usize, bool, bool)> = None;
    let mut number: u64 = 0;
    let mut out: Vec<RawLine> = Vec::new();

    let mut finish_line =
        |line: &mut Vec<u8>, too_long: &mut Option<(usize, bool, bool)>, out: &mut Vec<RawLine>| {
            number += 1;
            let text = match too_long.take() {
                // An over-long blank line is still a blank line, skipped where blanks are; where
                // they are records (text), it is a record too long like any other.
                Some((_, false, _)) if !keep_blank => return,
                Some((len, _, cr)) => LineText::TooLong(len - usize::from(cr)),
                None => {
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    // Blank before too long, so that a blank line is skipped whatever its length.
                    if !keep_blank && line.iter().all(u8::is_ascii_whitespace) {
                        line.clear();
                        return;
                    }
                    if line.len() > max_line_bytes {
                        // Only the CR of a CRLF ending was allowed past the cap.
                        let len = line.len();
                        line.clear();
                        out.push(RawLine {
                            number,
                            text: LineText::TooLong(len),
                        });
                        return;
                    }
                    // An exact-size copy: the line held until its record is written takes its
                    // length, not the doubled capacity of the growing buffer (the memory bound
                    // counts lines at their length), and the buffer is reused for the next line.
                    let text = LineText::Bytes(line.as_slice().to_vec());
                    line.clear();
                    text
                }
            };
            out.push(RawLine { number, text });
        };

    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            if !line.is_empty() || too_long.is_some() {
                finish_line(&mut line, &mut too_long, &mut out);
            }
            if !out.is_empty() {
                let _ = tx.send(out);
            }
            return Ok(());
        }
        let len = available.len();
        let mut rest = available;
        while !rest.is_empty() {
            let (segment, complete) = match memchr::memchr(b'\n', rest) {
                Some(pos) => (&rest[..pos], Some(pos + 1)),
                None => (rest, None),
            };
            let nonblank = |b: &[u8]| b.iter().any(|c| !c.is_ascii_whitespace());
            match &mut too_long {
                Some((n, seen, cr)) => {
                    *n += segment.len();
                    *seen = *seen || nonblank(segment);
                    if let Some(&last) = segment.last() {
                        *cr = last == b'\r';
                    }
                }
                // One byte of slack: the CR of a CRLF ending does not count toward the cap.
                None if line.len() + segment.len() > max_line_bytes.saturating_add(1) => {
                    too_long = Some((
                        line.len() + segment.len(),
                        nonblank(&line) || nonblank(segment),
                        segment.last().or(line.last()) == Some(&b'\r'),
                    ));
                    line = Vec::new(); // give the memory back now, not at the next line
                }
                None => line.extend_from_slice(segment),
            }
            match complete {
                Some(skip) => {
                    finish_line(&mut line, &mut too_long, &mut out);
                    rest = &rest[skip..];
                    if out.len() >= batch && tx.send(std::mem::take(&mut out)).is_err() {
                        return Ok(());
                    }
                }
                None => rest = &[],
            }
        }
        reader.consume(len);
        if !out.is_empty() && tx.send(std::mem::take(&mut out)).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<RawLine> {
        let (tx, rx) = crossbeam_channel::unbounded();
        read_lines(input, MIN_READ_BUFFER, max, 3, false, &tx).unwrap();
        drop(tx);
        rx.iter().flatten().collect()
    }

    #[test]
    fn numbers_lines_strips_crlf_skips_blanks_and_caps_length() {
        let got = lines(b"a\r\n\n  \nbbbbbbbbbb\nc", 5);
        let summary: Vec<(u64, String)> = got
            .iter()
            .map(|l| {
                let t = match &l.text {
                    LineText::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                    LineText::TooLong(n) => format!("<{n}>"),
                };
                (l.number, t)
            })
            .collect();
        assert_eq!(
            summary,
            vec![(1, "a".into()), (4, "<10>".into()), (5, "c".into())]
        );
    }
}
