//! The line reader: any bytes, delivered by reads cut anywhere (and interrupted), come out as the
//! lines a plain `split(b'\n')` finds, numbered from 1, `\r\n` endings stripped, over-long lines
//! reported by length and never held, blank lines skipped only where the format skips them.

use std::io::{self, Read};

use proptest::prelude::*;
use subpass::io::{read_lines, LineText, RawLine, MIN_READ_BUFFER};

use crate::config;

/// A reader that hands out its bytes in the sizes given, interrupting now and then, as pipes and
/// sockets do.
struct ChoppyReader {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    call: usize,
    interrupted: bool,
}

impl Read for ChoppyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.call % self.sizes.len()];
        self.call += 1;
        // A size of 0 is an interruption, never two in a row (a reader that is always
        // interrupted never delivers, and retrying it forever is right).
        if size == 0 && !self.interrupted && self.pos < self.data.len() {
            self.interrupted = true;
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        self.interrupted = false;
        let n = size.max(1).min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What the reader should make of a line.
#[derive(Debug, PartialEq)]
enum Expected {
    Bytes(Vec<u8>),
    /// Longer than the cap: its length, without the `\r` of a `\r\n` ending.
    TooLong(usize),
}

/// The reference: split at `\n`, a last line without `\n` still a line, one `\r` before the
/// `\n` dropped.
fn reference(input: &[u8], max: usize, keep_blank: bool) -> Vec<(u64, Expected)> {
    let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop(); // the `\n` ended the last line; or the input is empty
    }
    let mut out = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        let text = part.strip_suffix(b"\r").unwrap_or(part);
        let blank = text.iter().all(u8::is_ascii_whitespace);
        if blank && !keep_blank {
            continue;
        }
        let expected = if text.len() > max {
            Expected::TooLong(text.len())
        } else {
            Expected::Bytes(text.to_vec())
        };
        out.push((i as u64 + 1, expected));
    }
    out
}

/// One line's bytes: anything but `\n`, over-long runs, blanks, stray `\r`, invalid UTF-8.
fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..40
        ),
        prop::collection::vec(prop::sample::select(b" \t\r\x0c\x0bx".to_vec()), 0..40),
        (1usize..200, any::<u8>()).prop_map(|(n, b)| vec![if b == b'\n' { b'x' } else { b }; n]),
        Just(b"\xff\xfe\r".to_vec()),
        Just(Vec::new()),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Lines joined by `\n` or `\r\n`, with or without a last newline.
        (
            prop::collection::vec((line_bytes(), any::<bool>()), 0..12),
            any::<bool>()
        )
            .prop_map(|(lines, last_newline)| {
                let mut out = Vec::new();
                for (i, (line, crlf)) in lines.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                    }
                    out.extend_from_slice(line);
                }
                if last_newline && !lines.is_empty() {
                    out.push(b'\n');
                }
                out
            }),
        // Bytes with many line ends.
        prop::collection::vec(
            prop_oneof![3 => any::<u8>(), 1 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(b' ')],
            0..400,
        ),
    ]
}

proptest! {
    #![proptest_config(config(8))]

    /// The reader's lines are the reference's, in order, in batches of at most `batch`, however
    /// the reads are cut.
    #[test]
    fn lines_are_split_as_the_reference_splits_them(
        data in input(),
        max in 0usize..48,
        batch in 1usize..6,
        keep_blank in any::<bool>(),
        sizes in prop::collection::vec(0usize..70, 1..8),
    ) {
        let reader = ChoppyReader { data: data.clone(), pos: 0, sizes, call: 0, interrupted: false };
        let (tx, rx) = crossbeam_channel::unbounded();
        read_lines(reader, MIN_READ_BUFFER, max, batch, keep_blank, &tx).expect("reading from memory");
        drop(tx);
        let batches: Vec<Vec<RawLine>> = rx.iter().collect();
        for b in &batches {
            prop_assert!(!b.is_empty() && b.len() <= batch, "a batch of {}", b.len());
        }
        let got: Vec<(u64, LineText)> =
            batches.into_iter().flatten().map(|l| (l.number, l.text)).collect();
        let want = reference(&data, max, keep_blank);
        prop_assert_eq!(got.len(), want.len(), "lines {:?}\nwant {:?}", got, want);
        for ((number, text), (want_number, expected)) in got.iter().zip(&want) {
            prop_assert_eq!(number, want_number, "got {:?}\nwant {:?}", got, want);
            match (text, expected) {
                (LineText::Bytes(b), Expected::Bytes(e)) => prop_assert_eq!(b, e),
                (LineText::TooLong(n), Expected::TooLong(len)) => prop_assert_eq!(n, len),
                _ => prop_assert!(false, "line {}: got {:?}, want {:?}", number, text, expected),
            }
        }
    }
}
