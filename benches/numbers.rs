//! Number parsing on record lines: the parser's own fast paths against fast-float2 alone, each
//! behind the same line loop, and the whole record parser for scale. Each kind of line holds 784
//! numbers written as one kind of tool writes them.
//!
//! `cargo bench --bench numbers` (add `-- decimals_3` to run one kind).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use subpass::io::{parse_json_number, InputFormat, LineText, RawLine, RecordParser};
use subpass::weights::seeded_stream;

/// Numbers per line: a 28×28 image.
const LEN: usize = 784;
/// Lines per kind, so that one line's branches are not all the predictor sees.
const LINES: usize = 8;

/// Writes a value in [-1, 1) as one kind of tool does.
type Writer = fn(f32) -> String;

/// A JSON number parser: the number at a start index, its value and where it ends.
type NumberParser = fn(&[u8], usize) -> Result<(f32, usize), String>;

const KINDS: [(&str, Writer); 6] = [
    // Pixel intensities as datasets ship them.
    ("decimals_3", |v| format!("{:.3}", (v + 1.0) / 2.0)),
    // The same rounded to 3 decimals but written as Python's json.dumps writes floats, trailing
    // zeros dropped (0.5, 0.56, 0.506): benches/peers/race.py's stdin records.
    ("rounded_3", |v| {
        let r = (((v as f64 + 1.0) / 2.0) * 1000.0).round() / 1000.0;
        ryu::Buffer::new().format(r).to_string()
    }),
    // Shortest round-trip f32, as subpass and most f32 writers print.
    ("shortest_f32", |v| ryu::Buffer::new().format(v).to_string()),
    // Fixed precision from a float64 tool.
    ("digits_15", |v| format!("{:.15}", v as f64)),
    // Python's json.dumps(tensor.tolist()): an f32 widened to f64, 16-17 digits.
    ("repr_17", |v| {
        ryu::Buffer::new().format(v as f64).to_string()
    }),
    // Small values in scientific notation, like `-1.5e-3`.
    ("exponent", |v| format!("{:.1e}", v * 1e-2)),
];

fn lines(kind: &str, write: Writer) -> Vec<String> {
    let mut next = seeded_stream(5, kind);
    (0..LINES)
        .map(|_| {
            let values: Vec<String> = (0..LEN).map(|_| write(next())).collect();
            format!("[{}]", values.join(","))
        })
        .collect()
}

/// The JSON grammar check alone, then fast-float2 for the value: the parser without fast paths
/// of its own.
fn fast_float2_alone(b: &[u8], start: usize) -> Result<(f32, usize), String> {
    let digits = |i: &mut usize| {
        let from = *i;
        while matches!(b.get(*i), Some(b'0'..=b'9')) {
            *i += 1;
        }
        *i > from
    };
    let bad = || "expected a number".to_string();
    let mut i = start + usize::from(b.get(start) == Some(&b'-'));
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => _ = digits(&mut i),
        _ => return Err(bad()),
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return Err(bad());
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        i += usize::from(matches!(b.get(i), Some(b'+' | b'-')));
        if !digits(&mut i) {
            return Err(bad());
        }
    }
    if !matches!(
        b.get(i),
        None | Some(b',' | b']' | b' ' | b'\t' | b'\r' | b'\n')
    ) {
        return Err(bad());
    }
    let value = fast_float2::parse::<f32, _>(&b[start..i]).map_err(|_| bad())?;
    if !value.is_finite() {
        return Err(bad());
    }
    Ok((value, i))
}

/// A flat `[n,n,…]` line through `number`: the loop both candidates share.
fn parse_line(line: &[u8], out: &mut Vec<f32>, number: NumberParser) {
    let mut pos = 1;
    loop {
        let (value, end) = number(line, pos).expect("a valid number");
        out.push(value);
        match line[end] {
            b',' => pos = end + 1,
            _ => return,
        }
    }
}

fn numbers(c: &mut Criterion) {
    let candidates: [(&str, NumberParser); 2] = [
        ("fast_paths", parse_json_number),
        ("fast_float2", fast_float2_alone),
    ];
    let parser = RecordParser::new(&[LEN], "x", &[], InputFormat::JsonLines);
    let mut group = c.benchmark_group("numbers");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Elements((LEN * LINES) as u64));
    for (kind, write) in KINDS {
        let lines = lines(kind, write);
        // Both candidates must read every line to the same values.
        let mut want = Vec::new();
        let mut got = Vec::new();
        for line in &lines {
            parse_line(line.as_bytes(), &mut want, parse_json_number);
            parse_line(line.as_bytes(), &mut got, fast_float2_alone);
        }
        assert_eq!(want, got, "{kind}: the candidates disagree");
        let mut out = Vec::with_capacity(LEN * LINES);
        for (name, number) in candidates {
            group.bench_function(BenchmarkId::new(name, kind), |b| {
                b.iter(|| {
                    out.clear();
                    for line in &lines {
                        parse_line(black_box(line.as_bytes()), &mut out, number);
                    }
                    black_box(out.len())
                })
            });
        }
        let raw: Vec<RawLine> = (1..)
            .zip(&lines)
            .map(|(number, line)| RawLine {
                number,
                text: LineText::Bytes(line.clone().into_bytes()),
            })
            .collect();
        group.bench_function(BenchmarkId::new("record_parser", kind), |b| {
            b.iter(|| parser.parse_chunk(black_box(&raw), Instant::now(), false))
        });
    }
    group.finish();
}

criterion_group!(benches, numbers);
criterion_main!(benches);
