//! `llamagen convert` and `llamagen merge`.
use anyhow::{bail, Result};
use clap::Args;
use llamagen::pipeline::outputs;
use llamagen::weights;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input checkpoint (.pt torch archive or safetensors).
    pub input: PathBuf,
    /// Output safetensors file.
    pub output: PathBuf,
    /// Config JSON to embed as metadata `config`, so later commands need no --gpt-config / --vq-config.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let sd = weights::load_state_dict(&a.input)?;
    let mut meta = HashMap::new();
    if let Some(c) = &a.config {
        let text = std::fs::read_to_string(c).map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", c.display()))?;
        meta.insert("config".to_string(), v.to_string());
    }
    weights::save_safetensors(&a.output, &sd, Some(&meta))?;
    tracing::info!("{} tensors -> {}", sd.len(), a.output.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' manifests (manifest.shard-I-of-N.jsonl).
    #[arg(required = true)]
    pub manifests: Vec<PathBuf>,
    /// Merged manifest to write.
    #[arg(long, default_value = "manifest.jsonl")]
    pub out: PathBuf,
    /// The shards' npz files, one per manifest in the same order.
    #[arg(long = "npz-in")]
    pub npz_in: Vec<PathBuf>,
    /// Merged npz to write.
    #[arg(long)]
    pub npz: Option<PathBuf>,
    /// The shards' tokens .npy files, one per manifest in the same order.
    #[arg(long = "tokens-in")]
    pub tokens_in: Vec<PathBuf>,
    /// Merged tokens .npy to write.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    if a.npz.is_some() != !a.npz_in.is_empty() || a.tokens.is_some() != !a.tokens_in.is_empty() {
        bail!("--npz goes with --npz-in files and --tokens with --tokens-in files");
    }
    let n = outputs::merge(
        &a.manifests,
        &a.npz_in,
        &a.tokens_in,
        &a.out,
        a.npz.as_deref(),
        a.tokens.as_deref(),
    )?;
    tracing::info!("merged {n} images into {}", a.out.display());
    Ok(())
}
