//! Numbers in records, to the nearest f32: JSON numbers held to JSON's grammar, and CSV fields in
//! any spelling a spreadsheet writes.
//!
//! Parsing numbers is where a stdin pipeline spends its time, so JSON numbers are read by our own
//! single pass over their digits rather than through a JSON value tree. Whatever the path, the
//! value is the f32 nearest the decimal written, as Rust's own `str::parse::<f32>` gives it, except
//! that a subnormal (nonzero, below 1.2e-38 in magnitude) is read as zero: every FMA that reads one
//! takes a microcode assist on Intel cores, about 40 ns instead of a fraction of one (see
//! [`crate::kernels::packed`]), so a record of them would stall its chunk for milliseconds. Rust
//! forbids setting the CPU's denormals-are-zero flag, which is how other engines do it; the parser
//! does it instead, at the one place every number comes in.

/// The JSON number starting at `b[start]`, to the nearest f32, and the index just past it; it must
/// end at a separator (`,`, `]`, whitespace or the end of `b`).
///
/// Read in a single pass: its grammar is checked while its digits are read, and the value is made
/// from those digits where one correctly rounded operation is exact. Short decimals (at most 7
/// significant digits, exponent within ±10: what records hold) take Clinger's fast path in f32;
/// up to 15 digits take one f64 operation (`via_f64`); anything else goes to fast-float2, which
/// reads the digits again.
///
/// What the fast paths pay (`cargo bench --bench numbers`: lines of 784 numbers, fast-float2
/// alone after a grammar check against this function, medians of alternated runs, five rounds on
/// a shared 2-core machine): fast-float2 alone takes 1.48–1.53× the time on 3-decimal values,
/// 1.09–1.61× (median 1.55×) on shortest f32 reprs, 1.25–1.41× on 15 digits, 1.44–1.96× on
/// `-1.5e-3`. A 128-bit path for 16–19 digits did not pay (with it, Python's 17-digit reprs took
/// 0.94–1.29× the time they take without it, three rounds of alternated builds) and was dropped;
/// on those lines this function and fast-float2 alone now run level (0.96–1.01×).
pub fn parse_json_number(b: &[u8], start: usize) -> Result<(f32, usize), String> {
    const POW10: [f32; 11] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];
    let mut i = start;
    let negative = b.get(i) == Some(&b'-');
    i += usize::from(negative);
    let mut mantissa: u64 = 0;
    let digit = |d: u8, mantissa: &mut u64| {
        *mantissa = mantissa
            .saturating_mul(10)
            .saturating_add(u64::from(d - b'0'));
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                digit(d, &mut mantissa);
                i += 1;
            }
        }
        _ => return Err(bad_number(b, start)),
    }
    let mut exponent: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while let Some(&d @ b'0'..=b'9') = b.get(i) {
            digit(d, &mut mantissa);
            i += 1;
        }
        if i == frac_start {
            return Err(bad_number(b, start));
        }
        exponent -= (i - frac_start) as i64;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        let exp_negative = b.get(i) == Some(&b'-');
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        let mut e: i64 = 0;
        while let Some(&d @ b'0'..=b'9') = b.get(i) {
            e = (e * 10 + i64::from(d - b'0')).min(1 << 20);
            i += 1;
        }
        if i == exp_start {
            return Err(bad_number(b, start));
        }
        exponent += if exp_negative { -e } else { e };
    }
    // A number ends at a separator; anything else glued to it (`1x`, `1.2.3`) is not one.
    if !matches!(
        b.get(i),
        None | Some(b',' | b']' | b' ' | b'\t' | b'\r' | b'\n')
    ) {
        return Err(bad_number(b, start));
    }
    let exact = mantissa < (1 << 24) && (-10..=10).contains(&exponent);
    let value = if exact {
        let m = mantissa as f32;
        let v = if exponent < 0 {
            m / POW10[(-exponent) as usize]
        } else {
            m * POW10[exponent as usize]
        };
        if negative {
            -v
        } else {
            v
        }
    } else if let Some(v) = via_f64(mantissa, exponent) {
        if negative {
            -v
        } else {
            v
        }
    } else {
        fast_float2::parse::<f32, _>(&b[start..i]).map_err(|_| bad_number(b, start))?
    };
    if value.is_finite() {
        Ok((normal_or_zero(value), i))
    } else {
        Err(format!(
            "value `{}` is not finite in 32-bit floats",
            String::from_utf8_lossy(&b[start..i.min(start + 40)])
        ))
    }
}

