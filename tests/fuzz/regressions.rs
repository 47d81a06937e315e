//! What fuzzing found, pinned as plain tests (proptest's regression files replay the seeds too,
//! but only while the generators stay the same).

use std::time::Instant;

use subpass::io::{InputFormat, LineText, ParsedChunk, RawLine, RecordParser};

fn parse(parser: &RecordParser, lines: &[&[u8]], first_chunk: bool) -> ParsedChunk {
    let lines: Vec<RawLine> = lines
        .iter()
        .enumerate()
        .map(|(i, b)| RawLine {
            number: i as u64 + 1,
            text: LineText::Bytes(b.to_vec()),
        })
        .collect();
    parser.parse_chunk(&lines, Instant::now(), first_chunk)
}

fn rejected_lines(chunk: &ParsedChunk) -> Vec<u64> {
    chunk.meta.rejected.iter().map(|r| r.line).collect()
}

/// A form feed is ASCII whitespace but not JSON whitespace: a line with one around its value is
/// not JSON (serde_json refuses it), so it is rejected, not read.
#[test]
fn a_form_feed_around_a_json_line_is_rejected() {
    let parser = RecordParser::new(&[2], "x", &[], InputFormat::JsonLines);
    let chunk = parse(
        &parser,
        &[b"\x0c[1, 2]", b"[1, 2]\x0c", b"\x0c{\"x\": [1, 2]}", b" \t[3, 4]\r"],
        false,
    );
    assert_eq!(rejected_lines(&chunk), [1, 2, 3]);
    assert_eq!(chunk.values, [3.0, 4.0]);
}

/// A CSV stream's first row is a header only if none of its fields is a number: a first record
/// with one bad value was taken for a header and dropped without a word.
#[test]
fn a_first_csv_row_with_numbers_is_a_record_not_a_header() {
    let parser = RecordParser::new(&[3], "x", &[], InputFormat::Csv);
    let chunk = parse(&parser, &[b"1,2,x", b"4,5,6"], true);
    assert_eq!(rejected_lines(&chunk), [1]);
    assert!(chunk.meta.rejected[0].error.contains("column 3"));
    assert_eq!(chunk.values, [4.0, 5.0, 6.0]);

    for header in [&b"a,b,c"[..], b"\"x\", \"y\" ,z", b"nan,inf,label"] {
        let chunk = parse(&parser, &[header, b"4,5,6"], true);
        assert!(chunk.meta.rejected.is_empty(), "{chunk:?}");
        assert_eq!(chunk.meta.records.len(), 1);
    }
    // Only the stream's first row may be a header.
    let chunk = parse(&parser, &[b"a,b,c"], false);
    assert_eq!(rejected_lines(&chunk), [1]);
}

fn read(input: &[u8], max: usize, keep_blank: bool) -> Vec<(u64, String)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    subpass::io::read_lines(input, max, 4, keep_blank, &tx).unwrap();
    drop(tx);
    rx.iter()
        .flatten()
        .map(|l| {
            let text = match l.text {
                LineText::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                LineText::TooLong(n) => format!("<{n}>"),
            };
            (l.number, text)
        })
        .collect()
}

/// A blank line is skipped whatever its length (a blank line one byte over the cap was reported
/// as too long, two bytes over it was skipped); and where blank lines are records (`--format
/// text`), a blank line over the cap is rejected as too long, not dropped without a word.
#[test]
fn blank_lines_over_the_cap() {
    let input = b"  \n    \nab\n   \r\n";
    assert_eq!(read(input, 1, false), [(3, "<2>".to_string())]);
    assert_eq!(
        read(input, 1, true),
        [(1, "<2>"), (2, "<4>"), (3, "<2>"), (4, "<3>")].map(|(n, t)| (n, t.to_string()))
    );
}
