//! The fast kernels the ops share: the portable matrix product, the packed dense kernel, and the
//! convolution family (the register-blocked multi-tap kernel in [`conv_block`], fed by a direct
//! padded image in [`conv_direct`], an im2col matrix in [`im2col`] or Winograd transforms in
//! [`winograd`]). Ops (in [`crate::ops`]) choose among them; nothing here knows about ops, YAML
//! or actors.
//!
//! Every public function here is safe for any arguments: sizes are checked with checked
//! arithmetic before any `unsafe` block runs, and types whose fields an `unsafe` block relies on
//! keep those fields private.

pub mod conv_block;
pub mod conv_direct;
pub mod conv_lanes;
pub mod gemm;
pub mod im2col;
pub mod math;
pub mod packed;
pub mod peak;
mod short;
pub mod team;
pub mod winograd;

use std::sync::OnceLock;

/// The instruction sets a kernel may use, from the least to the most demanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust and the `gemm` crate: runs anywhere.
    Portable,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// x86-64 with AVX-512F, AVX2 and FMA. Zen 4 runs a 512-bit FMA as two 256-bit halves, so
    /// it adds no FLOPs there; what it adds is 32 vector registers (bigger register blocks) and
    /// masked loads and stores (ragged edges without scalar loops).
    Avx512,
}

impl Isa {
    /// The name `SUBPASS_KERNELS` takes and messages print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether kernels written for AVX2+FMA may run: true for AVX-512 too, which includes them.
    pub fn has_avx2_fma(self) -> bool {
        self >= Isa::Avx2Fma
    }

    /// Whether this CPU can run kernels for `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2Fma => cpu_has_avx2_fma(),
            Isa::Avx512 => cpu_has_avx512(),
        }
    }

    /// Every instruction set, least demanding first: what tests iterate over.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2Fma, Isa::Avx512];
}

/// The environment variable that caps the instruction set the kernels use
/// (`SUBPASS_KERNELS=portable` or `avx2`), so the paths other CPUs take are tested on this one
/// too.
pub const KERNELS_ENV: &str = "SUBPASS_KERNELS";

/// The instruction set the fast kernels use: the best this CPU has, capped by
/// `SUBPASS_KERNELS` (`portable`, `avx2`, `avx512` or `auto`). Read once per process.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var(KERNELS_ENV).ok();
        let best = detect();
        let cap = match forced.as_deref() {
            None | Some("" | "auto") => return best,
            Some(name) => Isa::ALL.into_iter().find(|i| i.name() == name),
        };
        match cap {
            Some(cap) if cap <= best => cap,
            Some(cap) => {
                tracing::warn!(
                    value = cap.name(),
                    best = best.name(),
                    "{KERNELS_ENV} asks for kernels this CPU cannot run: using the best it has"
                );
                best
            }
            None => {
                tracing::warn!(
                    value = forced.as_deref().unwrap_or_default(),
                    "unknown {KERNELS_ENV} (expected `portable`, `avx2`, `avx512` or `auto`): using auto"
                );
                best
            }
        }
    })
}

fn detect() -> Isa {
    if cpu_has_avx512() {
        Isa::Avx512
    } else if cpu_has_avx2_fma() {
        Isa::Avx2Fma
    } else {
        Isa::Portable
    }
}

/// Whether the CPU itself runs AVX2 and FMA, whatever [`isa`] chose. The `unsafe` AVX2 blocks
/// check this, so even a kernel built for AVX2 by mistake could never execute an instruction the
/// CPU lacks.
pub(crate) fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU runs AVX-512F as well as AVX2 and FMA (the AVX-512 kernels use all three).
pub(crate) fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu_has_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `a · b + c` for sizes, or `None` on overflow: the size checks in front of `unsafe` blocks use
/// this so that no wrap-around can make a too-small buffer look big enough.
pub(crate) fn span(count: usize, stride: usize, base: usize) -> Option<usize> {
    count.checked_mul(stride)?.checked_add(base)
}
