//! Image records over the real binary: the preprocessing against torchvision's (fixtures made by
//! tools/image_fixtures.py), base64 JSON lines against file paths, every kind of bad image as an
//! error line that names the line and the file while the stream goes on, and `top_k` with
//! labels against the full output.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

const DIR: &str = "tests/fixtures/images";
const CLASSIFIER: &str = "tests/fixtures/images/classifier.yaml";

/// How far subpass's preprocessing may be from torchvision's, in 8-bit levels of the image
/// (a difference in normalized units times `std × 255`):
/// - per value, 3 levels: zune-jpeg and libjpeg-turbo (PIL's decoder) round their inverse DCT,
///   upsampling and colour conversion differently, up to 2 levels apart on these photos, and the
///   resizer's 16-bit filter weights (PIL's are 22-bit) move a value by 1 level now and then;
/// - on average, 0.5 levels: measured 0.014–0.019 levels on the photos and 0.002 on the PNG
///   (lossless: the resize alone), 0.34 on the 53x41 JPEG that Resize enlarges (each decoded
///   pixel, with its rounding, spreads over several output pixels).
///
/// The preprocessing mistakes this must catch are far outside it (measured on
/// flower-301x217.png): bicubic for bilinear 18.6 levels at most and 1.6 on average, a crop one
/// pixel to the right 160 and 9.4, BGR for RGB 225 and 53.
const MAX_LEVELS: f64 = 3.0;
const MEAN_LEVELS: f64 = 0.5;

fn root() -> PathBuf {
    common::root()
}

