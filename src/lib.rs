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
//! | stages, routes, the in-flight memory bound | [`graph::Plan`] | [`graph::plan`] |
//! | the math of each layer, knowing nothing of actors | [`layers::Layer`] | [`layers`] |
//! | running actors over bounded channels | [`runtime::run_stream`] | [`runtime`] |
//! | records in and predictions out | [`io::RecordParser`], [`io::OutputFormatter`] | [`io`] |
//! | the equivalence proof and the benchmark | [`verify`], [`bench`] | |
//!
//! The monolithic reference ([`graph::Graph::forward`]) runs the same layer objects in one thread;
//! `verify` compares it with the decomposed pipeline.

pub mod bench;
pub mod config;
pub mod graph;
pub mod io;
pub mod layers;
pub mod runtime;
pub mod verify;
pub mod weights;
