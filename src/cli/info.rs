//! `llamagen info`: config, parameter count and a memory estimate.
use super::args::{self, GptArgs, VqArgs};
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub gpt: GptArgs,
    #[command(flatten)]
    pub vq: VqArgs,
    /// Images per batch for the memory estimate.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Classifier-free guidance doubles the GPT rows when > 1.
    #[arg(long, default_value_t = 4.0)]
    pub cfg_scale: f32,
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn run(a: InfoArgs) -> Result<()> {
    let vq = if a.vq.vq.is_some() || a.vq.vq_config.is_some() || a.vq.vq_model.is_some() {
        Some(args::vq_config(&a.vq)?)
    } else {
        None
    };
    if let Some(v) = &vq {
        println!("VQ: {}", serde_json::to_string(v)?);
        println!(
            "  downsampling {}×, codebook {}×{}",
            v.downsample(),
            v.codebook_size,
            v.codebook_embed_dim
        );
    }
    if a.gpt.gpt.is_none() && a.gpt.gpt_config.is_none() && a.gpt.gpt_model.is_none() {
        return Ok(());
    }
    let cfg = args::gpt_config(&a.gpt, vq.as_ref().map(|v| v.downsample()).unwrap_or(16))?;
    let params = cfg.param_count();
    let rows = if a.cfg_scale > 1.0 {
        2 * a.batch_size
    } else {
        a.batch_size
    };
    let kv = |bytes: usize| 2 * cfg.n_layer * rows * cfg.dim * cfg.cache_len() * bytes;
    println!("GPT: {}", serde_json::to_string(&cfg)?);
    println!(
        "  parameters: {params} ({:.1}M); FFN hidden {}; head dim {}",
        params as f64 / 1e6,
        cfg.ffn_hidden(),
        cfg.head_dim()
    );
    println!(
        "  tokens per image: {} ({}×{}), condition positions {}, cache length {}",
        cfg.block_size,
        cfg.grid(),
        cfg.grid(),
        cfg.cls_token_num,
        cfg.cache_len()
    );
    println!("  weights: f32 {}, bf16 {}", mib(4 * params), mib(2 * params));
    println!(
        "  KV cache for batch {} ({} rows): f32 {}, bf16 {}",
        a.batch_size,
        rows,
        mib(kv(4)),
        mib(kv(2))
    );
    let flops = 2.0 * params as f64 * cfg.block_size as f64 * if a.cfg_scale > 1.0 { 2.0 } else { 1.0 };
    println!("  ≈ {:.1} GFLOP per image (linear layers, incl. CFG rows)", flops / 1e9);
    Ok(())
}
