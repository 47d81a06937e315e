//! Numbers: `parse_json_number` holds JSON's grammar exactly as serde_json does and reads the f32
//! nearest the decimal (Rust's `str::parse::<f32>`, and serde_json's f64 rounded to f32 wherever
//! rounding twice cannot differ); every finite f32's shortest repr reads back to itself; CSV
//! numbers read as Rust reads them, finite only. Everywhere a subnormal reads as zero of its sign
//! ([`crate::flushed`]).

use proptest::prelude::*;
use subpass::io::{parse_csv_number, parse_json_number};

use crate::{config, flushed, same_as_serde};

/// The exact decimal of the midpoint between the f32 `bits` (made positive and finite) and the
/// next one up, then either kept exact, nudged just above it, or cut to `digits` significant
/// digits (which lands just below or above). These are the numbers where rounding is hardest.
fn near_midpoint(bits: u32, digits: usize, how: u8, negative: bool) -> String {
    let v = f32::from_bits(bits % 0x7f80_0000);
    let next = v.next_up();
    let midpoint = if next.is_finite() {
        (f64::from(v) + f64::from(next)) / 2.0
    } else {
        f64::from(f32::MAX) + 2f64.powi(103)
    };
    // f32 midpoints have at most about 180 significant decimal digits; 200 keeps them exact.
    let exact = format!("{midpoint:.200e}");
    let (mantissa, exponent) = exact.split_once('e').unwrap();
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    let text = match how % 3 {
        0 => format!("{mantissa}e{exponent}"),
        1 if mantissa.contains('.') => format!("{mantissa}00001e{exponent}"),
        1 => format!("{mantissa}.00001e{exponent}"),
        _ => format!("{midpoint:.*e}", digits.saturating_sub(1)),
    };
    if negative {
        format!("-{text}")
    } else {
        text
    }
}

/// Text that is, or nearly is, a JSON number.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // JSON's grammar, with any number of digits and exponents past f32's range.
        3 => "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,30})?([eE][-+]?[0-9]{1,5})?",
        // Near misses: the characters of numbers in any order.
        2 => "[-+0-9.eE]{1,12}",
        // Words that are numbers elsewhere, and leading zeros.
        1 => prop::sample::select(vec![
            "NaN", "nan", "Infinity", "-Infinity", "inf", "0x1F", "00", "-00", "01.5", "1_000",
            "٣", "１", "1e+", "1e-", "-", "-.5", "0.e1", "1E400", "-1e-400", "4.9e-324", "2e-45",
            "1.401298464324817e-45", "7.006492321624085e-46", "3.4028235677973366e38",
            "3.4028235677973362e38", "340282356779733661637539395458142568448",
        ])
        .prop_map(String::from),
        // Halfway between two f32s, exactly or nearly.
        3 => (any::<u32>(), 1usize..30, any::<u8>(), any::<bool>())
            .prop_map(|(b, d, h, n)| near_midpoint(b, d, h, n)),
        // What float dumps write: shortest f32 and f64 reprs, fixed decimals.
        2 => (any::<u64>(), 0usize..12).prop_map(|(bits, decimals)| {
            let v = f64::from_bits(bits);
            match bits % 3 {
                0 => format!("{}", v as f32),
                1 => format!("{v:e}"),
                _ => format!("{:.*}", decimals, v as f32),
            }
        }),
    ]
}

/// What may follow a number on a line.
fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", ",", "]", " ", "\t", "\r", "\n", ", 2]"])
}

proptest! {
    #![proptest_config(config(9))]

    /// Whatever serde_json reads as a number finite in f32, `parse_json_number` reads to the
    /// same f32 (the correctly rounded one, as `str::parse::<f32>` gives it) and ends where it
    /// ends; whatever serde_json refuses, or reads to a number past f32's range, it refuses with
    /// a message quoting the token.
    #[test]
    fn json_numbers_read_as_serde_json_reads_them(text in number_text(), sep in separator()) {
        let line = format!("{text}{sep}");
        let ours = parse_json_number(line.as_bytes(), 0);
        let serde = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Number(n)) => n.as_f64(),
            _ => None,
        };
        match serde {
            Some(wide) => {
                let nearest: f32 = text.parse().expect("Rust reads every JSON number");
                let nearest = flushed(nearest);
                if nearest.is_finite() {
                    let (value, end) = ours.map_err(|e| {
                        TestCaseError::fail(format!("`{text}` refused: {e}"))
                    })?;
                    prop_assert_eq!(end, text.len(), "`{}` ends at its last byte", text);
                    prop_assert_eq!(value.to_bits(), nearest.to_bits(),
                        "`{}`: {} is not the nearest f32 {}", text, value, nearest);
                    prop_assert!(same_as_serde(value, wide),
                        "`{}`: {} is not serde_json's {} as f32", text, value, wide);
                } else {
                    let error = ours.err().unwrap_or_default();
                    prop_assert!(error.contains("not finite"), "`{}`: {}", text, error);
                }
            }
            None => match ours {
                // A number may stop at a separator inside `text` (`1]5`): it is not `text`.
                Ok((value, end)) => prop_assert!(
                    end < text.len(),
                    "`{}` is not a JSON number, yet read as {}", text, value
                ),
                Err(error) => prop_assert!(
                    error.starts_with("expected a number") || error.contains("not finite"),
                    "`{}`: {}", text, error
                ),
            },
        }
    }

    /// Every finite f32, written the shortest way that reads back (ryu, as the output writer
    /// does; Rust's `{}` and `{:e}`) or as its exact f64, reads back to itself, sign of zero
    /// included (a subnormal to zero of its sign).
    #[test]
    fn shortest_reprs_round_trip(bits in any::<u32>()) {
        let v = f32::from_bits(bits);
        prop_assume!(v.is_finite());
        let mut ryu = ryu::Buffer::new();
        for text in [
            ryu.format_finite(v).to_string(),
            format!("{v}"),
            format!("{v:e}"),
            format!("{}", f64::from(v)),
        ] {
            let (back, end) = parse_json_number(text.as_bytes(), 0)
                .map_err(|e| TestCaseError::fail(format!("`{text}`: {e}")))?;
            prop_assert_eq!(end, text.len());
            prop_assert_eq!(back.to_bits(), flushed(v).to_bits(), "`{}` read as {}", text, back);
        }
    }

    /// A CSV field is read as Rust reads it, finite only: what Rust reads to a finite f32 is
    /// accepted with that value, anything else (words, `nan`, `inf`, overflow) is refused.
    #[test]
    fn csv_numbers_read_as_rust_reads_them(
        text in prop_oneof![
            number_text(),
            "[-+]?([0-9]{0,4}\\.?[0-9]{0,4})([eE][-+]?[0-9]{0,3})?",
            "[-+]?(inf|infinity|nan|NaN|INF|Infinity)",
            "[ -~]{0,8}",
        ],
    ) {
        let ours = parse_csv_number(text.as_bytes());
        match text.parse::<f32>() {
            Ok(v) if v.is_finite() => {
                let value = ours.map_err(|e| TestCaseError::fail(format!("`{text}`: {e}")))?;
                prop_assert_eq!(value.to_bits(), flushed(v).to_bits(), "`{}`", text);
            }
            _ => prop_assert!(ours.is_err(), "`{}` accepted as {:?}", text, ours),
        }
    }
}
