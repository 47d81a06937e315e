//! Parameter tensors: read from a memory-mapped safetensors file (F32, F16, BF16, F64, converted
//! to f32 once at load) or generated deterministically from a seed, and written back out (F32,
//! and PyTorch's int64 buffers).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::par;

/// Where parameters come from, opened once for the whole plan.
pub enum WeightStore {
    File { path: PathBuf, mmap: Mmap },
    Init { seed: u64 },
    None,
}

/// How `init` fills a tensor the file would otherwise provide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitKind {
    /// Uniform in ±1/√fan_in, PyTorch's default for Linear and Conv2d weights and biases.
    Uniform {
        fan_in: usize,
    },
    Constant(f32),
    /// Uniform in [low, high): batch-norm statistics of the kind a trained network has.
    Between {
        low: f32,
        high: f32,
    },
}

impl WeightStore {
    pub fn open_file(path: &Path) -> Result<WeightStore, String> {
        let file = File::open(path)
            .map_err(|e| format!("cannot open weights file {}: {e}", path.display()))?;
        // SAFETY: the file is mapped read-only; like every mmap user we rely on nobody truncating
        // it while we read it, which only happens during load (tensors are copied into f32 Vecs).
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| format!("cannot map weights file {}: {e}", path.display()))?;
        SafeTensors::deserialize(&mmap)
            .map_err(|e| format!("{} is not a valid safetensors file: {e:?}", path.display()))?;
        Ok(WeightStore::File {
            path: path.to_path_buf(),
            mmap,
        })
    }

    /// Every tensor name in the file (empty for `init`).
    pub fn names(&self) -> Vec<String> {
        match self {
            WeightStore::File { mmap, .. } => {
                let st = SafeTensors::deserialize(mmap).expect("validated at open");
                let mut names: Vec<String> = st.names().into_iter().cloned().collect();
                names.sort();
                names
            }
            _ => Vec::new(),
        }
    }

    /// The tensor `name`, which must have `shape`, as f32. Errors name the tensor and both shapes.
    pub fn fetch(&self, name: &str, shape: &[usize], init: InitKind) -> Result<Vec<f32>, String> {
        match self {
            WeightStore::File { path, mmap } => {
                let st = SafeTensors::deserialize(mmap).expect("validated at open");
                let t = st.tensor(name).map_err(|_| {
                    format!(
                        "tensor `{name}` is missing from {}; the layer needs shape {shape:?}",
                        path.display()
                    )
                })?;
                if t.shape() != shape {
                    return Err(format!(
                        "tensor `{name}` has shape {:?} in {}; the layer needs {shape:?}",
                        t.shape(),
                        path.display()
                    ));
                }
                to_f32(t.dtype(), t.data()).ok_or_else(|| {
                    format!(
                        "tensor `{name}` has dtype {:?}; supported: F32, F16, BF16, F64",
                        t.dtype()
                    )
                })
            }
            WeightStore::Init { seed } => Ok(generate(*seed, name, shape.iter().product(), init)),
            WeightStore::None => Err(format!(
                "the model needs tensor `{name}` {shape:?}: give `weights` or `init`"
            )),
        }
    }
}

impl WeightStore {
    /// The int64 scalar `name` if the file holds one (a PyTorch counter such as batch norm's
    /// `num_batches_tracked`); `None` for anything else, or for `init`.
    pub fn i64_scalar(&self, name: &str) -> Option<i64> {
        let WeightStore::File { mmap, .. } = self else {
            return None;
        };
        let st = SafeTensors::deserialize(mmap).expect("validated at open");
        let t = st.tensor(name).ok()?;
        let bytes: [u8; 8] = t.data().try_into().ok()?;
        (t.dtype() == Dtype::I64 && t.shape().is_empty()).then(|| i64::from_le_bytes(bytes))
    }
}

/// A tensor's values as f32, converted on every core: a safetensors file's values are read
/// from the page cache (or the disk) as they are converted, and ResNet-18's 47 MB or MiniLM's
/// 90 MB took most of their start-up one core at a time.
fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f32 + Sync) -> Vec<f32> {
        par::map_indices(data.len() / N, par::PIECE, |i| {
            f(data[i * N..i * N + N].try_into().expect("N bytes"))
        })
    }
    Some(match dtype {
        Dtype::F32 => each(data, f32::from_le_bytes),
        Dtype::F64 => each(data, |b| f64::from_le_bytes(b) as f32),
        Dtype::F16 => each(data, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => each(data, |b| half::bf16::from_le_bytes(b).to_f32()),
        _ => return None,
    })
}

/// Sets every subnormal value (nonzero, below `f32::MIN_POSITIVE` ≈ 1.2e-38 in magnitude) to
/// zero and returns how many there were.
///
/// Why: on Intel cores a multiply that reads a subnormal takes a microcode assist of a
/// hundred-odd cycles, and one subnormal in a 16-wide weight vector makes every FMA that loads
/// it take one.
/// Training with weight decay leaves such weights on inputs that never fire: the digits MLP's
/// `fc1` has 7 of 4,096, and its product ran 6.7× slower for them (1.71 → 11.4 µs a chunk of
/// 32). Read as zero, a product changes by less than 1.2e-38 · Σ|x|, below an f32 ulp of any
/// output that is not itself almost zero.
pub fn flush_subnormals(values: &mut [f32]) -> usize {
    // Counted first, in a loop that only reads and that LLVM vectorizes (u32 sums, a block at
    // a time, so that none can overflow): almost every tensor has none, and a branch per value
    // (`is_subnormal`, then a store) made this pass 7% of the MLP's start-up. A magnitude's
    // bits minus one are below 0x7f_ffff exactly when the value is subnormal (zero wraps to
    // the top).
    let subnormal = |v: f32| (v.to_bits() & 0x7fff_ffff).wrapping_sub(1) < 0x007f_ffff;
    let count = values
        .chunks(1 << 12)
        .map(|c| c.iter().map(|&v| subnormal(v) as u32).sum::<u32>() as usize)
        .sum();
    if count > 0 {
        for v in values.iter_mut().filter(|v| subnormal(**v)) {
            *v = 0.0;
        }
    }
    count
}

