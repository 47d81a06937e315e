//! The memory bound `validate` prints holds: a counting global allocator watches the heap while
//! real pipelines stream records with their output stalled (every queue fills and every admitted
//! chunk is held), and the peak stays within
//!
//!   parameters + activation bound + read-ahead text + read buffer + ALLOWANCE
//!
//! where the first four are the figures the plan prints, and the read-ahead is the printed
//! record count times the longest line of this input. The test also reports how tight the bound
//! is (bound / measured).
//!
//! With `--features fail-points`, every pipeline runs a second time with panics injected on a few
//! records in every stage: the bound must hold while stages restart and isolate those records
//! (and the isolated records must come out as errors, the budget slots all given back).
//!
//! One `#[test]` runs every pipeline in turn: the allocator counts every thread of the process,
//! so nothing else may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};

use subpass::graph::Plan;
use subpass::io::InputFormat;
use subpass::runtime::{run_stream, RunOptions};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's own layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds realloc's contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now =
                    CURRENT.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the bound leaves out, all of it independent of batch size and record count:
/// - the reader's line-assembly buffer (one line, at most 64 KiB here; its read buffer is
///   counted with the printed figures);
/// - per-thread state (channel slots, the env of each worker, thread names, tracing): about
///   a few KiB per thread, for at most ~12 threads;
/// - each chunk's record metadata (line numbers, about 64 bytes a record) and the formatted
///   output text the sink writes (one chunk's lines at a time): at most 256 KiB here;
/// - the plan's own structures beyond parameters (names, shapes, routes): a few KiB.
///
/// 960 KiB: the 1 MiB this was while it held the read buffer, less that buffer's 64 KiB.
const ALLOWANCE: usize = (1 << 20) - (64 << 10);

/// Synthetic records made on the fly, so the input itself takes no heap: JSON lines of
/// `values` numbers, or for a text pipeline (`values == 0`) sentences of 1 to 40 words, or for
/// an image pipeline the paths in `paths`, in turn.
struct Records {
    values: usize,
    paths: Vec<String>,
    left: usize,
    produced: Arc<AtomicUsize>,
    line: Vec<u8>,
    at: usize,
}

impl Records {
    fn make_line(&mut self) {
        self.line.clear();
        if !self.paths.is_empty() {
            let n = self.produced.load(Relaxed);
            self.line
                .extend_from_slice(self.paths[n % self.paths.len()].as_bytes());
            self.line.push(b'\n');
            self.at = 0;
            return;
        }
        if self.values == 0 {
            let n = self.produced.load(Relaxed);
            for w in 0..1 + n * 7 % TEXT_WORDS {
                self.line.extend_from_slice(if w % 3 == 0 {
                    b"streaming "
                } else {
                    b"tokens "
                });
            }
            self.line.push(b'\n');
            self.at = 0;
            return;
        }
        self.line.push(b'[');
        for i in 0..self.values {
            if i > 0 {
                self.line.push(b',');
            }
            let v = ((self.produced.load(Relaxed) * 31 + i * 7) % 2001) as f32 / 1000.0 - 1.0;
            write!(self.line, "{v:.3}").unwrap();
        }
        self.line.extend_from_slice(b"]\n");
        self.at = 0;
    }
}

