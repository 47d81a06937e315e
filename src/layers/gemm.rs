//! The one matrix product every heavy layer goes through.
//!
//! Backed by the `gemm` crate, single-threaded: a stage is the unit of parallelism, so a kernel
//! that spawned threads of its own would fight the other stages for the two cores.

/// `c[m×n] += a[m×k] · b`, all row-major and contiguous, where `b` is given either as `[k×n]`
/// or, with `b_transposed`, as `[n×k]` (PyTorch's `[out, in]` weight layout, used as is).
pub fn matmul_acc(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    b_transposed: bool,
    c: &mut [f32],
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "matmul_acc: buffers too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return;
    }
    let (b_cs, b_rs) = if b_transposed {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: the asserts above guarantee every index the strides reach is inside the slices,
    // and `c` does not alias `a` or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], bt: bool) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let bv = if bt { b[j * k + p] } else { b[p * n + j] };
                    s += a[i * k + p] as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matches_naive_product_in_both_layouts() {
        for &(m, n, k) in &[(1, 7, 5), (3, 1, 9), (17, 33, 65), (64, 10, 128)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
                .collect();
            for bt in [false, true] {
                let mut c = vec![0.0; m * n];
                matmul_acc(m, n, k, &a, &b, bt, &mut c);
                let want = naive(m, n, k, &a, &b, bt);
                for (x, y) in c.iter().zip(&want) {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{m}x{n}x{k} bt={bt}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
