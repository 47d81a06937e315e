//! Flat JSON arrays of short decimals, eight numbers at a time with AVX-512: the hot path of a
//! JSON-lines stream (`[0.506, 0.565, …]`), where parsing numbers one byte at a time took a
//! quarter of the CPU of `subpass run` on the MLP.
//!
//! Two steps per 64-byte block of the array:
//! 1. **Where the numbers are.** One load and five byte compares give the block's commas and
//!    whitespace; every other byte belongs to a number. Bit tricks on those masks mark each
//!    number's first byte and the byte after its last; a byte compress (`vpcompressb`) turns the
//!    marks into offsets, and another, of one byte per token, checks that numbers and commas
//!    alternate, which is the array's whole structure. No byte is looked at twice.
//! 2. **What they are worth.** Eight numbers at once: one byte permute (a gather where they are
//!    spread wide) brings each one's first 8, 16 or 24 bytes into one to three 64-bit lanes,
//!    where the sign, the JSON grammar (one dot inside the digits, no leading zero, nothing
//!    else) and the digits' value are worked out for all eight lanes together, and
//!    `digits × 10^-fraction` is worked out in f64, then rounded to f32: the same correctly
//!    rounded value as [`super::parse_json_number`] (the f64 product is within 4 of its ulps of
//!    the exact value, so it rounds as the exact value does unless an f32 rounding midpoint is
//!    that close; such rare numbers are left to the scalar parser). Past 16 bytes (Python's
//!    17-digit reprs) the digits after the sixteenth byte only bound the value from above, which
//!    widens that window (see `to_f32`).
//!
//! Anything else is not decided here. A number this path does not take (longer than 24 bytes,
//! an exponent, a midpoint) goes to [`super::parse_json_number`] on its own. A line whose
//! structure or any number is wrong, or where most numbers are of the kind this path does not
//! take, is handed back whole (`None`), and the scalar scanner parses it again and words any
//! error exactly as it always has. So this path can make a line faster but never changes what a
//! line means.

