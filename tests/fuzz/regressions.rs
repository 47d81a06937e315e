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
        &[
            b"\x0c[1, 2]",
            b"[1, 2]\x0c",
            b"\x0c{\"x\": [1, 2]}",
            b" \t[3, 4]\r",
        ],
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
    subpass::io::read_lines(input, subpass::io::MIN_READ_BUFFER, max, 4, keep_blank, &tx).unwrap();
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

/// "Billion laughs": ten lines of nested aliases would expand to 10^10 values. The loader stops
/// at its alias budget with an error at the alias that crossed it.
#[test]
fn an_alias_bomb_is_refused_where_it_goes_off() {
    let mut text = String::from(
        "input: {shape: [4]}\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for d in 1..10 {
        let refs = vec![format!("*a{}", d - 1); 10].join(", ");
        text.push_str(&format!("a{d}: &a{d} [{refs}]\n"));
    }
    text.push_str("layers: *a9\n");
    let errors = subpass::config::PipelineConfig::parse(&text, std::path::Path::new("."))
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("aliases"), "{}", errors[0]);
    // a_d holds 11·10^d + ... values: the aliases of a4's line (6) take the copies past 10^5.
    assert_eq!(errors[0].location.map(|l| l.0), Some(6), "{}", errors[0]);

    // Aliases as a real file uses them are fine.
    let ok = "input: {shape: [4]}\nlayers:\n  - &fc {name: fc, op: dense, units: 4}\n  - {name: out, op: dense, units: 2, activation: relu}\nbatch: &b {size: 8}\n";
    subpass::config::PipelineConfig::parse(ok, std::path::Path::new(".")).unwrap();
}

/// Nesting deeper than the loader's limit is an error at the level that crossed it, not a
/// stack overflow (yaml-rust2's `load` recursed once per level) nor key paths quadratic in the
/// depth (100 000 levels cost gigabytes).
#[test]
fn deep_nesting_is_refused_at_the_limit() {
    use subpass::config::Document;
    let depth = subpass::config::MAX_DEPTH;
    let fits = format!("{}x\n", "- ".repeat(depth));
    assert!(Document::parse(&fits).is_ok());
    for text in [
        format!("{}x\n", "- ".repeat(depth + 1)),
        format!("{}x\n", "- ".repeat(100_000)),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        (0..100).map(|i| format!("{}k:\n", " ".repeat(i))).collect(),
    ] {
        let e = Document::parse(&text).err().expect("too deep");
        // Flow brackets are scanned ahead, and yaml-rust2 stops them at 255 levels itself.
        assert!(
            e.message
                .contains(&format!("nested more than {depth} levels"))
                || e.message.contains("recursion limit exceeded"),
            "{e}"
        );
        assert!(e.location.is_some(), "{e}");
    }
}

/// A key thousands of bytes long appears cut short in key paths (an error still names it):
/// in full, it would be copied into the path of every value below it.
#[test]
fn long_keys_are_cut_short_in_key_paths() {
    let key = "k".repeat(10_000);
    // An explicit key (`? key`): an implicit one may not be longer than 1024 characters.
    let text = format!(
        "input: {{shape: [4]}}\nlayers:\n  - {{name: a, op: identity}}\n? {key}\n: {{a: [1, 2, 3]}}\n"
    );
    let errors = subpass::config::PipelineConfig::parse(&text, std::path::Path::new("."))
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].path.starts_with("kkkk") && errors[0].path.len() < 100,
        "{}",
        errors[0].path
    );
    assert_eq!(errors[0].location.map(|l| l.0), Some(4));
}

/// An error quotes at most a short piece of a line, however long the line: a 10 kB text field
/// with a bad escape, or a 10 kB key with a bad value, was echoed whole into the error line.
#[test]
fn errors_quote_only_the_start_of_a_long_value() {
    let long = "a".repeat(10_000);
    let parser = RecordParser::new(&[2], "x", &[], InputFormat::JsonLines);
    let line = format!("{{\"{long}\": tru, \"x\": [1, 2]}}");
    let chunk = parse(&parser, &[line.as_bytes()], false);
    assert_eq!(rejected_lines(&chunk), [1]);
    assert!(
        chunk.meta.rejected[0].error.len() < 200,
        "{:?}",
        chunk.meta.rejected
    );

    let config =
        subpass::config::PipelineConfig::load(&crate::root().join("configs/minilm.yaml")).unwrap();
    let text = config.input.text.unwrap();
    if !text.tokenizer.exists() {
        eprintln!("SKIPPED the text half: run `bash tools/fetch_models.sh`");
        return;
    }
    let tokenizer = subpass::io::TextTokenizer::load(&text.tokenizer, text.max_tokens).unwrap();
    let parser = RecordParser::new(&[1], "text", &[], InputFormat::JsonLines)
        .with_tokenizer(std::sync::Arc::new(tokenizer));
    for line in [
        format!("{{\"text\": \"{long}\\q\"}}"),
        format!("{{\"text\": [\"{long}\"]}}"),
    ] {
        let chunk = parse(&parser, &[line.as_bytes()], false);
        assert_eq!(rejected_lines(&chunk), [1]);
        let error = &chunk.meta.rejected[0].error;
        assert!(
            error.len() < 200 && error.contains("field `text`"),
            "{error}"
        );
    }
}
