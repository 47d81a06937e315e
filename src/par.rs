//! Load-time work spread over every core: generating, converting and packing weights, and
//! building each layer's kernel, on rayon's global pool. Small work stays on the caller's
//! thread: handing it to the pool (and starting the pool, the first time) cost the small
//! models a fifth of their 2 ms start-up.

use rayon::prelude::*;

/// Values at least this many to a piece of work handed to another core: tens of microseconds
/// each, so that the hand-offs cost next to nothing.
pub const PIECE: usize = 1 << 15;

/// `f(0), f(1), …, f(len - 1)`, computed on every core when there are at least two pieces of
/// `piece` of them, else in order on this thread.
pub fn map_indices<T: Send>(len: usize, piece: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if len < 2 * piece {
        return (0..len).map(f).collect();
    }
    (0..len)
        .into_par_iter()
        .with_min_len(piece)
        .map(&f)
        .collect()
}

/// `f` over `items` in order, on every core when `heavy`, else on this thread.
pub fn map_vec<I: Send, T: Send>(
    items: Vec<I>,
    heavy: bool,
    f: impl Fn(usize, I) -> T + Sync,
) -> Vec<T> {
    if !heavy {
        return items
            .into_iter()
            .enumerate()
            .map(|(i, x)| f(i, x))
            .collect();
    }
    items
        .into_par_iter()
        .enumerate()
        .map(|(i, x)| f(i, x))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_give_the_values_in_order() {
        for len in [0, 1, 7, 2 * 64 - 1, 2 * 64, 1000] {
            let want: Vec<usize> = (0..len).map(|i| i * i).collect();
            assert_eq!(map_indices(len, 64, |i| i * i), want, "{len}");
        }
        for heavy in [false, true] {
            let got = map_vec(vec!["a", "b", "c"], heavy, |i, s| format!("{i}{s}"));
            assert_eq!(got, ["0a", "1b", "2c"]);
        }
    }
}
