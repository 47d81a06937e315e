//! Parameter tensors: read from a memory-mapped safetensors file (F32, F16, BF16, F64, converted
//! to f32 once at load) or generated deterministically from a seed, and written back out (F32,
//! and PyTorch's int64 buffers).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

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

fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// splitmix64: tiny, fast, and the same on every machine, which is all `init` needs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), from the top 24 bits so every value is an exact f32.
    fn symmetric(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// A stream of pseudo-random values in [-1, 1) that depends only on `seed` and `label`.
pub fn seeded_stream(seed: u64, label: &str) -> impl FnMut() -> f32 {
    // FNV-1a of the label: a tensor's values do not change when other layers are added.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut rng = SplitMix64(seed ^ h);
    move || rng.symmetric()
}

fn generate(seed: u64, name: &str, len: usize, init: InitKind) -> Vec<f32> {
    match init {
        InitKind::Constant(c) => vec![c; len],
        InitKind::Between { low, high } => {
            let mut next = seeded_stream(seed, name);
            (0..len)
                .map(|_| low + (next() + 1.0) * 0.5 * (high - low))
                .collect()
        }
        InitKind::Uniform { fan_in } => {
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            let mut next = seeded_stream(seed, name);
            (0..len).map(|_| next() * bound).collect()
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
    fn init_is_deterministic_and_bounded() {
        let a = generate(7, "fc1.weight", 1000, InitKind::Uniform { fan_in: 100 });
        let b = generate(7, "fc1.weight", 1000, InitKind::Uniform { fan_in: 100 });
        let c = generate(8, "fc1.weight", 1000, InitKind::Uniform { fan_in: 100 });
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|x| x.abs() <= 0.1));
    }
}