/// `v`, or zero (of `v`'s sign) where `v` is subnormal.
fn normal_or_zero(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// The error for the token at `b[start]`, quoted up to the next separator (40 bytes at most).
fn bad_number(b: &[u8], start: usize) -> String {
    let mut end = start;
    while end < b.len() && !matches!(b[end], b',' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
        end += 1;
    }
    let token = &b[start..end.min(start + 40)];
    if token.is_empty() {
        return "expected a number".to_string();
    }
    format!(
        "expected a number, found `{}`",
        String::from_utf8_lossy(token)
    )
}

/// `mantissa × 10^exponent` rounded to f32 through one correctly rounded f64 operation, when that
/// is provably the correctly rounded f32: the f64 result `r` is within half an f64 ulp of the
/// exact value, and every f32 rounding boundary (a midpoint between two f32s) is itself an f64,
/// so the exact value and `r` round alike unless `r` sits exactly on a boundary; that case, and
/// everything outside the exact range (more than 15 digits, |exponent| > 22, f32 subnormals),
/// is left to the full parser. Covers the 8–15 digit numbers that float dumps are made of.
fn via_f64(mantissa: u64, exponent: i64) -> Option<f32> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    if mantissa >= 1 << 53 || !(-22..=22).contains(&exponent) {
        return None;
    }
    let m = mantissa as f64;
    let r = if exponent < 0 {
        m / POW10[(-exponent) as usize]
    } else {
        m * POW10[exponent as usize]
    };
    if r == 0.0 {
        return Some(0.0);
    }
    // f32 keeps 24 of f64's 53 significand bits; the 29 dropped bits equal to 1000…0 mean `r` is
    // an exact midpoint, where the two roundings may disagree.
    let on_midpoint = r.to_bits() & ((1 << 29) - 1) == 1 << 28;
    let normal = (f32::MIN_POSITIVE as f64..=f32::MAX as f64).contains(&r);
    (normal && !on_midpoint).then_some(r as f32)
}