/// Parses the flat array whose `[` is at `bytes[open]`, appending its values to `out`: the
/// number of values and the index just past its `]`. `None` (with `out` as it was) when the CPU
/// lacks AVX-512, `SUBPASS_KERNELS` caps the kernels below it, or the array is anything but a
/// well-formed non-empty flat array of numbers: the caller's scalar scanner then takes it.
pub(super) fn parse_flat(bytes: &[u8], open: usize, out: &mut Vec<f32>) -> Option<(usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    if x86::available() && bytes.get(open) == Some(&b'[') {
        let mark = out.len();
        // SAFETY: `available()` checked that this CPU has every feature `flat` enables;
        // `open + 1 <= bytes.len()`.
        match unsafe { x86::flat(bytes, open + 1, out) } {
            Some((n, close)) => return Some((n, close + 1)),
            None => out.truncate(mark),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, open, out);
    None
}

/// Whether [`parse_flat`] can take lines on this machine: what the tests expect of it.
#[cfg(test)]
fn enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use crate::io::number::parse_json_number;
    use crate::kernels::{isa, Isa};

    /// AVX-512 with the byte (BW), 64-bit conversion (DQ), conflict-detection (`lzcnt`, CD),
    /// 256-bit mask (VL), byte-permute (VBMI) and byte-compress (VBMI2) extensions: Ice Lake,
    /// Zen 4 and later; BMI1/2 for the bit scans; and the kernels not capped below AVX-512, so
    /// that `SUBPASS_KERNELS=avx2` runs the other path on this machine too.
    pub(super) fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            isa() == Isa::Avx512
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512cd")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vbmi")
                && is_x86_feature_detected!("avx512vbmi2")
                && is_x86_feature_detected!("bmi1")
                && is_x86_feature_detected!("bmi2")
                && is_x86_feature_detected!("popcnt")
        })
    }

    /// Blocks whose numbers are found before those found are valued, a round. Valued after
    /// every block, a block's one or two groups of eight ran 14–21% slower than four blocks'
    /// five or so at once (`cargo bench --bench numbers -- record_parser`, three alternated
    /// rounds: `decimals_3` 26.2 → 22.4 µs, `rounded_3` 28.7 → 22.5, `shortest_f32` 50.3 →
    /// 40.9, `repr_17` 66.8 → 52.5; presumably the group loop's exit, which went one way or the
    /// other block by block, mispredicted, but this VM has no counters to say). Two blocks gave
    /// two thirds of that; eight or sixteen no more than four.
    const ROUND: usize = 4;

    /// Numbers whose place is known but whose value is not yet: at most 7 left from the last
    /// group of eight, plus 32 starts from each block of a round and from the block before it
    /// (a number takes a byte and so does the comma or space after it; the end of one that
    /// ends at a block's last byte is the next block's); and room for a block's 32 positions
    /// written whole past them.
    const PENDING: usize = 8 + 32 * (ROUND + 2);

    /// The values of the numbers from `bytes[from]` to the first `]` (an array's inside), and
    /// that `]`'s index; or `None`. The blocks find the `]` as they go: a `memchr` for it
    /// first read every line twice (0.6% of `subpass run`'s CPU on the MLP).
    ///
    /// # Safety
    /// The CPU must have the features `available()` checks, and `from <= bytes.len()`.
    #[target_feature(
        enable = "avx512f,avx512bw,avx512dq,avx512cd,avx512vl,avx512vbmi,avx512vbmi2,bmi1,bmi2,popcnt"
    )]
    pub(super) unsafe fn flat(
        bytes: &[u8],
        from: usize,
        out: &mut Vec<f32>,
    ) -> Option<(usize, usize)> {
        debug_assert!(from <= bytes.len());
        // Positions fit the gather's 32-bit offsets (lines are far shorter; longer ones go to
        // the scalar scanner).
        if bytes.len() > i32::MAX as usize - 64 {
            return None;
        }
        let mut starts = [0u32; PENDING];
        let mut ends = [0u32; PENDING];
        let (mut pending_starts, mut pending_ends) = (0usize, 0usize);
        let mut done = 0usize; // numbers already valued
        let mut expect_comma = 0usize; // whether the next token must be a comma
        let (number_kind, comma_kind) = (_mm512_set1_epi8(1), _mm512_set1_epi8(2));
        let phases = [
            _mm512_set1_epi16(0x0201), // number, comma, number, …
            _mm512_set1_epi16(0x0102), // comma, number, comma, …
        ];
        let iota = _mm512_set_epi8(
            63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42,
            41, 40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20,
            19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
        );
        let mut structure_ok = true;
        let mut carry = 0u64; // 1 when the last block ended inside a number
        let mut complete_before = 0usize; // pending numbers whose end an earlier block found
        let mut blocks = 0usize;
        let (comma, space, tab, lf, cr) = (
            _mm512_set1_epi8(b',' as i8),
            _mm512_set1_epi8(b' ' as i8),
            _mm512_set1_epi8(b'\t' as i8),
            _mm512_set1_epi8(b'\n' as i8),
            _mm512_set1_epi8(b'\r' as i8),
        );
        let close_bracket = _mm512_set1_epi8(b']' as i8);
        let mut close = None;
        let mut pos = from;
        while close.is_none() && pos < bytes.len() {
            let mut n = (bytes.len() - pos).min(64);
            let mut valid = low_bits(n as u32);
            // SAFETY: the mask selects bytes pos..pos + n, all below `bytes.len()`; masked lanes
            // are not read (and cannot fault).
            let x = unsafe { _mm512_maskz_loadu_epi8(valid, bytes.as_ptr().add(pos).cast()) };
            // The array ends at the block's first `]`: the bytes from it on are not its.
            let closes = _mm512_cmpeq_epi8_mask(x, close_bracket) & valid;
            if closes != 0 {
                n = closes.trailing_zeros() as usize;
                valid = low_bits(n as u32);
                close = Some(pos + n);
            }
            let commas_here = _mm512_cmpeq_epi8_mask(x, comma) & valid;
            let white = (_mm512_cmpeq_epi8_mask(x, space)
                | _mm512_cmpeq_epi8_mask(x, tab)
                | _mm512_cmpeq_epi8_mask(x, lf)
                | _mm512_cmpeq_epi8_mask(x, cr))
                & valid;
            let number = valid & !(commas_here | white);
            let after_number = (number << 1) | carry;
            carry = number >> 63;
            // The tokens in order must alternate number, comma, number, … : compress a byte per
            // token (1 a number's start, 2 a comma) and compare with that pattern, in the phase
            // the blocks before left it in.
            let first = number & !after_number;
            let last = !number & after_number; // the byte after each number's last
            let tokens = first | commas_here;
            let kinds = _mm512_maskz_compress_epi8(
                tokens,
                _mm512_mask_mov_epi8(comma_kind, first, number_kind),
            );
            let in_order = _mm512_cmpeq_epi8_mask(kinds, phases[expect_comma]);
            let count = tokens.count_ones();
            structure_ok &= (in_order | !low_bits(count)) == !0;
            expect_comma ^= (count & 1) as usize;
            // Where the numbers start and end: the block's offsets, compressed, widened to u32.
            // All 32 entries are written; only the first popcount count.
            let block = _mm512_set1_epi32(pos as i32);
            for (bits, into, pending) in [
                (first, &mut starts, &mut pending_starts),
                (last, &mut ends, &mut pending_ends),
            ] {
                let offsets = _mm512_maskz_compress_epi8(bits, iota);
                let dst = &mut into[*pending..*pending + 32];
                let low =
                    _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm512_castsi512_si128(offsets)), block);
                let high = _mm512_add_epi32(
                    _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32::<1>(offsets)),
                    block,
                );
                // SAFETY: `dst` is 32 u32, the two 512-bit stores' 128 bytes.
                unsafe {
                    _mm512_storeu_si512(dst.as_mut_ptr().cast(), low);
                    _mm512_storeu_si512(dst.as_mut_ptr().add(16).cast(), high);
                }
                *pending += bits.count_ones() as usize;
            }
            // (A number that ends a full block ends at the next block's first byte, found
            // there through `carry`: the block holding the `]` is always read.)
            pos += n;
            // Once a round, value every whole group of eight numbers that were complete before
            // this block, and keep the rest for later. A block's positions wait one block before
            // they are read back as vectors: read at once, the 256-bit loads stall on the stores
            // still in flight, which cannot forward to them (it cost 12% of this function when
            // the positions were stored one u32 at a time).
            blocks += 1;
            if !blocks.is_multiple_of(ROUND) {
                complete_before = pending_ends;
                continue;
            }
            let whole = groups_of_eight(bytes, &starts, &ends, complete_before, out)?;
            complete_before = pending_ends - whole;
            starts.copy_within(whole..pending_starts, 0);
            ends.copy_within(whole..pending_ends, 0);
            pending_starts -= whole;
            pending_ends -= whole;
            done += whole;
        }
        let close = close?;
        let whole = groups_of_eight(bytes, &starts, &ends, pending_ends, out)?;
        let count = done + pending_starts;
        // Ending on a number (`expect_comma`) means one comma fewer than numbers.
        if !structure_ok || count == 0 || expect_comma == 0 || pending_ends != pending_starts {
            return None;
        }
        for i in whole..pending_ends {
            one(bytes, starts[i], ends[i], out)?;
        }
        Some((count, close))
    }

    /// Values the whole groups of eight among the first `complete` numbers of `starts`/`ends`:
    /// how many it valued, or `None` when one is not a number.
    #[target_feature(
        enable = "avx512f,avx512bw,avx512dq,avx512cd,avx512vl,avx512vbmi,avx512vbmi2,bmi1,bmi2,popcnt"
    )]
    fn groups_of_eight(
        bytes: &[u8],
        starts: &[u32],
        ends: &[u32],
        complete: usize,
        out: &mut Vec<f32>,
    ) -> Option<usize> {
        let whole = complete / 8 * 8;
        for group in (0..whole).step_by(8) {
            eight(
                bytes,
                &starts[group..group + 8],
                &ends[group..group + 8],
                out,
            )?;
        }
        Some(whole)
    }

    /// The lowest `count` bits set (`count <= 64`).
    fn low_bits(count: u32) -> u64 {
        if count >= 64 {
            !0
        } else {
            (1u64 << count) - 1
        }
    }

    /// The number at `bytes[start..end]` through the scalar parser, which must agree on its end.
    fn one(bytes: &[u8], start: u32, end: u32, out: &mut Vec<f32>) -> Option<()> {
        let (value, stop) = parse_json_number(bytes, start as usize).ok()?;
        (stop == end as usize).then(|| out.push(value))
    }

    /// Appends the values of eight numbers (`bytes[starts[j]..ends[j]]`, in order), or `None`
    /// when one is not a number.
    #[target_feature(
        enable = "avx512f,avx512bw,avx512dq,avx512cd,avx512vl,avx512vbmi,avx512vbmi2,bmi1,bmi2,popcnt"
    )]
    fn eight(bytes: &[u8], starts: &[u32], ends: &[u32], out: &mut Vec<f32>) -> Option<()> {
        let (starts, ends): (&[u32; 8], &[u32; 8]) =
            (starts.try_into().ok()?, ends.try_into().ok()?);
        // SAFETY: `starts` and `ends` are arrays of eight u32, the 256 bits each load reads.
        let (at, end) = unsafe {
            (
                _mm256_loadu_si256(starts.as_ptr().cast()),
                _mm256_loadu_si256(ends.as_ptr().cast()),
            )
        };
        let len = _mm512_cvtepu32_epi64(_mm256_sub_epi32(end, at));
        // Eight bytes a number where they all fit (most records), else sixteen (shortest f32
        // reprs, up to 15 digits); longer ones are the scalar parser's, one by one.
        let short = _mm512_cmple_epu64_mask(len, _mm512_set1_epi64(8)) == 0xFF;
        let sixteen = _mm512_cmple_epu64_mask(len, _mm512_set1_epi64(16)) == 0xFF;
        let width = if short {
            8
        } else if sixteen {
            16
        } else {
            24
        };
        // Each lane reads `width` bytes from its start; the last start is the largest.
        if starts[7] as usize + width > bytes.len() {
            for j in 0..8 {
                one(bytes, starts[j], ends[j], out)?;
            }
            return Some(());
        }
        let (values, valid) = if short {
            value_lanes(bytes_at(bytes, starts, width, 0), len)
        } else {
            value_lanes_16(
                bytes_at(bytes, starts, width, 0),
                bytes_at(bytes, starts, width, 8),
                match width {
                    24 => bytes_at(bytes, starts, width, 16),
                    _ => _mm512_setzero_si512(),
                },
                len,
            )
        };
        if valid == 0xFF {
            out.extend_from_slice(&values);
        } else if valid.count_ones() < 4 {
            // Mostly numbers this path does not take (long decimals, exponents): the line is
            // the scalar scanner's, which reads those faster without this path's work around it
            // (shortest f32 reprs ran 15% slower through here before they had a path).
            return None;
        } else {
            for j in 0..8 {
                if valid & (1 << j) != 0 {
                    out.push(values[j]);
                } else {
                    one(bytes, starts[j], ends[j], out)?;
                }
            }
        }
        Some(())
    }

    /// The eight bytes at `starts[j] + skip` as lane `j` of a vector (first byte lowest), for
    /// ascending `starts` with `starts[7] + width <= bytes.len()` and `skip + 8 <= width`. Other
    /// arguments give wrong lanes or a panic, never a read outside `bytes`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    fn bytes_at(bytes: &[u8], starts: &[u32; 8], width: usize, skip: usize) -> __m512i {
        assert!(skip + 8 <= width);
        // SAFETY: `starts` is eight u32, the 256 bits the load reads.
        let at = unsafe { _mm256_loadu_si256(starts.as_ptr().cast()) };
        let first = starts[0] as usize;
        if (starts[7] as usize).wrapping_sub(first) + width <= 128 {
            // Eight short numbers lie within 128 bytes: two loads and one byte permute bring
            // each one's bytes into its lane, where a gather (eight loads) took a fifth of the
            // time of this path. (Memory-safe whatever `starts` holds: the loads are masked to
            // `bytes`, and the permute reads only what they loaded.)
            let window = &bytes[first.min(bytes.len())..];
            // SAFETY: each mask selects bytes of `window` (masked lanes are not read and cannot
            // fault).
            let (low, high) = unsafe {
                let at = window.as_ptr();
                (
                    _mm512_maskz_loadu_epi8(low_bits(window.len().min(64) as u32), at.cast()),
                    _mm512_maskz_loadu_epi8(
                        low_bits(window.len().saturating_sub(64).min(64) as u32),
                        at.add(64.min(window.len())).cast(),
                    ),
                )
            };
            // Byte k of lane j comes from offset (start j - first) + skip + k of the window.
            let offsets =
                _mm512_cvtepu32_epi64(_mm256_sub_epi32(at, _mm256_set1_epi32(first as i32)));
            let spread = _mm512_shuffle_epi8(
                offsets,
                _mm512_set_epi64(
                    0x0808_0808_0808_0808,
                    0,
                    0x0808_0808_0808_0808,
                    0,
                    0x0808_0808_0808_0808,
                    0,
                    0x0808_0808_0808_0808,
                    0,
                ),
            );
            let step = 0x0706_0504_0302_0100 + 0x0101_0101_0101_0101 * skip as i64;
            let index = _mm512_add_epi8(spread, _mm512_set1_epi64(step));
            _mm512_permutex2var_epi8(low, index, high)
        } else {
            let fits = |&s: &u32| s as usize + width <= bytes.len().min(i32::MAX as usize);
            assert!(starts.iter().all(fits));
            // SAFETY: every start + skip + 8 <= start + width <= bytes.len(), and below
            // i32::MAX (asserted above), so each lane's eight bytes lie inside `bytes`.
            unsafe {
                _mm512_i32gather_epi64::<1>(
                    _mm256_add_epi32(at, _mm256_set1_epi32(skip as i32)),
                    bytes.as_ptr().cast(),
                )
            }
        }
    }

    /// Eight numbers, one per 64-bit lane of `x` (first byte lowest), `len` bytes each: their
    /// f32 values, and a bit per lane that is set where the lane was a JSON number of at most
    /// eight bytes (after its sign) whose value this computed.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512cd,avx512vl")]
    fn value_lanes(x: __m512i, len: __m512i) -> ([f32; 8], u8) {
        let zero = _mm512_setzero_si512();
        let one = _mm512_set1_epi64(1);
        let low_byte = _mm512_set1_epi64(0xFF);
        // The sign: drop it, and flip the value's sign bit at the end.
        let negative = _mm512_cmpeq_epi64_mask(
            _mm512_and_si512(x, low_byte),
            _mm512_set1_epi64(b'-' as i64),
        );
        let x = _mm512_mask_srli_epi64(x, negative, x, 8);
        let len = _mm512_mask_sub_epi64(len, negative, len, one);
        let len_ok =
            _mm512_cmpge_epu64_mask(len, one) & _mm512_cmple_epu64_mask(len, _mm512_set1_epi64(8));
        let inside = low_bytes(len);
        let in_number = _mm512_test_epi8_mask(inside, inside);
        let digit = _mm512_sub_epi8(x, _mm512_set1_epi8(b'0' as i8));
        let is_digit = _mm512_cmplt_epu8_mask(digit, _mm512_set1_epi8(10)) & in_number;
        let is_dot = _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(b'.' as i8)) & in_number;
        let stray = _mm512_movm_epi8(in_number & !(is_digit | is_dot));
        let has_stray = _mm512_test_epi64_mask(stray, stray);
        // At most one dot, not first, not last.
        let dots = _mm512_movm_epi8(is_dot);
        let first_dot = _mm512_and_si512(dots, _mm512_sub_epi64(zero, dots)); // its lowest bit
        let has_dot = _mm512_test_epi64_mask(dots, dots);
        let two_dots = _mm512_cmpneq_epi64_mask(dots, whole_byte(first_dot));
        let dot_first = _mm512_test_epi64_mask(dots, low_byte);
        let dot_last = has_dot & !_mm512_test_epi64_mask(_mm512_slli_epi64(first_dot, 8), inside);
        let leading_zero = leading_zero(digit, is_digit);
        // The digits without the dot, then moved to the top of the lane so that the bytes below
        // them are leading zeros: byte 0 is the most significant of eight digits.
        let before_dot = _mm512_sub_epi64(first_dot, one); // all ones when there is no dot
        let digits = _mm512_or_si512(
            _mm512_and_si512(digit, before_dot),
            _mm512_andnot_si512(before_dot, _mm512_srli_epi64(digit, 8)),
        );
        let count = _mm512_mask_sub_epi64(len, has_dot, len, one);
        let digits = _mm512_and_si512(digits, low_bytes(count));
        let digits = _mm512_sllv_epi64(
            digits,
            _mm512_sub_epi64(_mm512_set1_epi64(64), _mm512_slli_epi64(count, 3)),
        );
        let mantissa = eight_digits(digits);
        // Digits after the dot: len - 1 - (the dot's byte index).
        let fraction =
            _mm512_maskz_sub_epi64(has_dot, _mm512_sub_epi64(len, one), byte_index(first_dot));
        let (values, near_midpoint) = to_f32(mantissa, fraction, negative, 0);
        let valid = len_ok
            & !has_stray
            & !two_dots
            & !dot_first
            & !dot_last
            & !leading_zero
            & !near_midpoint;
        (values, valid)
    }

    /// [`value_lanes`] for numbers of up to sixteen bytes after the sign: bytes 0..8 of each in
    /// `low`, 8..16 in `high`; up to 15 digits with a dot, 16 without, and a mantissa below
    /// 2^53 (exact in f64).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512cd,avx512vl")]
    fn value_lanes_16(low: __m512i, high: __m512i, tail: __m512i, len: __m512i) -> ([f32; 8], u8) {
        let zero = _mm512_setzero_si512();
        let one = _mm512_set1_epi64(1);
        let ones = _mm512_set1_epi64(-1);
        let low_byte = _mm512_set1_epi64(0xFF);
        let eight = _mm512_set1_epi64(8);
        let sixteen = _mm512_set1_epi64(16);
        // The sign: the twenty-four bytes move down one.
        let negative = _mm512_cmpeq_epi64_mask(
            _mm512_and_si512(low, low_byte),
            _mm512_set1_epi64(b'-' as i64),
        );
        let (low, _) = down_one_byte(low, high, negative);
        let (high, tail) = down_one_byte(high, tail, negative);
        let len = _mm512_mask_sub_epi64(len, negative, len, one);
        let len_ok =
            _mm512_cmpge_epu64_mask(len, one) & _mm512_cmple_epu64_mask(len, _mm512_set1_epi64(24));
        // Past sixteen bytes, only digits after a dot in the first sixteen (Python's 17-digit
        // reprs): they are dropped, and the value is known to lie less than one unit of the
        // last kept digit above the kept digits' (see `to_f32`).
        let truncated = _mm512_cmpgt_epu64_mask(len, sixteen);
        let inside_tail = low_bytes(_mm512_subs_epu16(len, sixteen));
        let in_tail = _mm512_test_epi8_mask(inside_tail, inside_tail);
        let tail_digits = _mm512_cmplt_epu8_mask(
            _mm512_sub_epi8(tail, _mm512_set1_epi8(b'0' as i8)),
            _mm512_set1_epi8(10),
        );
        let tail_stray = _mm512_movm_epi8(in_tail & !tail_digits);
        let tail_stray = _mm512_test_epi64_mask(tail_stray, tail_stray);
        let len = _mm512_min_epu64(len, sixteen);
        let (inside_low, inside_high) = low_bytes_16(len);
        let in_low = _mm512_test_epi8_mask(inside_low, inside_low);
        let in_high = _mm512_test_epi8_mask(inside_high, inside_high);
        let zero_char = _mm512_set1_epi8(b'0' as i8);
        let (digit_low, digit_high) = (
            _mm512_sub_epi8(low, zero_char),
            _mm512_sub_epi8(high, zero_char),
        );
        let ten = _mm512_set1_epi8(10);
        let is_digit_low = _mm512_cmplt_epu8_mask(digit_low, ten) & in_low;
        let is_digit_high = _mm512_cmplt_epu8_mask(digit_high, ten) & in_high;
        let dot = _mm512_set1_epi8(b'.' as i8);
        let is_dot_low = _mm512_cmpeq_epi8_mask(low, dot) & in_low;
        let is_dot_high = _mm512_cmpeq_epi8_mask(high, dot) & in_high;
        let stray = _mm512_movm_epi8(
            (in_low & !(is_digit_low | is_dot_low)) | (in_high & !(is_digit_high | is_dot_high)),
        );
        // A stray byte in either half of lane j sets a byte of lane j in one mask or the other;
        // their OR is tested per lane.
        let has_stray = _mm512_test_epi64_mask(stray, stray);
        // At most one dot, not first, not last.
        let (dots_low, dots_high) = (_mm512_movm_epi8(is_dot_low), _mm512_movm_epi8(is_dot_high));
        let first_low = _mm512_and_si512(dots_low, _mm512_sub_epi64(zero, dots_low));
        let first_high = _mm512_and_si512(dots_high, _mm512_sub_epi64(zero, dots_high));
        let dot_in_low = _mm512_test_epi64_mask(dots_low, dots_low);
        let dot_in_high = _mm512_test_epi64_mask(dots_high, dots_high);
        let has_dot = dot_in_low | dot_in_high;
        let two_dots = (dot_in_low & dot_in_high)
            | _mm512_cmpneq_epi64_mask(dots_low, whole_byte(first_low))
            | _mm512_cmpneq_epi64_mask(dots_high, whole_byte(first_high));
        let dot_first = _mm512_test_epi64_mask(dots_low, low_byte);
        // The byte after the dot, as a bit in either half; no bit of the number there means
        // the dot was last.
        let (next_low, next_high) = (
            _mm512_slli_epi64(first_low, 8),
            _mm512_or_si512(
                _mm512_slli_epi64(first_high, 8),
                _mm512_srli_epi64(first_low, 56),
            ),
        );
        let dot_last = has_dot
            & !_mm512_test_epi64_mask(next_low, inside_low)
            & !_mm512_test_epi64_mask(next_high, inside_high);
        let leading_zero = leading_zero(digit_low, is_digit_low);
        // The digits without the dot: the bytes before it stay, the ones after move down one.
        let below_low = _mm512_mask_sub_epi64(ones, dot_in_low, first_low, one);
        let below_high = _mm512_maskz_mov_epi64(
            !dot_in_low,
            _mm512_mask_sub_epi64(ones, dot_in_high, first_high, one),
        );
        let (after_low, after_high) = down_one_byte(digit_low, digit_high, 0xFF);
        let count = _mm512_mask_sub_epi64(len, has_dot, len, one);
        let (keep_low, keep_high) = low_bytes_16(count);
        let digits_low = _mm512_and_si512(
            _mm512_or_si512(
                _mm512_and_si512(digit_low, below_low),
                _mm512_andnot_si512(below_low, after_low),
            ),
            keep_low,
        );
        let digits_high = _mm512_and_si512(
            _mm512_or_si512(
                _mm512_and_si512(digit_high, below_high),
                _mm512_andnot_si512(below_high, after_high),
            ),
            keep_high,
        );
        // Moved up by 128 - 8·count bits so that the bytes below are leading zeros (variable
        // shifts by 64 or more give 0, which takes care of the cases).
        let shift = _mm512_sub_epi64(_mm512_set1_epi64(128), _mm512_slli_epi64(count, 3));
        let sixty_four = _mm512_set1_epi64(64);
        let top = _mm512_or_si512(
            _mm512_or_si512(
                _mm512_sllv_epi64(digits_high, shift),
                _mm512_srlv_epi64(digits_low, _mm512_sub_epi64(sixty_four, shift)),
            ),
            _mm512_sllv_epi64(digits_low, _mm512_sub_epi64(shift, sixty_four)),
        );
        let bottom = _mm512_sllv_epi64(digits_low, shift);
        // `bottom` holds the eight most significant digits, `top` the eight least.
        let mantissa = _mm512_add_epi64(
            _mm512_mul_epu32(eight_digits(bottom), _mm512_set1_epi64(100_000_000)),
            eight_digits(top),
        );
        // Exact in f64; and where digits were dropped, at least 11 kept, so that they move the
        // value by less than 10^-10 of it (f32 needs 9 to round right).
        let exact = _mm512_cmplt_epu64_mask(mantissa, _mm512_set1_epi64(1 << 53))
            & !(truncated & _mm512_cmplt_epu64_mask(mantissa, _mm512_set1_epi64(10_000_000_000)));
        let dot_index = _mm512_mask_add_epi64(
            byte_index(first_low),
            !dot_in_low,
            byte_index(first_high),
            eight,
        );
        let fraction = _mm512_maskz_sub_epi64(has_dot, _mm512_sub_epi64(len, one), dot_index);
        let (values, near_midpoint) = to_f32(mantissa, fraction, negative, truncated);
        let valid = len_ok
            & !has_stray
            & !(truncated & (tail_stray | !has_dot))
            & !two_dots
            & !dot_first
            & !dot_last
            & !leading_zero
            & exact
            & !near_midpoint;
        (values, valid)
    }

    /// Sixteen bytes per lane (`low`, then `high`) moved down one byte in the lanes of `lanes`.
    #[target_feature(enable = "avx512f")]
    fn down_one_byte(low: __m512i, high: __m512i, lanes: __mmask8) -> (__m512i, __m512i) {
        let moved = _mm512_or_si512(_mm512_srli_epi64(low, 8), _mm512_slli_epi64(high, 56));
        (
            _mm512_mask_mov_epi64(low, lanes, moved),
            _mm512_mask_srli_epi64(high, lanes, high, 8),
        )
    }

    /// A lane's low `count` bytes set (`count` <= 8; a shift by 64 or more gives 0).
    #[target_feature(enable = "avx512f")]
    fn low_bytes(count: __m512i) -> __m512i {
        let ones = _mm512_set1_epi64(-1);
        _mm512_andnot_si512(_mm512_sllv_epi64(ones, _mm512_slli_epi64(count, 3)), ones)
    }

    /// The low `count` bytes of sixteen (`count` <= 16), as the two halves.
    #[target_feature(enable = "avx512f")]
    fn low_bytes_16(count: __m512i) -> (__m512i, __m512i) {
        let eight = _mm512_set1_epi64(8);
        let past_eight = _mm512_cmpgt_epu64_mask(count, eight);
        (
            low_bytes(count),
            _mm512_maskz_mov_epi64(past_eight, low_bytes(_mm512_sub_epi64(count, eight))),
        )
    }

    /// 0xFF in the byte of a lane's single set bit (0 where none is set).
    #[target_feature(enable = "avx512f")]
    fn whole_byte(bit: __m512i) -> __m512i {
        _mm512_sub_epi64(_mm512_slli_epi64(bit, 8), bit)
    }

    /// The byte index of a lane's single set bit.
    #[target_feature(enable = "avx512f,avx512cd")]
    fn byte_index(bit: __m512i) -> __m512i {
        _mm512_srli_epi64(
            _mm512_sub_epi64(_mm512_set1_epi64(63), _mm512_lzcnt_epi64(bit)),
            3,
        )
    }

    /// Lanes whose number starts with `0` and a digit after it (JSON has no leading zeros).
    #[target_feature(enable = "avx512f,avx512bw")]
    fn leading_zero(digit: __m512i, is_digit: __mmask64) -> __mmask8 {
        let digits_at = _mm512_movm_epi8(is_digit);
        _mm512_cmpeq_epi64_mask(
            _mm512_and_si512(digit, _mm512_set1_epi64(0xFF)),
            _mm512_setzero_si512(),
        ) & _mm512_test_epi64_mask(digits_at, _mm512_set1_epi64(0xFF00))
    }

    /// Eight decimal digits per lane (byte 0 the most significant, values 0..=9) as a number.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn eight_digits(digits: __m512i) -> __m512i {
        // Pairs (×10 + next), quads (×100 + next pair), then the two quads of the lane.
        let pairs = _mm512_maddubs_epi16(digits, _mm512_set1_epi16(0x010A));
        let quads = _mm512_madd_epi16(pairs, _mm512_set1_epi32(0x0001_0064));
        _mm512_add_epi64(
            _mm512_mul_epu32(quads, _mm512_set1_epi64(10_000)),
            _mm512_srli_epi64(quads, 32),
        )
    }

    /// `mantissa × 10^-fraction` (mantissa < 2^53, fraction <= 15) rounded to f32, negated in
    /// the `negative` lanes; and the lanes where that rounding may differ from the exact
    /// value's, which the scalar parser must take.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    fn to_f32(
        mantissa: __m512i,
        fraction: __m512i,
        negative: __mmask8,
        truncated: __mmask8,
    ) -> ([f32; 8], __mmask8) {
        // The mantissa is exact in f64, and the product is within 2^-52 of the exact value
        // (two roundings of 2^-53 each), so within 4 f64 ulps (2 in its binade, 4 across a
        // power of two). f32 keeps 24 of f64's 53 significand bits: rounding the product gives
        // the exact value's f32 unless an f32 rounding midpoint (dropped bits 1000…0) lies that
        // close. (With at most eight digits that happens only where the product is exact, on
        // odd integers from 2^24, whose tie rounds to even either way.) A multiply, not a
        // divide: `vdivpd` takes 16 cycles per eight lanes.
        let tenths_low = _mm512_setr_pd(1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7);
        let tenths_high = _mm512_setr_pd(1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14, 1e-15);
        let value = _mm512_mul_pd(
            _mm512_cvtepu64_pd(mantissa),
            _mm512_permutex2var_pd(tenths_low, fraction, tenths_high),
        );
        let dropped =
            _mm512_and_si512(_mm512_castpd_si512(value), _mm512_set1_epi64((1 << 29) - 1));
        // Where digits were dropped (`truncated`), the exact value lies up to 10^-10 of it
        // above the product too: under 2^20 of the product's ulps (10^-10 · 2^53 = 900,720),
        // so 2^20 + 4 below the midpoint to 4 above it goes to the scalar parser (0.2% of
        // such numbers).
        let near_midpoint = _mm512_cmple_epu64_mask(
            _mm512_sub_epi64(
                dropped,
                _mm512_mask_blend_epi64(
                    truncated,
                    _mm512_set1_epi64((1 << 28) - 4),
                    _mm512_set1_epi64((1 << 28) - (1 << 20) - 4),
                ),
            ),
            _mm512_mask_blend_epi64(
                truncated,
                _mm512_set1_epi64(8),
                _mm512_set1_epi64((1 << 20) + 8),
            ),
        );
        let value = _mm256_castps_si256(_mm512_cvtpd_ps(value));
        let value = _mm256_mask_xor_epi32(value, negative, value, _mm256_set1_epi32(i32::MIN));
        let mut values = [0f32; 8];
        // SAFETY: `values` is eight f32, the 256 bits the store writes.
        unsafe { _mm256_storeu_si256(values.as_mut_ptr().cast(), value) };
        (values, near_midpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[tokens joined by sep]` through the fast path: its values, or `None`.
    fn fast(tokens: &[String], sep: &str) -> Option<Vec<f32>> {
        let line = format!("[{}]\n", tokens.join(sep));
        let mut out = vec![7.0];
        match parse_flat(line.as_bytes(), 0, &mut out) {
            Some((n, end)) => {
                assert_eq!(end, line.len() - 1, "{line}");
                assert_eq!(n, tokens.len());
                assert_eq!(out.remove(0), 7.0, "what was in `out` stays");
                Some(out)
            }
            None => {
                assert_eq!(out, [7.0], "`out` is left as it was");
                None
            }
        }
    }

    /// Each token's value as Rust's correctly rounded `str::parse::<f32>` reads it.
    fn rust(tokens: &[String]) -> Vec<u32> {
        tokens
            .iter()
            .map(|t| t.parse::<f32>().unwrap().to_bits())
            .collect()
    }

    #[test]
    fn short_decimals_read_as_rust_reads_them() {
        // Every 4-decimal value in [-1, 1], written as Python writes rounded floats; integers
        // 0..=255; eight significant digits with the dot anywhere, and -0.
        let mut tokens: Vec<String> = (-10000..=10000)
            .map(|i| format!("{}", f64::from(i) / 10000.0))
            .chain((0..=255).map(|i: i32| i.to_string()))
            .collect();
        let mut next = crate::weights::seeded_stream(11, "eight-digits");
        for i in 0..40000 {
            // Eight bytes after the sign: eight digits, or seven and the dot.
            let digits = format!("{}", (next().abs() * 1e8) as u32 % 100_000_000 + 1);
            let at = 1 + i % digits.len();
            let digits = if at < digits.len() {
                &digits[..digits.len().min(7)]
            } else {
                &digits
            };
            let at = at.min(digits.len());
            let sign = if i % 3 == 0 { "-" } else { "" };
            tokens.push(match at == digits.len() {
                true => format!("{sign}{digits}"),
                false => format!("{sign}{}.{}", &digits[..at], &digits[at..]),
            });
        }
        tokens.extend(["-0", "0", "-0.0", "16777217", "0.5", "9999999.5"].map(String::from));
        // Up to 24 bytes, digits past the sixteenth dropped: Python's reprs of f32 values
        // widened to f64 (17 digits), and decimals cut just below or above an f32 rounding
        // midpoint, where dropping digits must not change the rounding.
        let mut next = crate::weights::seeded_stream(13, "python-reprs");
        for i in 0..30000 {
            let v = next() * 10f32.powi(i % 5 - 2);
            let midpoint = (f64::from(v) + f64::from(v.next_up())) / 2.0;
            // One in four near a midpoint, so that most groups still take this path.
            tokens.push(match i % 8 {
                1 => format!("{midpoint:.21}")[..19]
                    .trim_end_matches('.')
                    .to_string(),
                5 => format!("{:.17}", midpoint + midpoint.abs() * 1e-16),
                _ => format!("{}", f64::from(v)),
            });
        }
        // Up to sixteen bytes: shortest f32 reprs (Rust's, with no exponent) from 1e-3 to 1e4,
        // 13 decimals from a float64 tool, and odd integers past 2^24 (midpoints, exact).
        let mut next = crate::weights::seeded_stream(12, "sixteen-bytes");
        for i in 0..30000 {
            let v = next() * 10f32.powi(i % 7 - 3);
            tokens.push(match i % 3 {
                0 if v.abs() >= 1e-3 => format!("{v}"),
                0 | 1 => format!("{:.13}", v as f64 / 10.0),
                _ => format!("{}", (1u64 << 24) + 1 + 2 * (next().abs() * 1e9) as u64),
            });
        }
        for (i, line) in tokens.chunks(784).enumerate() {
            let sep = [",", ", ", " , ", ",\t", "\r\n,"][i % 5];
            match fast(line, sep) {
                Some(values) => {
                    let got: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, rust(line), "line {i}");
                }
                None => assert!(!enabled(), "line {i}: the fast path must take these"),
            }
        }
    }

    #[test]
    fn long_or_odd_numbers_among_short_ones_are_valued_too() {
        // Numbers this path hands to the scalar parser one by one, a few per line.
        let odd = [
            "0.1234567890123456789",
            "1e5",
            "-2.5E-3",
            "12345678901234567",
            "3.4028235e38",
            "0.30000001",
        ];
        let mut tokens: Vec<String> = (0..100).map(|i| format!("0.{i}")).collect();
        for (i, t) in odd.iter().enumerate() {
            tokens[i * 13 + 5] = t.to_string();
        }
        let got = fast(&tokens, ",");
        assert_eq!(got.is_some(), enabled());
        if let Some(values) = got {
            let got: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, rust(&tokens));
        }
    }

    #[test]
    fn anything_but_a_well_formed_array_is_handed_back() {
        // Among numbers of eight bytes or fewer, and of up to sixteen: both paths.
        for good in [
            (0..40).map(|i| format!("0.{i}")).collect::<Vec<String>>(),
            (0..40).map(|i| format!("-0.12345{i:03}")).collect(),
        ] {
            check_broken_lines(&good);
        }
        // Mostly long numbers: the scalar scanner's (see `eight`).
        let long: Vec<String> = (0..40)
            .map(|i| format!("0.123456789012345678901234{i}"))
            .collect();
        assert_eq!(fast(&long, ","), None);
    }

    #[test]
    fn the_array_ends_at_its_first_bracket_wherever_it_falls_in_a_block() {
        // Leading blanks move the last number's end across every byte of two blocks, and onto
        // a block's last byte, whose end the next block holds.
        let tokens: Vec<String> = ["1", "0.5", "12.25", "-3", "0.125", "7", "-0.5", "2.75"]
            .iter()
            .cycle()
            .take(19)
            .map(|t| t.to_string())
            .collect();
        let want = rust(&tokens);
        for pad in 0..140 {
            let line = format!("[{}{}]", " ".repeat(pad), tokens.join(","));
            let mut out = Vec::new();
            match parse_flat(line.as_bytes(), 0, &mut out) {
                Some((n, end)) => {
                    assert_eq!((n, end), (tokens.len(), line.len()), "pad {pad}");
                    let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "pad {pad}");
                }
                None => assert!(!enabled(), "pad {pad}"),
            }
        }
        // What follows the first `]` is not the array's; without one there is no array.
        let mut out = Vec::new();
        let got = parse_flat(b"[1, 2.5] 3,4]", 0, &mut out);
        if enabled() {
            assert_eq!((got, &out[..]), (Some((2, 8)), &[1.0, 2.5][..]));
        }
        let mut out = Vec::new();
        assert_eq!(parse_flat(b"[1, 2.5, 3", 0, &mut out), None);
        assert!(out.is_empty());
    }

    fn check_broken_lines(good: &[String]) {
        let broken = |at: usize, with: &str| {
            let mut t = good.to_vec();
            t[at] = with.to_string();
            t
        };
        let lines: Vec<(Vec<String>, &str)> = vec![
            (broken(3, "01"), ","),
            (broken(4, "-0123456789"), ","),
            (broken(9, "1."), ","),
            (broken(10, "123456789."), ","),
            (broken(11, "12345678."), ","),
            (broken(17, ".5"), ","),
            (broken(18, "-.123456789"), ","),
            (broken(20, "1.2.3"), ","),
            (broken(19, "1.234567.89"), ","),
            (broken(21, "--1"), ","),
            (broken(22, "-"), ","),
            (broken(23, "+1"), ","),
            (broken(24, "1x"), ","),
            (broken(31, "123456789x"), ","),
            (broken(25, "1 2"), ","),
            (broken(26, ""), ","),
            (broken(27, "NaN"), ","),
            (broken(28, "\"1\""), ","),
            (broken(29, "1e999"), ","),
            (broken(30, "[1"), ","),
            (broken(39, "0.5,"), ","),
            (broken(0, ",0.5"), ","),
            // A missing comma made up for by a doubled one, or by a leading one: the right
            // number of commas, in the wrong places.
            (broken(5, "1 2"), ","),
            (
                {
                    let mut t = broken(5, "1 2");
                    t[30] = String::new();
                    t
                },
                ",",
            ),
            (
                {
                    let mut t = broken(0, ",0.5");
                    t[39] = "0.5 0.6".into();
                    t
                },
                ",",
            ),
            (good.to_vec(), " "),
            (good.to_vec(), ",,"),
            (vec![], ","),
        ];
        for (tokens, sep) in &lines {
            assert_eq!(fast(tokens, sep), None, "{tokens:?} joined by {sep:?}");
        }
        // And the control: the unbroken line goes through, to Rust's values.
        match fast(good, ",") {
            Some(values) => {
                let got: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, rust(good));
            }
            None => assert!(!enabled(), "{good:?}"),
        }
    }
}
