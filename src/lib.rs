//! # subpass
//!
//! Runs a neural network's forward pass decomposed into sub-passes: consecutive layers grouped
//! into *stages*, records streamed through in *chunks*, and independent branches run concurrently
//! and joined. Each stage is an actor with a bounded input channel, so backpressure caps the
//! activations in flight and stages overlap as chunks stream through.
//!
//! # Layout
//! A pipeline moves through distinct types, each step a function you can call alone:
//!
//! | step | type | module |
//! | --- | --- | --- |
//! | YAML text → parsed, checked values with located errors | [`config::PipelineConfig`] | [`config`] |
//! | names resolved, shapes inferred, weights loaded | [`graph::Graph`] | [`graph`] |
//! | plan-time rewrites of the fast graph (batch norms and activations folded into convolutions) | [`graph::fold::Fold`] | [`graph::fold`] |
//! | stages, routes, the in-flight memory bound | [`graph::Plan`] | [`graph::plan`] |
//! | each op: attributes, shapes, tensors, FLOPs, fast and reference kernels; the registry | [`ops::Op`], [`ops::FAMILIES`] | [`ops`] |
//! | the shared fast kernels (packed GEMM, direct convolution), chosen per CPU | [`kernels::isa`] | [`kernels`] |
//! | running actors over bounded channels | [`runtime::run_stream`] | [`runtime`] |
//! | records in (numbers, text, image files) and predictions out | [`io::RecordParser`], [`io::ImagePreprocess`], [`io::OutputFormatter`] | [`io`] |
//! | the check against the reference kernels, and the benchmark | [`verify`], [`mod@bench`] | |
//! | `/metrics` while it runs, and `subpass top` reading it | [`runtime::metrics`], [`top`] | |
//!
//! The monolithic pass ([`graph::Graph::forward`]) runs a graph's layers in order in one thread;
//! `verify` runs it on the reference kernels and compares the decomposed pipeline (fast kernels)
//! with it.

pub mod bench;
pub mod config;
pub mod graph;
pub mod io;
pub mod kernels;
pub mod ops;
pub mod par;
pub mod planner;
pub mod runtime;
pub mod top;
pub mod verify;
pub mod weights;
