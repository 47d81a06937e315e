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

    // `text` is the line's bytes: `line`, or straight from the read buffer when the whole line
    // lies in it (most lines), which spares a copy of every such line into `line`.
    let mut finish_line =
        |text: &[u8], too_long: &mut Option<(usize, bool, bool)>, out: &mut Vec<RawLine>| {
            number += 1;
            let text = match too_long.take() {
                // An over-long blank line is still a blank line, skipped where blanks are; where
                // they are records (text), it is a record too long like any other.
                Some((_, false, _)) if !keep_blank => return,
                Some((len, _, cr)) => LineText::TooLong(len - usize::from(cr)),
                None => {
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    // Blank before too long, so that a blank line is skipped whatever its length.
                    if !keep_blank && text.iter().all(u8::is_ascii_whitespace) {
                        return;
                    }
                    if text.len() > max_line_bytes {
                        // Only the CR of a CRLF ending was allowed past the cap.
                        out.push(RawLine {
                            number,
                            text: LineText::TooLong(text.len()),
                        });
                        return;
                    }
                    // An exact-size copy: the line held until its record is written takes its
                    // length, not the doubled capacity of a growing buffer (the memory bound
                    // counts lines at their length).
                    LineText::Bytes(text.to_vec())
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
                finish_line(&line, &mut too_long, &mut out);
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
                // The whole line is in the buffer: finished from there below.
                None if line.is_empty() && complete.is_some() => {}
                None => line.extend_from_slice(segment),
            }
            match complete {
                Some(skip) => {
                    // A line begun in an earlier read was gathered in `line`; a whole one is
                    // read where it lies (and an over-long one is not read at all).
                    let text = if line.is_empty() { segment } else { &line[..] };
                    finish_line(text, &mut too_long, &mut out);
                    line.clear();
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
