//! `llamagen serve`.
use super::args::{self, GptArgs, VqArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use llamagen::model::gpt_continuous::ContinuousGpt;
use llamagen::model::vq::VqRunner;
use llamagen::model::{Dtype, ModelType};
use llamagen::serve::{self, Defaults, ModelInfo, ServeOptions, MAX_N};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub gpt: GptArgs,
    #[command(flatten)]
    pub vq: VqArgs,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free port; the bound address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Images in the running batch (the KV cache holds two rows per image for guidance).
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    pub max_batch: i64,
    /// Requests waiting to start before new ones get 503 + Retry-After (a started request's images take batch
    /// slots as they free up).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    pub max_queue: i64,
    /// Default guidance scale of requests that give none [default: 4.0; the demo model's tuned value for it].
    #[arg(long, allow_negative_numbers = true)]
    pub cfg_scale: Option<f32>,
    /// Default: guidance off for decode iterations i > this (-1: always on).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub cfg_interval: i64,
    /// Default top-k [default: 2000; the demo model's tuned value for it].
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    /// Default nucleus threshold in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Default temperature.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Finished images wait for up to this many (at most 16 decode steps) to share one VQ decode: batches
    /// decode ~3× faster per image; 1 decodes each image at once (lowest latency).
    #[arg(long, default_value_t = 8, allow_negative_numbers = true)]
    pub vq_batch: i64,
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    #[command(flatten)]
    pub device: args::DeviceArgs,
    /// Deterministic synthetic weights (the golden fixtures' generator) for load tests of preset sizes: images are
    /// noise.
    #[arg(long)]
    pub synthetic_weights: bool,
}

pub fn run(mut a: ServeArgs) -> Result<()> {
    let class_names = args::use_demo(
        &mut a.gpt,
        &mut a.vq,
        &mut a.cfg_scale,
        &mut a.top_k,
        a.synthetic_weights,
    )?;
    if !(1..=4096).contains(&a.max_batch) {
        bail!("--max-batch {} must be in 1..=4096", a.max_batch);
    }
    if !(1..=1024).contains(&a.vq_batch) {
        bail!("--vq-batch {} must be in 1..=1024", a.vq_batch);
    }
    if !(0..=1 << 20).contains(&a.max_queue) {
        bail!("--max-queue {} must be in 0..=1048576", a.max_queue);
    }
    let (cfg_scale, sampling) = args::sampling(a.cfg_scale, a.top_k, a.temperature, a.top_p)?;
    if a.cfg_interval < -1 {
        bail!("--cfg-interval {} must be >= -1", a.cfg_interval);
    }
    let dtype: Dtype = a.dtype;
    let device = a.device.resolve();
    let vq_cfg = args::vq_config(&a.vq)?;
    let downsample = vq_cfg.downsample();
    let cfg = args::gpt_config(&a.gpt, downsample)?;
    args::check_pair(&cfg, &vq_cfg, &a.vq)?;
    let max_batch = a.max_batch as usize;
    let vq = if a.synthetic_weights {
        VqRunner::synthetic(vq_cfg.clone(), false, args::vq_backend(a.device)?)?
    } else {
        args::vq_runner(&a.vq, false, a.device)?
    };
    let mut sd = if a.synthetic_weights {
        llamagen::weights::synth::state_dict(&cfg.weight_shapes())
    } else {
        args::load_weights(a.gpt.gpt.as_ref().context("no GPT weights given: pass --gpt WEIGHTS")?)?
    };
    let gpt = ContinuousGpt::new(
        cfg.clone(),
        &mut sd,
        dtype,
        2 * max_batch,
        args::backend(device, dtype)?,
    )?;
    drop(sd);
    let id = match (&a.gpt.gpt_model, &a.gpt.gpt) {
        (Some(m), _) => m.clone(),
        (None, Some(_)) if class_names.is_some() => "demo".to_string(),
        (None, Some(p)) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        (None, None) => "llamagen".into(),
    };
    let t2i = cfg.model_type == ModelType::T2i;
    let model = ModelInfo {
        id,
        model_type: if t2i { "t2i" } else { "c2i" },
        num_classes: if t2i { 0 } else { cfg.num_classes },
        class_names,
        image_size: cfg.grid() * downsample,
        tokens_per_image: cfg.block_size,
        vocab_size: cfg.vocab_size,
        cls_token_num: cfg.cls_token_num,
        caption_dim: cfg.caption_dim,
        max_batch,
        max_queue: a.max_queue as usize,
        max_n: MAX_N,
        defaults: Defaults {
            cfg_scale,
            cfg_interval: a.cfg_interval,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            temperature: sampling.temperature,
        },
        device: args::device_label(device)?,
        dtype: format!("{dtype:?}").to_lowercase(),
    };
    // A t2i request carries 120 × caption_dim floats as base64 .npy (≈ 1.3 MB at 2048); a c2i request is small.
    let body_limit = if t2i {
        cfg.cls_token_num * cfg.caption_dim.max(1) * 4 * 3 / 2 + (64 << 10)
    } else {
        64 << 10
    };
    let opts = ServeOptions {
        addr: SocketAddr::new(a.host, a.port),
        max_queue: a.max_queue as usize,
        body_limit,
        http_threads: 2,
        vq_batch: a.vq_batch as usize,
    };
    serve::serve(gpt, vq, model, opts, |addr| {
        // Scripts and tests read this line to find the port.
        println!("llamagen serve: listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })?;
    tracing::info!("server stopped");
    Ok(())
}