/// splitmix64's step: its state only counts up by this constant.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The state a stream labelled `label` starts from.
fn stream_start(seed: u64, label: &str) -> u64 {
    // FNV-1a of the label: a tensor's values do not change when other layers are added.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    seed ^ h
}

/// Value `i` of the stream that starts at `start`, uniform in [-1, 1) from the top 24 bits of
/// splitmix64's output, so that every value is an exact f32. splitmix64 is tiny, fast, and the
/// same on every machine, which is all `init` needs; its state only counts up, so value `i` is
/// a function of `i` alone, and a large tensor is generated on every core at once, the same
/// values as one after another.
fn seeded_value(start: u64, i: usize) -> f32 {
    let mut z = start.wrapping_add(GOLDEN_GAMMA.wrapping_mul(i as u64 + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

/// A stream of pseudo-random values in [-1, 1) that depends only on `seed` and `label`.
pub fn seeded_stream(seed: u64, label: &str) -> impl FnMut() -> f32 {
    let start = stream_start(seed, label);
    let mut i = 0;
    move || {
        i += 1;
        seeded_value(start, i - 1)
    }
}

/// `init`'s values for one tensor, generated on every core: the 1.9 M weights of the MLP took
/// a fifth of `subpass run`'s start-up one after another (with the page faults of writing
/// them, which now happen on every core too).
fn generate(seed: u64, name: &str, len: usize, init: InitKind) -> Vec<f32> {
    let start = stream_start(seed, name);
    match init {
        InitKind::Constant(c) => vec![c; len],
        InitKind::Between { low, high } => par::map_indices(len, par::PIECE, |i| {
            low + (seeded_value(start, i) + 1.0) * 0.5 * (high - low)
        }),
        InitKind::Uniform { fan_in } => {
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            par::map_indices(len, par::PIECE, |i| seeded_value(start, i) * bound)
        }
    }
}

/// The values of a tensor to write.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    /// PyTorch's integer buffers (batch norm's `num_batches_tracked`).
    I64(Vec<i64>),
}

/// Write tensors (name → shape and values) as a safetensors file (used by `subpass export`).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, TensorData)>,
) -> Result<(), String> {
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let (dtype, data) = match values {
                TensorData::F32(v) => {
                    (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                TensorData::I64(v) => {
                    (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
            };
            (name.clone(), shape.clone(), dtype, data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(name, shape, dtype, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .expect("sizes match");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path)
        .map_err(|e| format!("cannot write {}: {e:?}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subnormals_are_zeroed() {
        let tiny = f32::MIN_POSITIVE;
        let mut values = [
            0.0,
            -0.0,
            1e-40,
            -f32::from_bits(1),
            tiny,
            -tiny,
            tiny * (1.0 - f32::EPSILON),
            1.0,
            f32::INFINITY,
            f32::NAN,
        ];
        assert_eq!(flush_subnormals(&mut values), 3);
        let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = [
            0.0,
            -0.0,
            0.0,
            0.0,
            tiny,
            -tiny,
            0.0,
            1.0,
            f32::INFINITY,
            f32::NAN,
        ]
        .iter()
        .map(|v| v.to_bits())
        .collect();
        assert_eq!(bits, want);
    }

    #[test]
    fn init_is_deterministic_and_bounded() {
        let a = generate(7, "fc1.weight", 1000, InitKind::Uniform { fan_in: 100 });
        let b = generate(7, "fc1.weight", 1000, InitKind::Uniform { fan_in: 100 });
        let c = generate(8, "fc1.weight", 1000, InitKind::Uniform { fan_in: 100 });
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|x| x.abs() <= 0.1));
    }

    #[test]
    fn a_tensor_generated_on_every_core_is_the_stream_drawn_in_order() {
        // Several pieces of work and a ragged last one: each value must still be the one the
        // stream gives at its place (the Python fixtures' generator draws them in order).
        let len = 3 * par::PIECE + 77;
        let mut next = seeded_stream(7, "fc1.weight");
        let in_order: Vec<f32> = (0..len).map(|_| next() * 0.5).collect();
        let generated = generate(7, "fc1.weight", len, InitKind::Uniform { fan_in: 4 });
        assert_eq!(generated, in_order);
        let mut next = seeded_stream(3, "bn.var");
        let in_order: Vec<f32> = (0..len).map(|_| 0.5 + (next() + 1.0) * 0.5 * 1.5).collect();
        let between = InitKind::Between {
            low: 0.5,
            high: 2.0,
        };
        assert_eq!(generate(3, "bn.var", len, between), in_order);
    }

    #[test]
    fn every_dtype_converts_to_the_same_f32_on_every_core() {
        let len = 2 * par::PIECE + 5;
        let values: Vec<f32> = (0..len).map(|i| i as f32 * 0.25 - 1000.0).collect();
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(Dtype::F32, &f32_bytes), Some(values.clone()));
        let f64_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .collect();
        assert_eq!(to_f32(Dtype::F64, &f64_bytes), Some(values.clone()));
        // Quarter steps up to 1000 are exact in f16's 11 bits only below 512: compare with
        // the crate's own one-at-a-time conversion instead.
        let halves: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let expected: Vec<f32> = values
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect();
        assert_eq!(to_f32(Dtype::F16, &halves), Some(expected));
        assert_eq!(to_f32(Dtype::I64, &f32_bytes), None);
    }
}
