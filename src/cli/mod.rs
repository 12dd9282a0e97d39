//! Subcommands, one file each.
mod args;
mod bench;
mod convert;
mod generate;
mod info;
mod lab;
mod serve;
mod tokenizer;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "llamagen",
    version,
    about = "LlamaGen inference engine: class- and text-conditional autoregressive image generation"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output (or set RUST_LOG).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate images (class-conditional, or text-conditional from precomputed T5 embeddings).
    Generate(generate::GenerateArgs),
    /// Decode image tokens (.npy) into PNG images with the VQ decoder.
    Decode(tokenizer::DecodeArgs),
    /// Encode images into VQ tokens (tokens.npy).
    Encode(tokenizer::EncodeArgs),
    /// Encode then decode images (tokenizer reconstruction).
    Reconstruct(tokenizer::ReconstructArgs),
    /// Show a model's config, parameter count and a memory estimate.
    Info(info::InfoArgs),
    /// Convert an official .pt checkpoint into safetensors (never executes pickle code).
    Convert(convert::ConvertArgs),
    /// Merge the manifests (and npz / tokens files) of `--shard` runs into the unsharded result.
    Merge(convert::MergeArgs),
    /// Measure speed (llama-bench style): stages, images/s, tokens/s and % of the machine's ceilings over a sweep.
    Bench(bench::BenchArgs),
    /// Serve the model over HTTP (JSON API, web page, metrics) with continuous batching.
    Serve(serve::ServeArgs),
    /// The kernel lab: each hot CUDA kernel's counted efficiency (emulator), cubin figures and roofline estimate.
    Lab(lab::LabArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(t) = cli.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Decode(a) => tokenizer::decode(a),
        Command::Encode(a) => tokenizer::encode(a),
        Command::Reconstruct(a) => tokenizer::reconstruct(a),
        Command::Info(a) => info::run(a),
        Command::Convert(a) => convert::convert(a),
        Command::Merge(a) => convert::merge(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Lab(a) => lab::run(a),
    }
}
