//! The fast kernels the ops share: the portable matrix product, the packed dense kernel and the
//! direct convolution. Ops (in [`crate::ops`]) choose among them; nothing here knows about ops,
//! YAML or actors.
//!
//! Every public function here is safe for any arguments: sizes are checked with checked
//! arithmetic before any `unsafe` block runs, and types whose fields an `unsafe` block relies on
//! keep those fields private.

pub mod direct_conv;
pub mod gemm;
pub mod packed;
pub mod peak;

use std::sync::OnceLock;

/// The instruction sets a kernel may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust and the `gemm` crate: runs anywhere.
    Portable,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
}

/// The environment variable that forces the portable kernels (`SUBPASS_KERNELS=portable`), so
/// the paths other CPUs take are tested on this one too.
pub const KERNELS_ENV: &str = "SUBPASS_KERNELS";

/// The instruction set the fast kernels use: the best this CPU has, unless
/// `SUBPASS_KERNELS=portable`. Read once per process.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var(KERNELS_ENV).ok();
        match forced.as_deref() {
            Some("portable") => Isa::Portable,
            None | Some("" | "auto") => detect(),
            Some(other) => {
                tracing::warn!(
                    value = other,
                    "unknown {KERNELS_ENV} (expected `portable` or `auto`): using auto"
                );
                detect()
            }
        }
    })
}

fn detect() -> Isa {
    if cpu_has_avx2_fma() {
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

/// `a · b + c` for sizes, or `None` on overflow: the size checks in front of `unsafe` blocks use
/// this so that no wrap-around can make a too-small buffer look big enough.
pub(crate) fn span(count: usize, stride: usize, base: usize) -> Option<usize> {
    count.checked_mul(stride)?.checked_add(base)
}