fn manifest() -> Value {
    common::read_json(&root().join(DIR).join("manifest.json"))
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(root().join(DIR).join(name)).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, found {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// `subpass run PIPELINE ARGS…` with `stdin` as input, waiting at most a minute.
fn run(pipeline: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = common::subpass()
        .arg("run")
        .arg(pipeline)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = std::thread::spawn(move || child.wait_with_output().unwrap());
    let start = std::time::Instant::now();
    while !out.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "subpass run did not exit within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    out.join().unwrap()
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A pipeline that writes the preprocessed image itself: `flatten` of the input.
fn preprocess_pipeline(dir: &Path, case: &Value) -> PathBuf {
    let path = dir.join(format!("{}.yaml", case["image"].as_str().unwrap()));
    let yaml = format!(
        "input:\n  image: {{resize: {}, crop: {}, mean: {}, std: {}}}\nlayers:\n  - {{name: flat, op: flatten}}\nbatch: {{size: 4}}\n",
        case["resize"], case["crop"], case["mean"], case["std"]
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Largest and mean difference between two preprocessed images, in 8-bit levels of each value's
/// channel.
fn levels_apart(got: &[f32], want: &[f32], std: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let plane = got.len() / 3;
    let (mut max, mut sum) = (0f64, 0f64);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let d = (*a as f64 - *b as f64).abs() * std[i / plane] as f64 * 255.0;
        max = max.max(d);
        sum += d;
    }
    (max, sum / got.len() as f64)
}

#[test]
fn preprocessing_matches_torchvision_within_a_few_levels() {
    let dir = common::tempdir();
    let mut failures = Vec::new();
    for case in manifest()["cases"].as_array().unwrap() {
        let image = case["image"].as_str().unwrap();
        let pipeline = preprocess_pipeline(dir.path(), case);
        let path = format!("{DIR}/{image}\n");
        let out = run(&pipeline, &["--format", "paths"], path.as_bytes());
        let records = lines(&out.stdout);
        assert_eq!(
            records.len(),
            1,
            "{image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = floats(&records[0]["y"]);
        let std = floats(&case["std"]);
        let want = read_f32(case["tensor"].as_str().unwrap());
        let (max, mean) = levels_apart(&got, &want, &std);
        let max_abs = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let mean_abs = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / got.len() as f64;
        eprintln!(
            "{image:24} {} {}: max {max:.2} levels ({max_abs:.4} normalized), mean {mean:.3} levels ({mean_abs:.5} normalized)",
            case["size"], case["mode"]
        );
        if max > MAX_LEVELS || mean > MEAN_LEVELS {
            failures.push(format!(
                "{image}: max {max:.2} levels, mean {mean:.3}: beyond {MAX_LEVELS} and {MEAN_LEVELS}"
            ));
        }
        // The same check rejects output made with a preprocessing mistake.
        for (mistake, tensor) in case["mistakes"].as_object().into_iter().flatten() {
            let wrong = read_f32(tensor.as_str().unwrap());
            let (max, mean) = levels_apart(&got, &wrong, &std);
            eprintln!("  against torchvision with {mistake}: max {max:.1} levels, mean {mean:.2}");
            if max <= MAX_LEVELS && mean <= MEAN_LEVELS {
                failures.push(format!(
                    "{image}: {mistake} is within the bound (max {max:.2}, mean {mean:.3})"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn base64_json_lines_give_the_values_of_the_file() {
    let dir = common::tempdir();
    let cases = manifest()["cases"].as_array().unwrap().clone();
    for image in ["china.jpg", "china-rgba.png"] {
        let case = cases.iter().find(|c| c["image"] == image).unwrap();
        let pipeline = preprocess_pipeline(dir.path(), case);
        let std_pipeline =
            std::fs::read_to_string(&pipeline).unwrap() + "output: {passthrough: [tag]}\n";
        std::fs::write(&pipeline, std_pipeline).unwrap();
        let from_path = run(
            &pipeline,
            &["--format", "paths"],
            format!("{DIR}/{image}\n").as_bytes(),
        );
        let want = floats(&lines(&from_path.stdout)[0]["y"]);
        let bytes = std::fs::read(root().join(DIR).join(image)).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let unpadded = b64.trim_end_matches('=');
        let torchvision = read_f32(case["tensor"].as_str().unwrap());
        let input = format!(
            "{{\"id\": \"a\", \"image\": \"{b64}\", \"tag\": [1, 2]}}\n\
             {{\"image\": \"data:image/x;base64,{unpadded}\", \"id\": 7}}\n\
             {{\"image\": \"{}\"}}\n\
             {}\n",
            b64.replace('/', "\\/"),
            serde_json::to_string(&torchvision).unwrap()
        );
        let out = run(&pipeline, &[], input.as_bytes());
        let records = lines(&out.stdout);
        assert_eq!(
            records.len(),
            4,
            "{image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(records[0]["id"], "a");
        assert_eq!(records[0]["tag"], serde_json::json!([1, 2]));
        assert_eq!(records[1]["id"], 7);
        assert_eq!(records[1]["tag"], Value::Null);
        assert_eq!(records[2]["line"], 3);
        for r in &records[..3] {
            assert_eq!(floats(&r["y"]), want, "{image}: base64 and path differ");
        }
        // A JSON array is taken as the preprocessed image itself, exactly.
        assert_eq!(floats(&records[3]["y"]), torchvision);
    }
}

/// The byte offset of a JPEG's frame header (SOF0..SOF2), whose height and width follow at +5.
fn jpeg_frame(bytes: &[u8]) -> usize {
    bytes
        .windows(2)
        .position(|w| w[0] == 0xFF && (0xC0..=0xC2).contains(&w[1]))
        .expect("a frame header")
}

/// The CRC-32 PNG chunks carry (ISO 3309, as zlib's).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_images_are_error_lines_naming_line_and_file_and_the_stream_goes_on() {
    let dir = common::tempdir();
    let d = dir.path();
    let china = std::fs::read(root().join(DIR).join("china.jpg")).unwrap();
    let png = std::fs::read(root().join(DIR).join("flower-301x217.png")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    // A JPEG whose header claims 9000 x 9000 pixels: refused from the header (the rest of the
    // file would not decode as that either, so a decode attempt would say "corrupt" instead).
    let mut huge_jpeg = china.clone();
    let at = jpeg_frame(&huge_jpeg);
    huge_jpeg[at + 5..at + 9].copy_from_slice(&[0x23, 0x28, 0x23, 0x28]);
    // A PNG whose header claims 9000 x 217 pixels, with the header's CRC made right.
    let mut wide_png = png.clone();
    wide_png[16..20].copy_from_slice(&9000u32.to_be_bytes());
    let crc = crc32(&wide_png[12..29]);
    wide_png[29..33].copy_from_slice(&crc.to_be_bytes());
    // A file over 100 MB, refused from its size before it is read (sparse: it takes no disk).
    let big = d.join("big.jpg");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100_000_001)
        .unwrap();
    let mut garbage = b"\xFF\xD8\xFF\xDB".to_vec();
    garbage.extend((0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    std::fs::create_dir(d.join("a-directory.jpg")).unwrap();
    let good = format!("{DIR}/china.jpg");
    #[rustfmt::skip]
    let cases: Vec<(String, &[&str])> = vec![
        (good.clone(), &[]),
        (d.join("missing.jpg").display().to_string(), &["missing.jpg", "cannot open", "no such file"]),
        (d.join("a-directory.jpg").display().to_string(), &["a-directory.jpg", "cannot read", "directory"]),
        (write("garbage.jpg", &garbage), &["garbage.jpg", "corrupt or truncated jpeg"]),
        (write("half.jpg", &china[..china.len() / 2]), &["half.jpg", "corrupt or truncated jpeg"]),
        (write("half.png", &png[..png.len() / 2]), &["half.png", "corrupt or truncated png"]),
        (write("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"), &["anim.gif", "unsupported image format gif", "jpeg and png"]),
        (write("huge.jpg", &huge_jpeg), &["huge.jpg", "too large", "9000x9000", "8000"]),
        (write("wide.png", &wide_png), &["wide.png", "too large", "9000x217", "8000"]),
        (big.display().to_string(), &["big.jpg", "too large", "100000001 bytes", "100000000"]),
        (write("empty.jpg", b""), &["empty.jpg", "empty"]),
        (write("notes.txt", b"not an image\n"), &["notes.txt", "not a jpeg or png"]),
        (format!("  {DIR}/flower.jpg  "), &[]),
    ];
    let input: String = cases.iter().map(|(p, _)| format!("{p}\n")).collect();
    let out = run(
        Path::new(CLASSIFIER),
        &["--format", "paths"],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = lines(&out.stdout);
    let errors: Vec<Value> = lines(&out.stderr)
        .into_iter()
        .filter(|v| v.get("error").is_some())
        .collect();
    let good_lines: Vec<u64> = records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(good_lines, vec![1, cases.len() as u64], "{records:?}");
    assert_eq!(records[0]["path"], good.as_str());
    assert_eq!(records[1]["path"], format!("{DIR}/flower.jpg"));
    assert_eq!(errors.len(), cases.len() - 2, "{errors:#?}");
    for (i, (_, facts)) in cases.iter().enumerate().filter(|(_, (_, f))| !f.is_empty()) {
        let line = i as u64 + 1;
        let error = errors
            .iter()
            .find(|e| e["line"] == line)
            .unwrap_or_else(|| panic!("no error line for line {line}: {errors:#?}"));
        let message = error["error"].as_str().unwrap().to_lowercase();
        for fact in *facts {
            assert!(
                message.contains(fact),
                "line {line}: `{message}` does not say `{fact}`"
            );
        }
    }
}

#[test]
fn bad_base64_records_are_error_lines_and_the_stream_goes_on() {
    let china = std::fs::read(root().join(DIR).join("china.jpg")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&china);
    let half = &b64[..b64.len() / 2 / 4 * 4];
    #[rustfmt::skip]
    let cases: Vec<(String, &[&str])> = vec![
        (format!("{{\"id\": 1, \"image\": \"{b64}\"}}"), &[]),
        ("{\"id\": 2, \"image\": \"not*base64!\"}".into(), &["field `image`", "not valid base64"]),
        (format!("{{\"id\": 3, \"image\": \"{half}\"}}"), &["field `image`", "corrupt or truncated jpeg"]),
        ("{\"id\": 4, \"image\": 12}".into(), &["field `image`", "base64", "found 12"]),
        ("{\"id\": 5, \"picture\": \"aGk=\"}".into(), &["no field `image`"]),
        ("{\"id\": 6, \"image\": \"aGVsbG8=\"}".into(), &["field `image`", "not a jpeg or png"]),
        (format!("{{\"id\": 7, \"image\": \"{b64}\"}}"), &[]),
    ];
    let input: String = cases.iter().map(|(l, _)| format!("{l}\n")).collect();
    let out = run(Path::new(CLASSIFIER), &[], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<Value> = lines(&out.stdout).iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, vec![serde_json::json!(1), serde_json::json!(7)]);
    let errors = lines(&out.stderr);
    for (i, (_, facts)) in cases.iter().enumerate().filter(|(_, (_, f))| !f.is_empty()) {
        let line = i as u64 + 1;
        let error = errors
            .iter()
            .find(|e| e["line"] == line)
            .unwrap_or_else(|| panic!("no error line for line {line}"));
        let message = error["error"].as_str().unwrap().to_lowercase();
        for fact in *facts {
            assert!(
                message.contains(fact),
                "line {line}: `{message}` lacks `{fact}`"
            );
        }
    }
}

#[test]
fn top_k_writes_the_largest_outputs_with_their_labels() {
    let dir = common::tempdir();
    // The same model writing its whole output: the reference for the ranking.
    let yaml = std::fs::read_to_string(root().join(CLASSIFIER))
        .unwrap()
        .replace(
            "output: {top_k: 3, labels: labels.txt}",
            "output: {argmax: true}",
        );
    assert!(yaml.contains("argmax"));
    let full = dir.path().join("full.yaml");
    std::fs::write(&full, yaml).unwrap();
    let labels: Vec<String> = std::fs::read_to_string(root().join(DIR).join("labels.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let input: String = [
        "china.jpg",
        "flower.jpg",
        "flower-grey.jpg",
        "china-rgba.png",
    ]
    .iter()
    .map(|i| format!("{DIR}/{i}\n"))
    .collect();
    let top = lines(
        &run(
            Path::new(CLASSIFIER),
            &["--format", "paths"],
            input.as_bytes(),
        )
        .stdout,
    );
    let all = lines(&run(&full, &["--format", "paths"], input.as_bytes()).stdout);
    assert_eq!(top.len(), 4);
    assert_eq!(all.len(), 4);
    for (t, a) in top.iter().zip(&all) {
        assert_eq!(t["path"], a["path"]);
        assert!(t.get("y").is_none(), "top_k replaces y: {t}");
        let y = floats(&a["y"]);
        assert!((y.iter().sum::<f32>() - 1.0).abs() < 1e-5, "softmax output");
        let mut order: Vec<usize> = (0..y.len()).collect();
        order.sort_by(|&i, &j| y[j].total_cmp(&y[i]).then(i.cmp(&j)));
        let entries = t["top_k"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        for (entry, &class) in entries.iter().zip(&order) {
            assert_eq!(entry["class"], class, "{t} against {a}");
            assert_eq!(entry["label"], labels[class].as_str());
            assert_eq!(entry["score"].as_f64().unwrap() as f32, y[class]);
        }
        assert_eq!(a["argmax"], entries[0]["class"]);
    }
}

#[test]
fn formats_that_do_not_fit_the_pipeline_are_refused() {
    let out = run(
        Path::new("configs/mlp.yaml"),
        &["--format", "paths"],
        b"x.jpg\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--format paths needs a pipeline whose input is images"));
    let out = run(Path::new(CLASSIFIER), &["--format", "text"], b"hello\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format text needs"));
}

#[test]
fn verify_compares_every_output_of_an_image_pipeline_with_top_k() {
    // Synthetic records are preprocessed values (JSON arrays); the outputs compared are whole,
    // though `run` writes only the top 3.
    common::assert_verifies(&[CLASSIFIER, "--records", "24"]);
}
