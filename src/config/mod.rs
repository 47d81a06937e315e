//! The pipeline file (version 1): its types (`schema.rs`), and how YAML text becomes them
//! (`load.rs`, over the located YAML reader in `yaml.rs`).
//!
//! This module owns the *syntax* of a pipeline: which keys exist, their types, defaults and
//! ranges (each op's attributes come from its schema in [`crate::ops`]). It checks each value on
//! its own; everything that relates layers to each other (names, inputs, shapes, stages, weights)
//! is checked in [`crate::graph`]. Both steps accumulate every error they find, located by key
//! path and line.

mod load;
mod schema;
mod yaml;

pub use load::shard_layer;
pub use schema::*;
pub use yaml::{suggest, ConfigError, Document, Spans, MAX_ALIAS_VALUES, MAX_DEPTH};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigErrors> {
        PipelineConfig::parse(text, Path::new("."))
    }

    #[test]
    fn defaults_are_filled_in() {
        let c =
            parse("input: {shape: [4]}\nlayers:\n  - {name: fc, op: dense, units: 2}\n").unwrap();
        assert_eq!(c.input.field, "x");
        assert_eq!(c.batch.size, 32);
        assert_eq!(c.layers[0].inputs[0].value, "input");
        assert_eq!(c.layers[0].params, "fc");
        assert!(c.output.ordered);
        assert_eq!(c.layers[0].op.name(), "dense");
        assert_eq!(
            c.layers[0].op.output_shape(&[&[4]]).unwrap(),
            vec![2],
            "units: 2"
        );
    }

    /// Random edits of a real pipeline file never panic the loader: every outcome is a config or
    /// a list of located errors.
    #[test]
    fn mutated_files_never_panic() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/digits-cnn.yaml"
        ))
        .unwrap();
        let mut next = crate::weights::seeded_stream(5, "yaml-mutations");
        let mut rand = |n: usize| ((next() + 1.0) * 0.5 * n as f32) as usize % n.max(1);
        let alphabet = b"[]{},:-&*!|>'\"# \n0123456789abcxyz";
        let mut errors = 0;
        for _ in 0..3000 {
            let mut bytes = text.as_bytes().to_vec();
            for _ in 0..1 + rand(4) {
                let at = rand(bytes.len());
                match rand(3) {
                    0 => bytes[at] = alphabet[rand(alphabet.len())],
                    1 => bytes.insert(at, alphabet[rand(alphabet.len())]),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            let mutated = String::from_utf8_lossy(&bytes);
            if let Err(e) = PipelineConfig::parse(&mutated, Path::new("configs")) {
                errors += 1;
                assert!(!e.0.is_empty());
            }
        }
        assert!(
            errors > 500,
            "the mutations should break many files: {errors}"
        );
    }

    #[test]
    fn image_input_defaults_to_imagenet_and_its_shape_is_the_crop() {
        let c = parse(
            "input: {image: {resize: 256, crop: 224}}\nlayers:\n  - {name: f, op: flatten}\n",
        )
        .unwrap();
        let image = c.input.image.unwrap();
        assert_eq!(c.input.shape, vec![3, 224, 224]);
        assert_eq!(c.input.field, "image");
        assert_eq!(image.mean, [0.485, 0.456, 0.406]);
        assert_eq!(image.std, [0.229, 0.224, 0.225]);
        assert_eq!((image.max_side, image.max_bytes), (8000, 100_000_000));
        assert!(c.input.parsers >= 1);
        // A shape that says the same is allowed; one that disagrees is located.
        assert!(parse("input: {shape: [3, 8, 8], image: {resize: 9, crop: 8}}\nlayers:\n  - {name: f, op: flatten}\n").is_ok());
        let errs = parse("input: {shape: [1, 8, 8], image: {resize: 9, crop: 8}}\nlayers:\n  - {name: f, op: flatten}\n")
            .unwrap_err()
            .0;
        assert_eq!(errs[0].path, "input.shape");
        assert!(errs[0].message.contains("[3, 8, 8]"), "{errs:?}");
    }

    #[test]
    fn image_input_mistakes_are_located() {
        let text = "input:\n  image: {resize: 100, crop: 224, mean: [0.5, 0.5], stdd: [1, 1, 1]}\nlayers:\n  - {name: f, op: flatten}\noutput: {labels: nowhere.txt}\n";
        let errs = parse(text).unwrap_err().0;
        let find = |p: &str| {
            errs.iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("{p}: {errs:?}"))
        };
        assert!(find("input.image.stdd")
            .message
            .contains("did you mean `std`"));
        assert!(find("input.image.crop").message.contains("larger"));
        assert_eq!(find("input.image.crop").location.map(|l| l.0), Some(2));
        let labels: Vec<_> = errs.iter().filter(|e| e.path == "output.labels").collect();
        assert!(
            labels.iter().any(|e| e.message.contains("top_k")),
            "{errs:?}"
        );
        assert!(
            labels.iter().any(|e| e.message.contains("nowhere.txt")),
            "{errs:?}"
        );
    }

    #[test]
    fn all_errors_are_reported_with_paths_and_lines() {
        let text = "input: {shape: [4]}\nlayers:\n  - {name: fc, op: dense, unitz: 2}\n  - {name: p, op: maxpool2d, kernel: 0}\nbatch: {size: 0}\n";
        let errs = parse(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"layers[0].unitz"), "{errs:?}");
        assert!(paths.contains(&"layers[0]"), "missing units: {errs:?}");
        assert!(paths.contains(&"layers[1].kernel"), "{errs:?}");
        assert!(paths.contains(&"batch.size"), "{errs:?}");
        let unitz = errs.iter().find(|e| e.path == "layers[0].unitz").unwrap();
        assert_eq!(unitz.location.map(|l| l.0), Some(3));
        assert!(unitz.message.contains("did you mean `units`"));
    }
}
