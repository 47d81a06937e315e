//! The machine's FMA peak: what `bench` measures its figures against.
//!
//! Every core at once runs a loop of independent fused multiply-adds on registers only (no
//! memory traffic, enough accumulators to hide the FMA latency), so the figure is what the
//! arithmetic units can do, with all cores busy as they are in a pipeline. The loop uses the
//! widest vectors the CPU has, whatever `SUBPASS_KERNELS` caps the kernels to: on Zen 4 a 512-bit
//! FMA takes both 256-bit pipes and the two widths reach the same figure, but an Intel core with
//! two 512-bit FMA ports does twice the FLOPs with AVX-512, and an AVX2 loop there reported half
//! the peak (and kernels at 130% of it).

use std::time::{Duration, Instant};

use super::Isa;

/// Independent accumulators: more than FMA latency × FMA ports (4 × 2 on current x86 cores).
const ACCUMULATORS: usize = 12;
/// Vector lanes per accumulator (AVX2: eight f32).
const LANES: usize = 8;
/// Iterations between clock reads.
const BATCH: u64 = 1 << 16;

/// GFLOP/s of `threads` cores running FMAs for about `duration`, summed over the cores.
pub fn fma_peak_gflops(threads: usize, duration: Duration) -> f64 {
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| std::thread::spawn(move || one_core(duration)))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
}

fn one_core(duration: Duration) -> f64 {
    let isa = super::detect();
    let start = Instant::now();
    let mut flops = 0u64;
    let mut sink = 0.0f32;
    while start.elapsed() < duration {
        sink += fma_burst(isa, BATCH);
        flops += BATCH * burst_flops_per_round(isa);
    }
    std::hint::black_box(sink);
    flops as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// FLOPs one round of [`fma_burst`] does on `isa`: an FMA (2 FLOPs) on every lane of every
/// accumulator.
pub fn burst_flops_per_round(isa: Isa) -> u64 {
    let lanes = if isa == Isa::Avx512 { 16 } else { LANES };
    let accumulators = if isa == Isa::Avx512 {
        2 * ACCUMULATORS
    } else {
        ACCUMULATORS
    };
    (accumulators * lanes * 2) as u64
}

/// `rounds` rounds of register-only FMAs on `isa`'s vectors (AVX-512: 24 accumulators of 16
/// lanes; AVX2: 12 of 8), falling back to the portable loop where the CPU lacks `isa`. Returns
/// a sum so the work is not optimised away. What `benches/conv.rs` compares 256-bit and 512-bit
/// FMAs with: on Zen 4 both reach 116 GFLOP/s a core, a 512-bit FMA taking both 256-bit pipes.
pub fn fma_burst(isa: Isa, rounds: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && isa.available() {
        // SAFETY: the CPU has AVX-512F (checked on the line above).
        return unsafe { fma_loop_avx512(rounds) };
    }
    if isa == Isa::Portable {
        return fma_loop_portable(rounds);
    }
    fma_loop(rounds)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop_avx512(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); 2 * ACCUMULATORS];
    for _ in 0..iterations {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut total = _mm512_setzero_ps();
    for x in acc {
        total = _mm512_add_ps(total, x);
    }
    _mm512_reduce_add_ps(total)
}

/// `iterations` rounds of FMAs on every lane of every accumulator; returns a sum so the work is
/// not optimised away.
fn fma_loop(iterations: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::cpu_has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked on the line above).
        return unsafe { fma_loop_avx2(iterations) };
    }
    fma_loop_portable(iterations)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_avx2(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..iterations {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut total = _mm256_setzero_ps();
    for x in acc {
        total = _mm256_add_ps(total, x);
    }
    let lanes: [f32; LANES] = store_lanes(total);
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn store_lanes(v: std::arch::x86_64::__m256) -> [f32; LANES] {
    let mut out = [0.0f32; LANES];
    // SAFETY: `out` holds eight f32, the 32 bytes an unaligned 256-bit store writes.
    unsafe { std::arch::x86_64::_mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Elsewhere: multiply-adds the compiler vectorises as it can.
fn fma_loop_portable(iterations: u64) -> f32 {
    let mut acc = [[1.0f32; LANES]; ACCUMULATORS];
    for _ in 0..iterations {
        for x in acc.iter_mut() {
            for v in x.iter_mut() {
                *v = *v * 0.999_999 + 1e-7;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_a_positive_finite_rate() {
        let g = fma_peak_gflops(1, Duration::from_millis(20));
        assert!(g.is_finite() && g > 0.1, "{g}");
    }
}