/// Parse one CSV field as a number: finite in f32, in any spelling spreadsheets write (`+1`,
/// `1.`), never `nan` or `inf`. (JSON numbers go through [`parse_json_number`], which holds them to
/// JSON's grammar.)
pub fn parse_csv_number(token: &[u8]) -> Result<f32, String> {
    let show = || String::from_utf8_lossy(&token[..token.len().min(40)]).into_owned();
    match fast_float2::parse::<f32, _>(token) {
        Ok(v) if v.is_finite() => Ok(normal_or_zero(v)),
        Ok(v) if v.is_nan() => Err(format!("expected a number, found `{}`", show())),
        Ok(_) => Err(format!("value `{}` is not finite in 32-bit floats", show())),
        Err(_) => Err(format!("expected a number, found `{}`", show())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole string as one JSON number.
    fn number(text: &str) -> Result<f32, String> {
        let (value, end) = parse_json_number(text.as_bytes(), 0)?;
        assert_eq!(end, text.len(), "{text}");
        Ok(value)
    }

    #[test]
    fn json_grammar_is_held_to() {
        for bad in [
            "01", "-01", "1.", ".5", "1.e5", "+1", "1e", "0x10", "1x", "1.2.3", "Infinity", "NaN",
            "-", "",
        ] {
            assert!(number(bad).is_err(), "{bad} is not a JSON number");
        }
        for good in ["0", "-0.5", "1e5", "1E-5", "2.5e+3"] {
            assert!(number(good).is_ok(), "{good} is a JSON number");
        }
        assert!(number("1e39").unwrap_err().contains("not finite"));
    }

    #[test]
    fn subnormals_are_read_as_zero_and_the_smallest_normal_is_kept() {
        for (text, want) in [
            ("1e-39", 0.0f32),
            ("-1e-40", -0.0),
            ("1e-45", 0.0),
            ("1.1754942e-38", 0.0),
            ("1.17549435e-38", f32::MIN_POSITIVE),
            ("-1.2e-38", -1.2e-38),
            ("1e-50", 0.0),
        ] {
            let got = number(text).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{text}: {got:e}");
            let csv = parse_csv_number(text.as_bytes()).unwrap();
            assert_eq!(csv.to_bits(), want.to_bits(), "csv {text}: {csv:e}");
        }
    }

    #[test]
    fn numbers_inside_a_line_parse_as_alone() {
        // A number followed by the rest of its line ends where it should and reads as alone.
        let mut next = crate::weights::seeded_stream(4, "in-a-line");
        let mut texts: Vec<String> = (0..20000)
            .map(|i| {
                let v = next();
                match i % 4 {
                    0 => format!("{v:.3}"),
                    1 => format!("{v}"),
                    2 => format!("{:.12}", v as f64),
                    _ => format!("{:.2e}", v * 1e3),
                }
            })
            .collect();
        texts.extend(["0.12345678901", "1.5", "-0.0", "0.00000000012", "12.0e1"].map(String::from));
        for text in &texts {
            for after in [",0.25]\n", "]", "\n", " ,1"] {
                let line = format!("[{text}{after}");
                let (got, end) = parse_json_number(line.as_bytes(), 1).unwrap();
                let want: f32 = text.parse().unwrap();
                assert_eq!(got.to_bits(), want.to_bits(), "{line:?}");
                assert_eq!(end, 1 + text.len(), "{line:?}");
            }
        }
        for bad in ["[1.2.3,4]", "[0.5x,1]", "[1.,2]", "[0.123456789a]"] {
            assert!(parse_json_number(bad.as_bytes(), 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_parse_to_the_nearest_f32() {
        // The fast path and the full parser must agree with Rust's own correctly rounded parse.
        let cases = [
            "0",
            "-0",
            "0.1",
            "-0.1234",
            "1234567",
            "16777215",
            "16777216",
            "16777217",
            "0.0000001",
            "3.4028235e38",
            "1.17549435e-38",
            "123.456e-7",
            "9999999e10",
            "0.30000001192092896",
            "2.5e+3",
            "7e-10",
            "7e10",
            "1.0000001",
            "8388609.5",
        ];
        for text in cases {
            let want: f32 = text.parse().unwrap();
            let got = number(text).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{text}: {got} vs {want}");
        }
        // Long decimals, as float dumps write them: 9 significant digits (the f32 round trip),
        // 15 (both on the f64 path), and 17-19 (fast-float2).
        let mut next = crate::weights::seeded_stream(3, "long-decimals");
        for i in 0..30000 {
            let v = next() * 10f32.powi((i % 13) - 6);
            for text in [
                format!("{v:.9e}"),
                format!("{:.15}", v as f64),
                format!("{}", v as f64 * 1.000000001),
            ] {
                let want: f32 = text.parse().unwrap();
                let got = number(&text).unwrap();
                assert_eq!(got.to_bits(), want.to_bits(), "{text}: {got} vs {want}");
            }
        }
        // Every 4-decimal value in [-1, 1], as records are commonly written.
        for i in -10000..=10000 {
            let text = format!("{:.4}", i as f64 / 10000.0);
            let want: f32 = text.parse().unwrap();
            assert_eq!(number(&text).unwrap().to_bits(), want.to_bits(), "{text}");
        }
    }
}
