//! Fuzzing on stable Rust: property tests (proptest) over everything that reads untrusted bytes.
//!
//! - `numbers`: JSON numbers read exactly as serde_json reads them (and as Rust's correctly
//!   rounded `str::parse::<f32>` does), shortest reprs round-trip, CSV numbers as Rust reads them;
//! - `lines`: the line reader against a plain reference splitter, over reads cut anywhere;
//! - `records`: chunks of JSON lines, CSV rows and text, valid records for configs/mlp.yaml mutated
//!   by structure (truncated, numbers replaced by `NaN`/`1e999`/`"1"`, nested, fields dropped or
//!   added, bytes that are not UTF-8) and by bytes; every line is accepted with serde_json's
//!   numbers or rejected with its line number, and no bad line costs a good one;
//! - `yaml`: the pipeline loader on arbitrary text, on structure-aware mutations of every file in
//!   configs/, and on alias bombs and deep nesting; it never panics or hangs, and every error
//!   says where.
//!
//! Each property runs its cases in a child process (proptest's fork mode) with a per-case
//! timeout, so a hang or a crash (a stack overflow aborts, it does not unwind) is a failure of
//! that case, saved with its seed in `tests/fuzz/*.proptest-regressions` and replayed first on
//! every later run.
//!
//! Budget: `SUBPASS_FUZZ_CASES` cases in all (default [`DEFAULT_CASES`], what CI runs), shared by
//! the properties in proportion to their weights; `SUBPASS_FUZZ_TIMEOUT_MS` per case (default
//! 10 s). `tools/fuzz.sh MINUTES` runs the whole set again and again with fresh seeds.

mod alloc;
mod lines;
mod numbers;
mod records;
mod regressions;
mod yaml;

use proptest::test_runner::{Config, FileFailurePersistence};

/// Cases in all when `SUBPASS_FUZZ_CASES` is not set: a few thousand, about 30 s in CI.
pub const DEFAULT_CASES: u32 = 4000;

/// The weights of all properties added up; each property's share of the cases is its weight
/// over this.
const TOTAL_WEIGHT: u32 = 100;

/// The proptest config of a property with `weight` parts of the case budget.
pub fn config(weight: u32) -> Config {
    let total = env_u32("SUBPASS_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let timeout = env_u32("SUBPASS_FUZZ_TIMEOUT_MS").unwrap_or(10_000);
    Config {
        cases: (u64::from(total) * u64::from(weight) / u64::from(TOTAL_WEIGHT)).max(1) as u32,
        // A case that runs longer than this is a hang; it runs in a child process so that it can
        // be stopped, and so that an abort (stack overflow) is reported as the case that did it.
        timeout,
        fork: true,
        // Regressions sit beside each property's file (`tests/fuzz/yaml.proptest-regressions`)
        // and are committed, as proptest's convention has it: every run replays them first.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        // Shrinking a slow case can take long; a minute of it is enough to get a readable one.
        max_shrink_time: 60_000,
        ..Config::default()
    }
}

fn env_u32(name: &str) -> Option<u32> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value} is not a number"),
    }
}

/// `v` as subpass reads it: a subnormal is read as zero of its sign (`src/io/number.rs` says
/// why), everything else as it is.
pub fn flushed(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// Whether `ours` is serde_json's reading of a number (`serde`, an f64) rounded to f32. They may
/// differ only where rounding twice differs from rounding once: when `serde` lies exactly halfway
/// between `ours` and the f32 next to it on `serde`'s side (2^128 past `f32::MAX`, where rounding
/// the f64 overflows and the decimal may not), both being as near.
pub fn same_as_serde(ours: f32, serde: f64) -> bool {
    if ours.to_bits() == flushed(serde as f32).to_bits() {
        return true;
    }
    let up = serde > f64::from(ours);
    let next = if up { ours.next_up() } else { ours.next_down() };
    let next = if next.is_finite() {
        f64::from(next)
    } else {
        2f64.powi(128).copysign(f64::from(next))
    };
    ours.is_finite() && (f64::from(ours) + next) / 2.0 == serde
}

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// The root of the repository.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