impl Read for Records {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.line.len() {
            if self.left == 0 {
                return Ok(0);
            }
            self.make_line();
            self.left -= 1;
            self.produced.fetch_add(1, Relaxed);
        }
        let n = buf.len().min(self.line.len() - self.at);
        buf[..n].copy_from_slice(&self.line[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Discards output, but blocks until the gate opens: while it is closed, the pipeline fills up
/// behind the stalled output as far as its bounds let it.
struct StalledWriter {
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Write for StalledWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let (open, cv) = &*self.gate;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Most words in a synthetic sentence; `streaming ` is the longest word, 10 bytes.
const TEXT_WORDS: usize = 40;

struct Measured {
    bound: usize,
    peak: usize,
}

/// Pipelines whose records hold more values than this (images: ResNet-18's are 150,528) run
/// at batch [`BIG_RECORD_BATCH`], which keeps the records streamed (and the test's time) small:
/// the bound is then checked for that plan, the same stages at a smaller chunk.
const BIG_RECORD: usize = 100_000;
const BIG_RECORD_BATCH: usize = 2;

/// Panics to inject: for stage `k` of the plan, the records at lines `2 + k`, the middle line plus
/// `7k`, and the last line less `k` (distinct lines, so each is one error line).
fn faults(plan: &Plan, records: usize) -> Vec<String> {
    plan.stages
        .iter()
        .enumerate()
        .flat_map(|(k, s)| {
            [2 + k, records / 2 + 7 * k, records - k].map(|line| format!("{}#{line}", s.name))
        })
        .collect()
}

fn measure(path: &Path, batch: Option<usize>, inject: bool) -> Measured {
    let base = CURRENT.load(Relaxed);
    let plan = Arc::new(Plan::load_with_batch(path, batch).unwrap());
    let text = plan.tokenizer.is_some();
    let paths: Vec<String> = match plan.image {
        Some(_) => ["china.jpg", "flower-640-progressive.jpg", "flower.jpg"]
            .iter()
            .map(|p| format!("{}/tests/fixtures/images/{p}", env!("CARGO_MANIFEST_DIR")))
            .collect(),
        None => Vec::new(),
    };
    let values = if text { 0 } else { plan.input_len() };
    // The longest line this input has: `-1.000,` per value, 40 words of text, or a path.
    let line_bytes = if text {
        TEXT_WORDS * 10 + 1
    } else if !paths.is_empty() {
        paths.iter().map(|p| p.len() + 1).max().unwrap()
    } else {
        values * 7 + 2
    };
    let params: u64 = plan.stages.iter().map(|s| s.param_bytes).sum();
    let bound = params as usize
        + plan.budget.activation_bytes() as usize
        + plan.max_records_read_ahead() * line_bytes
        + plan.read_buffer_bytes()
        + ALLOWANCE;
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let produced = Arc::new(AtomicUsize::new(0));
    let image = !paths.is_empty();
    // Enough to fill every slot behind the stall, then as many again to stream through.
    let records = 3 * plan.max_records_read_ahead();
    let injected = if inject {
        faults(&plan, records)
    } else {
        Vec::new()
    };
    #[cfg(feature = "fail-points")]
    if inject {
        fail::cfg("stage", &format!("return({})", injected.join(","))).unwrap();
    }
    let input = Records {
        values,
        paths,
        left: records,
        produced: produced.clone(),
        line: Vec::with_capacity(line_bytes),
        at: 0,
    };
    // The stall ends once subpass has stopped reading (no new record for 300 ms): it is then as
    // full as its bounds let it get. This decides only how full the pipeline gets before it
    // drains; the assertion (peak within the bound) must hold at every moment either way.
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            let mut last = usize::MAX;
            loop {
                std::thread::sleep(std::time::Duration::from_millis(300));
                let now = produced.load(Relaxed);
                if now == last {
                    break;
                }
                last = now;
            }
            let (open, cv) = &*gate;
            *open.lock().unwrap() = true;
            cv.notify_all();
        })
    };
    PEAK.store(CURRENT.load(Relaxed), Relaxed);
    let (_stop, never) = crossbeam_channel::bounded(1);
    let options = RunOptions {
        max_line_bytes: line_bytes,
        // A restart per injected panic, all within the minute.
        max_restarts: injected.len() as u32,
        format: if text {
            InputFormat::Text
        } else if image {
            InputFormat::Paths
        } else {
            InputFormat::JsonLines
        },
        ..RunOptions::default()
    };
    let report = run_stream(
        plan,
        Box::new(input),
        Box::new(StalledWriter { gate }),
        Box::new(std::io::sink()),
        &options,
        never,
    )
    .unwrap();
    #[cfg(feature = "fail-points")]
    fail::remove("stage");
    opener.join().unwrap();
    assert_eq!(report.stats.records_rejected, injected.len() as u64);
    assert_eq!(report.stats.records_in, records as u64);
    Measured {
        bound,
        // Saturating: what a previous run's threads free late would otherwise wrap around.
        peak: PEAK.load(Relaxed).saturating_sub(base),
    }
}

#[test]
fn peak_heap_stays_within_the_printed_bound() {
    // As `subpass run` does: a stage's panic is reported by the runtime, without the default
    // hook's message and backtrace (whose symbols alone take tens of MB).
    subpass::runtime::quiet_stage_panics();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs: Vec<_> = std::fs::read_dir(root.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 5, "{configs:?}");
    // An image pipeline whose size limits (max_side 640, max_bytes 200 kB) just admit the
    // photos, among them a 640x640 progressive 4:4:4 JPEG (the decoder's largest buffers per
    // pixel), so that the bound on decoding an image is close to what decoding takes.
    let images = tempfile::tempdir().unwrap();
    let fixtures = root.join("tests/fixtures/images");
    std::fs::copy(
        fixtures.join("labels.txt"),
        images.path().join("labels.txt"),
    )
    .unwrap();
    let yaml = std::fs::read_to_string(fixtures.join("classifier.yaml"))
        .unwrap()
        .replace(
            "std: [0.229, 0.224, 0.225]}",
            "std: [0.229, 0.224, 0.225], max_side: 640, max_bytes: 200000}",
        );
    assert!(yaml.contains("max_side: 640"));
    std::fs::write(images.path().join("classifier.yaml"), &yaml).unwrap();
    configs.push(images.path().join("classifier.yaml"));
    // Stages whose replicas parse (`parse: true`): the MLP as `subpass plan` writes it, and the
    // classifier decoding its images on its two workers instead of parser threads.
    let parsing =
        "stages:\n  - {name: all, layers: [\"conv..probs\"], replicas: 2, parse: true}\nbatch:";
    std::fs::write(
        images.path().join("classifier-parsing.yaml"),
        yaml.replace("batch:", parsing),
    )
    .unwrap();
    configs.push(images.path().join("classifier-parsing.yaml"));
    let mlp = std::fs::read_to_string(root.join("configs/mlp.yaml")).unwrap();
    let (head, tail) = mlp.split_once("stages:").unwrap();
    let tail = &tail[tail.find("batch:").unwrap()..];
    std::fs::write(
        images.path().join("mlp-parsing.yaml"),
        format!("{head}stages:\n  - {{name: all, layers: [\"fc1..logits\"], replicas: 2, parse: true, queue: 6}}\n{tail}"),
    )
    .unwrap();
    configs.push(images.path().join("mlp-parsing.yaml"));
    let mut failures = Vec::new();
    for path in &configs {
        // A text pipeline's model is fetched, not committed (`tools/fetch_models.sh`).
        let config = subpass::config::PipelineConfig::load(path).unwrap();
        let fetched = |p: &Path| p.exists();
        let missing = config
            .input
            .text
            .as_ref()
            .is_some_and(|t| !fetched(&t.tokenizer))
            || matches!(&config.weights, subpass::config::WeightsSource::File { path, .. } if !fetched(path));
        if missing {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: {}: run `bash tools/fetch_models.sh`",
                path.display()
            );
            continue;
        }
        let big = config.input.shape.iter().product::<usize>() > BIG_RECORD;
        // With the fail points compiled in, once more with panics injected.
        let modes: &[bool] = if cfg!(feature = "fail-points") {
            &[false, true]
        } else {
            &[false]
        };
        for &inject in modes {
            let m = measure(path, big.then_some(BIG_RECORD_BATCH), inject);
            let name = path.file_name().unwrap().to_string_lossy();
            let name = if inject {
                format!("{name} (panics injected)")
            } else {
                name.to_string()
            };
            // How tight the printed figures are: their sum (the bound without the allowance)
            // against the whole measured peak.
            eprintln!(
                "{name}: peak {} bytes, bound {} bytes; printed figures / peak = {:.2}",
                m.peak,
                m.bound,
                (m.bound - ALLOWANCE) as f64 / m.peak as f64
            );
            if m.peak > m.bound {
                failures.push(format!("{name}: peak {} > bound {}", m.peak, m.bound));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
