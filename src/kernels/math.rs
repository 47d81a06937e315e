//! Branch-free f32 functions for the activations and attention: eˣ, tanh, the logistic sigmoid,
//! erf and softmax.
//!
//! Why not libm's: `expf`, `tanhf` and `erff` branch on their argument and call out of line, so
//! a loop over them runs one value at a time. These are polynomials and selects the compiler
//! turns into vector code (in [`map`], eight lanes at a time on AVX2). Through libm, the 8-wide
//! `tanh` output of `configs/residual.yaml` took a quarter of its one-thread time, and erf in
//! GELU 12% of all-MiniLM-L6-v2's.
//!
//! A product that reads a subnormal takes a microcode assist on Intel cores (see
//! `kernels::packed`), and the next layer reads what these write. `exp` and `sigmoid` never
//! return one, and `tanh` and `erf` only for a subnormal argument (the parser and the dense
//! kernels pass none on). Two can still make one of a normal value: GELU of x within about
//! 2.4e−38 of zero, and a softmax weight below the smallest normal times its row's sum.

/// `f` applied to every value of `data`, in vectors where the CPU has them ([`vectorised`]).
#[inline(always)]
pub fn map(data: &mut [f32], f: impl Fn(f32) -> f32) {
    vectorised(|| data.iter_mut().for_each(|x| *x = f(*x)))
}

/// `work`, compiled for AVX2 and FMA where the CPU has them: loops over the functions of this
/// module inlined into it then run eight lanes at a time.
#[inline(always)]
pub fn vectorised<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if super::isa().has_avx2_fma() {
        // SAFETY: `isa()` reports AVX2+FMA, or AVX-512 (which needs both), only when the CPU has
        // them.
        return unsafe { on_avx2(work) };
    }
    work()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn on_avx2<R>(work: impl FnOnce() -> R) -> R {
    work()
}

/// eˣ as 2ⁿ·p(r), with r = x − n·ln 2 in [−ln2/2, ln2/2] and p Cephes' degree-6 polynomial:
/// within 1 ulp of `f32::exp` over [−87.3, 88] (`tests` checks a 0.001 grid; a 1e−6 grid
/// agreed). Beyond, x is clamped there: below −87.3, eˣ would be subnormal (e^−87.3 ≈ 1.2e−38,
/// the smallest normal, stands for it), and above 88 the result would overflow 2ⁿ's exponent
/// (e^88 ≈ 1.7e38 stands for it; f32's largest is 3.4e38).
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients, as published
pub fn exp(x: f32) -> f32 {
    // `clamp` is two comparisons, which vectorise (unlike `f32::min`/`max`'s NaN rules).
    let x = x.clamp(-87.3, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so n·ln2 is subtracted without losing r's low bits.
    let r = x - n * 0.693_359_375 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// tanh as Cephes' `tanhf`, both branches computed and one selected: x + x³·P(x²) for
/// |x| < 0.625, where 1 − 2/(e^2|x| + 1) would cancel, and that (with x's sign) beyond. Beyond
/// |x| = 9.1, tanh rounds to ±1 in f32, so |x| is clamped at 10. Within 2 ulp of
/// `f32::tanh` (`tests` checks a 0.001 grid over [−12, 12]; a 1e−6 grid agreed).
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients, as published
pub fn tanh(x: f32) -> f32 {
    // `clamp`, not `min`: a NaN stays NaN.
    let a = x.abs().clamp(0.0, 10.0);
    let z = x * x;
    let mut p = -5.704_988_7e-3;
    p = p * z + 2.063_908_9e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 1.333_144_2e-1;
    p = p * z - 3.333_328_2e-1;
    let small = p * z * x + x;
    let large = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// The logistic function 1 / (1 + e^−x). For x below −87.3 it returns about 1.2e−38, the
/// smallest normal number, where the exact value is smaller still (or subnormal).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp((-x).clamp(-87.3, 87.3)))
}

/// erf as a rational function of x on [−4, 4] (beyond which erf is ±1 in f32): the
/// approximation Eigen and XLA use, within 3.2e−7 of the exact erf everywhere (measured against
/// f64 quadrature on a 0.001 grid over [−6, 6]; `tests` below checks it against `libm::erf`).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, as published
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08;
    p = x2 * p - 2.10102402082508e-06;
    p = x2 * p - 5.69250639462346e-05;
    p = x2 * p - 7.34990630326855e-04;
    p = x2 * p - 2.95459980854025e-03;
    p = x2 * p - 1.60960333262415e-02;
    let mut q = x2 * -1.45660718464996e-05 - 2.13374055278905e-04;
    q = x2 * q - 1.68282697438203e-03;
    q = x2 * q - 7.37332916720468e-03;
    q = x2 * q - 1.42647390514189e-02;
    x * p / q
}

/// Values of a row compared for its maximum side by side, so that the comparisons vectorise (a
/// single running `max` is a scalar chain).
const MAX_LANES: usize = 16;

/// Softmax over `row` in place, the maximum subtracted so [`exp`] never overflows.
#[inline(always)]
pub fn softmax(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; MAX_LANES];
    for chunk in row.chunks(MAX_LANES) {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    let max = lanes.into_iter().fold(f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many representable f32 values lie between `a` and `b`.
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let bits = v.to_bits() as i32;
            if bits < 0 {
                i32::MIN - bits
            } else {
                bits
            }
        };
        key(a).abs_diff(key(b))
    }

    #[test]
    fn exp_is_within_1_ulp_on_its_range_and_clamped_beyond() {
        for i in -87_300..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (exp(x), x.exp());
            assert!(ulps(got, want) <= 1, "exp({x}) = {got}, not {want}");
        }
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(-1000.0).is_normal());
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(f32::INFINITY).is_finite());
    }

    #[test]
    fn tanh_is_within_2_ulp_of_libm() {
        for i in -12_000..=12_000 {
            // Steps of 0.001 near zero, where the two branches meet, and up to ±12.
            let x = i as f32 / 1000.0;
            let (got, want) = (tanh(x), x.tanh());
            assert!(ulps(got, want) <= 2, "tanh({x}) = {got}, not {want}");
        }
        for x in [1e-30, -1e-30, 1e-7, -1e-7, 0.624_999_9, 0.625, -0.625] {
            assert!(ulps(tanh(x), x.tanh()) <= 2, "tanh({x}) = {}", tanh(x));
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn sigmoid_is_close_to_its_definition_and_never_subnormal() {
        for i in -100_000..=100_000 {
            let x = i as f32 / 1000.0;
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let got = sigmoid(x) as f64;
            // Relative error, or about the smallest normal in absolute terms far left.
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON as f64 * want
                    || (got - want).abs() <= 1.25e-38,
                "sigmoid({x}) = {got}, not {want}"
            );
            assert!(sigmoid(x) == 0.0 || sigmoid(x).is_normal(), "sigmoid({x})");
        }
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert!(sigmoid(f32::NEG_INFINITY).is_normal());
        assert!(sigmoid(f32::NAN).is_nan());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_4e_7_of_libm() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            worst = worst.max((erf(x as f32) as f64 - libm::erf(x)).abs());
        }
        assert!(worst < 4e-7, "{worst:e}");
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_scores() {
        let mut row = [1000.0f32, 999.0, -1000.0, 0.5];
        softmax(&mut row);
        let e = (-1.0f64).exp();
        assert!((row[0] as f64 - 1.0 / (1.0 + e)).abs() < 1e-6, "{row:?}");
        assert!((row[1] as f64 - e / (1.0 + e)).abs() < 1e-6, "{row:?}");
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
