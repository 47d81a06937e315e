//! The portable matrix product: the `gemm` crate, single-threaded (a stage is the unit of
//! parallelism, so a kernel that spawned threads of its own would fight the other stages for the
//! cores). Dense layers and deep convolutions use [`super::packed`] where the CPU allows.

use super::span;

/// A matrix operand: element `(row, col)` is at `row·row_stride + col·col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct Strides {
    pub row: usize,
    pub col: usize,
}

/// The largest index a `rows × cols` operand with strides `s` reaches, or `None` on overflow.
fn last_index(s: Strides, rows: usize, cols: usize) -> Option<usize> {
    span(rows - 1, s.row, span(cols - 1, s.col, 0)?)
}

/// `c[m×n] += a[m×k] · b[k×n]` with any strides for `a` and `b`; `c` row-major with row stride
/// `c_row`. Panics if a strided index would leave a slice (or overflow `usize`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_acc_strided(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_s: Strides,
    b: &[f32],
    b_s: Strides,
    c: &mut [f32],
    c_row: usize,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let fits = |len: usize, last: Option<usize>| last.is_some_and(|l| l < len);
    assert!(
        fits(a.len(), last_index(a_s, m, k))
            && fits(b.len(), last_index(b_s, k, n))
            && fits(c.len(), span(m - 1, c_row, n - 1))
            && c_row >= n
            && [a_s.row, a_s.col, b_s.row, b_s.col, c_row]
                .iter()
                .all(|s| isize::try_from(*s).is_ok()),
        "matmul: buffers too small for {m}x{n}x{k} with the given strides"
    );
    // SAFETY: the assert above (checked arithmetic, no wrap-around) keeps every index the
    // strides reach inside the slices and every stride representable as `isize`; `c_row >= n`
    // keeps `c`'s rows from overlapping, and `c` does not alias `a` or `b` (it is borrowed
    // mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_row as isize,
            true,
            a.as_ptr(),
            a_s.col as isize,
            a_s.row as isize,
            b.as_ptr(),
            b_s.col as isize,
            b_s.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

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
    let b_s = if b_transposed {
        Strides { row: 1, col: k }
    } else {
        Strides { row: n, col: 1 }
    };
    matmul_acc_strided(m, n, k, a, Strides { row: k, col: 1 }, b, b_s, c, n);
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
