//! `threads: N` on a stage: its worker runs in a pool of N threads, and a convolution's filters
//! are split into parts that run at once on them (`subpass::ops::Team`), reading one padded
//! image (and, for Winograd, one input transform) that the team makes together. The parts must
//! compute what the unsplit layer computes: each kind of kernel (direct, direct with a 2×2 max
//! pool folded in, im2col, Winograd F(2×2) and F(4×4) with a residual added as they write, on
//! small maps and on maps of 16 rows and more, with and without padding), ragged parts, batch
//! 3, against conv2d's reference kernel (plain loops, f64 sums; checked against
//! numpy in tests/ops_reference.rs), run inside a team's pool so that the parts really run at
//! once.

use std::path::Path;

use subpass::config::PipelineConfig;
use subpass::graph::Graph;
use subpass::ops::{KernelKind, Scratch, Team, Tensor};

/// A one-stage pipeline of `layers` over `input`, on `threads` threads.
fn config(input: [usize; 3], layers: &str, threads: usize) -> PipelineConfig {
    let names: Vec<&str> = layers
        .lines()
        .filter_map(|l| l.split("name: ").nth(1))
        .filter_map(|l| l.split(',').next())
        .collect();
    let text = format!(
        "input: {{shape: {input:?}}}\ninit: {{seed: 5}}\nlayers:\n{layers}stages:\n  - {{name: all, layers: [{}], threads: {threads}}}\nbatch: {{size: 3, max_delay_ms: 1}}\n",
        names.join(", ")
    );
    PipelineConfig::parse(&text, Path::new(".")).unwrap()
}

fn records(input: [usize; 3], batch: usize) -> Tensor {
    let len = batch * input.iter().product::<usize>();
    let values = (0..len)
        .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 2.0)
        .collect();
    Tensor::from_shape_vec(vec![batch, input[0], input[1], input[2]], values).unwrap()
}

/// The graph's output on a team of `threads`, inside the team's pool.
fn on_team(graph: &Graph, x: Tensor, threads: usize) -> Tensor {
    let team = Team::new(threads);
    let pool = team.pool("test").unwrap().expect("a team of two or more");
    pool.install(|| graph.forward_with(x, None, &mut Scratch::for_team(team)))
        .remove(0)
}

#[test]
fn a_convolution_split_over_a_team_computes_the_unsplit_layer() {
    // (name, input, layers, the layer that splits, tolerance relative to the largest output)
    let cases: &[(&str, [usize; 3], &str, &str, f32)] = &[
        (
            "direct 3x3, 40 filters: parts of 24 and 16",
            [5, 13, 11],
            "  - {name: c, op: conv2d, filters: 40, kernel: 3, padding: 1, activation: relu}\n",
            "c",
            1e-5,
        ),
        (
            "direct 3x3 stride 2 with a ragged tail: 8 and 12",
            [3, 14, 15],
            "  - {name: c, op: conv2d, filters: 20, kernel: 3, stride: 2, padding: 1}\n",
            "c",
            1e-5,
        ),
        (
            "direct 5x5 with the 2x2 max pool folded in: 16 and 8",
            [2, 15, 14],
            "  - {name: c, op: conv2d, filters: 24, kernel: 5, padding: 2, activation: relu}\n  - {name: p, op: maxpool2d, kernel: 2}\n",
            "p",
            1e-5,
        ),
        (
            "7x7 stride-2 stem",
            [3, 20, 18],
            "  - {name: c, op: conv2d, filters: 32, kernel: 7, stride: 2, padding: 3}\n",
            "c",
            1e-5,
        ),
        (
            "1x1 stride 2 (im2col)",
            [16, 9, 9],
            "  - {name: c, op: conv2d, filters: 24, kernel: 1, stride: 2}\n",
            "c",
            1e-5,
        ),
        (
            "Winograd F(2x2) with a residual added and ReLU as it writes",
            [40, 7, 7],
            "  - {name: c, op: conv2d, filters: 40, kernel: 3, padding: 1, algorithm: winograd}\n  - {name: s, op: add, inputs: [c, input]}\n  - {name: r, op: relu}\n",
            "s",
            1e-5,
        ),
        (
            "Winograd F(4x4) with a residual",
            [48, 12, 13],
            "  - {name: c, op: conv2d, filters: 48, kernel: 3, padding: 1, algorithm: winograd_f4}\n  - {name: s, op: add, inputs: [c, input]}\n",
            "s",
            1e-4,
        ),
        // Maps of 16 rows and more (which once split by rows).
        (
            "Winograd F(4x4) on 20x17, with a residual and ReLU",
            [32, 20, 17],
            "  - {name: c, op: conv2d, filters: 32, kernel: 3, padding: 1, algorithm: winograd_f4}\n  - {name: s, op: add, inputs: [c, input]}\n  - {name: r, op: relu}\n",
            "s",
            1e-4,
        ),
        (
            "Winograd F(2x2) on 19x18, 40 filters: parts of 24 and 16",
            [32, 19, 18],
            "  - {name: c, op: conv2d, filters: 40, kernel: 3, padding: 1, algorithm: winograd, activation: relu}\n",
            "c",
            1e-5,
        ),
        (
            "Winograd without padding",
            [32, 18, 16],
            "  - {name: c, op: conv2d, filters: 32, kernel: 3, algorithm: winograd}\n",
            "c",
            1e-5,
        ),
    ];
    for &(name, input, layers, split, tolerance) in cases {
        let team = Graph::build_with(&config(input, layers, 2), KernelKind::Fast).unwrap();
        let at = team.nodes.iter().position(|n| n.name == split).unwrap();
        assert_eq!(team.layers[at].parts(), 2, "{name}: split in two");
        let reference =
            Graph::build_with(&config(input, layers, 1), KernelKind::Reference).unwrap();
        let x = records(input, 3);
        let want = reference.forward(x.clone(), None).remove(0);
        let got = on_team(&team, x.clone(), 2);
        // And outside a pool, the parts one after another: the same values.
        let serial = team.forward(x, None).remove(0);
        assert_eq!(got.shape(), want.shape(), "{name}");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (label, out) in [("on the team", &got), ("one after another", &serial)] {
            let err = out
                .iter()
                .zip(want.iter())
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= tolerance * scale,
                "{name}, {label}: max |diff| {err} at scale {scale}"
            );
        }
    }
}

#[test]
fn too_few_filters_or_one_thread_leave_the_layer_whole() {
    let layers = "  - {name: c, op: conv2d, filters: 12, kernel: 3, padding: 1}\n  - {name: g, op: conv2d, filters: 32, kernel: 3, padding: 1, groups: 4}\n";
    let team = Graph::build_with(&config([8, 6, 6], layers, 2), KernelKind::Fast).unwrap();
    assert!(team.layers.iter().all(|l| l.parts() == 1));
    let one = "  - {name: c, op: conv2d, filters: 64, kernel: 3}\n";
    let single = Graph::build_with(&config([3, 6, 6], one, 1), KernelKind::Fast).unwrap();
    assert_eq!(single.layers[0].parts(), 1);
}
