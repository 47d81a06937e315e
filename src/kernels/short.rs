//! Copies and zero fills of a few floats: a small map's padded row, the tail of a Winograd
//! tile row past the last tile. `copy_from_slice` and `fill`
//! of a length the compiler does not know are calls to libc's `memmove` and `memset`, whose
//! call and dispatch cost more than moving 14 floats: three a row were 8% of the 16→32 3×3
//! layer's time on 14×14 maps (`perf`). Here lengths are split into pieces of 16, 8, 4, 2 and 1
//! floats, each a fixed-size move the compiler writes inline; longer ones go to libc.

macro_rules! pieces {
    ($dst:ident, $src:ident, $op:expr) => {
        while $dst.len() >= 16 {
            let (d, rest) = std::mem::take(&mut $dst).split_at_mut(16);
            let (s, more) = $src.split_at(16.min($src.len()));
            $op(d, s);
            ($dst, $src) = (rest, more);
        }
        for n in [8, 4, 2, 1] {
            if $dst.len() >= n {
                let (d, rest) = std::mem::take(&mut $dst).split_at_mut(n);
                let (s, more) = $src.split_at(n.min($src.len()));
                $op(d, s);
                ($dst, $src) = (rest, more);
            }
        }
    };
}

/// Above this many floats libc's calls win: with pieces up to 32 floats, ResNet-18 at batch 8
/// spent 20% more time filling its padded images than with libc (`perf`, two runs each); up
/// to 16, as much as with libc, while the small CNN's 14-float rows keep their gain.
const LIBC_FROM: usize = 16;

/// `dst.copy_from_slice(src)`; panics if the lengths differ.
#[inline]
pub(crate) fn copy(mut dst: &mut [f32], mut src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "short copy: lengths differ");
    if dst.len() > LIBC_FROM {
        dst.copy_from_slice(src);
        return;
    }
    pieces!(dst, src, |d: &mut [f32], s: &[f32]| d.copy_from_slice(s));
}

/// `dst.fill(0.0)`.
#[inline]
pub(crate) fn fill_zero(mut dst: &mut [f32]) {
    if dst.len() > LIBC_FROM {
        dst.fill(0.0);
        return;
    }
    let mut none: &[f32] = &[];
    pieces!(dst, none, |d: &mut [f32], _: &[f32]| d.fill(0.0));
}

#[cfg(test)]
mod tests {
    /// Every length up to three pieces of 16 and a tail of each size: the same as the slice
    /// methods, and nothing outside the slice touched.
    #[test]
    fn short_copies_and_fills_equal_the_slice_methods() {
        for len in 0..=50 {
            let src: Vec<f32> = (0..len).map(|i| i as f32 + 0.5).collect();
            let mut buf = vec![-1.0f32; len + 2];
            super::copy(&mut buf[1..len + 1], &src);
            assert_eq!(&buf[1..len + 1], &src[..], "copy of {len}");
            assert_eq!(
                (buf[0], buf[len + 1]),
                (-1.0, -1.0),
                "copy of {len} spilled"
            );
            super::fill_zero(&mut buf[1..len + 1]);
            assert!(buf[1..len + 1].iter().all(|&v| v == 0.0), "fill of {len}");
            assert_eq!(
                (buf[0], buf[len + 1]),
                (-1.0, -1.0),
                "fill of {len} spilled"
            );
        }
    }
}
