//! Image records: what one parser spends on one image, from the file's bytes in memory to the
//! normalized `[3, 224, 224]` values (decode, resize, centre crop, normalize), on the committed
//! photos at ImageNet's preprocessing (resize 256, crop 224). One thread: images/s per core is
//! one over the time per image.
//!
//! `cargo bench --bench images` (add `-- china` to run one photo).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use subpass::config::ImageInput;
use subpass::io::ImagePreprocess;

const PHOTOS: [&str; 4] = [
    "china.jpg",
    "flower.jpg",
    "flower-640-progressive.jpg",
    "flower-301x217.png",
];

fn images(c: &mut Criterion) {
    let preprocess = ImagePreprocess::new(&ImageInput {
        resize: 256,
        crop: 224,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        max_side: 8000,
        max_bytes: 100_000_000,
    });
    let mut group = c.benchmark_group("images");
    group.throughput(Throughput::Elements(1));
    for photo in PHOTOS {
        let path = format!(
            "{}/tests/fixtures/images/{photo}",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap();
        let mut out = Vec::with_capacity(preprocess.len());
        group.bench_with_input(BenchmarkId::new("preprocess", photo), &bytes, |b, bytes| {
            b.iter(|| {
                out.clear();
                preprocess.from_bytes(black_box(bytes), &mut out).unwrap();
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, images);
criterion_main!(benches);
