//! `llamagen generate`.
use super::args::{self, GptArgs, VqArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use llamagen::io::npy;
use llamagen::model::gpt::{GptOptions, GptRunner};
use llamagen::model::{Dtype, ModelType};
use llamagen::pipeline::outputs::Settings;
use llamagen::pipeline::{self, GenerateJob, ImagePlan, Shard};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub gpt: GptArgs,
    #[command(flatten)]
    pub vq: VqArgs,
    /// Class id to generate (repeatable); images cycle through the given classes, or through all classes if none.
    #[arg(long = "class", allow_negative_numbers = true)]
    pub classes: Vec<i64>,
    /// Number of images.
    #[arg(long, allow_negative_numbers = true)]
    pub num_images: Option<usize>,
    /// t2i: precomputed T5 features, B×120×caption_dim float .npy (left-padded, padded rows zero).
    #[arg(long)]
    pub caption_embs: Option<PathBuf>,
    /// t2i: the matching B×120 mask .npy (1 = valid token; ones at the end).
    #[arg(long)]
    pub caption_mask: Option<PathBuf>,
    /// Classifier-free guidance scale (guidance is on only when > 1) [default: 4.0, the official demo sampler's;
    /// the demo model's tuned value when it runs].
    #[arg(long, allow_negative_numbers = true)]
    pub cfg_scale: Option<f32>,
    /// Turn guidance off for decode iterations i > this value (-1: always on).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub cfg_interval: i64,
    /// Sampling temperature (0 is clamped to 1e-5, i.e. near-greedy).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep the k most likely tokens (ties with the k-th kept); 0 = all [default: 2000, the official demo
    /// sampler's; the demo model's tuned value when it runs].
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    /// Nucleus sampling threshold in (0, 1]; 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Run seed; image i draws from its own stream (seed, i), independent of batch size and sharding.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Images per batch (the GPT runs 2× rows with guidance).
    #[arg(long, default_value_t = 8, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// f32: the bit-faithful reference; bf16: GPT weights and KV cache in bf16 (the official GPU setting).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    #[command(flatten)]
    pub device: args::DeviceArgs,
    /// Output directory (PNGs, grid.png, manifest.jsonl; rerunning resumes).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Also write DIR/tokens.npy (int64, images × h × w).
    #[arg(long)]
    pub save_tokens: bool,
    /// Skip the VQ stage: tokens and manifest only (no --vq needed).
    #[arg(long)]
    pub no_images: bool,
    /// Also write an ADM-evaluator npz (uint8 arr_0, N×H×W×3) for FID tools.
    #[arg(long)]
    pub npz: Option<PathBuf>,
    /// Generate only the images whose index ≡ I (mod N), e.g. 3/8 (one Slurm array task each).
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Use deterministic synthetic weights (the golden fixtures' generator) instead of weight files: for speed
    /// measurements of any preset size without a download. Images are noise.
    #[arg(long)]
    pub synthetic_weights: bool,
}

fn read_captions(a: &GenerateArgs, t: usize, dim: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let (Some(ep), Some(mp)) = (&a.caption_embs, &a.caption_mask) else {
        if a.caption_embs.is_some() || a.caption_mask.is_some() {
            bail!("--caption-embs and --caption-mask go together");
        }
        return Ok(None);
    };
    let e = npy::read_npy(ep)?;
    let m = npy::read_npy(mp)?;
    if e.shape.len() != 3 || e.shape[1] != t || e.shape[2] != dim {
        bail!("{}: shape {:?}, expected B×{t}×{dim}", ep.display(), e.shape);
    }
    if m.shape != [e.shape[0], t] {
        bail!("{}: shape {:?}, expected {}×{t}", mp.display(), m.shape, e.shape[0]);
    }
    let embs = e
        .to_f32()
        .with_context(|| format!("{}: not a float array", ep.display()))?;
    if let Some(i) = embs.iter().position(|v| !v.is_finite()) {
        bail!("{}: non-finite value at flat index {i}", ep.display());
    }
    let mask = m
        .to_f32()
        .with_context(|| format!("{}: not a numeric array", mp.display()))?;
    if mask.iter().any(|&v| v != 0.0 && v != 1.0) {
        bail!("{}: mask values must be 0 or 1", mp.display());
    }
    Ok(Some((embs, mask)))
}

pub fn run(mut a: GenerateArgs) -> Result<()> {
    let class_names = args::use_demo(
        &mut a.gpt,
        &mut a.vq,
        &mut a.cfg_scale,
        &mut a.top_k,
        a.synthetic_weights,
    )?;
    let (cfg_scale, sampling) = args::sampling(a.cfg_scale, a.top_k, a.temperature, a.top_p)?;
    let shard: Shard = a.shard.parse()?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let dtype: Dtype = a.dtype;
    // The VQ config first: its downsampling fixes the token grid of a preset GPT.
    let vq_cfg = if a.no_images {
        None
    } else {
        Some(args::vq_config(&a.vq)?)
    };
    let downsample = vq_cfg.as_ref().map(|c| c.downsample()).unwrap_or(16);
    let cfg = args::gpt_config(&a.gpt, downsample)?;
    if let Some(v) = &vq_cfg {
        args::check_pair(&cfg, v, &a.vq)?;
    }
    let captions = read_captions(&a, cfg.cls_token_num, cfg.caption_dim)?;
    match cfg.model_type {
        ModelType::C2i => {
            if captions.is_some() {
                bail!("--caption-embs given, but the GPT is class-conditional (c2i)");
            }
            if let Some(&c) = a.classes.iter().find(|&&c| c < 0 || c as usize >= cfg.num_classes) {
                bail!(
                    "--class {c} is outside 0..{} (the model has {} classes)",
                    cfg.num_classes,
                    cfg.num_classes
                );
            }
        }
        ModelType::T2i => {
            if captions.is_none() {
                bail!("a t2i GPT needs --caption-embs and --caption-mask (precomputed T5 features)");
            }
            if !a.classes.is_empty() {
                bail!("--class is for class-conditional models; this GPT is t2i");
            }
        }
    }
    let num_captions = captions.as_ref().map(|(_, m)| m.len() / cfg.cls_token_num);
    let num_images = a.num_images.unwrap_or(match num_captions {
        Some(n) => n,
        None if a.classes.is_empty() => cfg.num_classes,
        None => a.classes.len(),
    });
    let backend = args::backend(a.device.resolve(), dtype)?;
    let mut vq = match &vq_cfg {
        Some(c) if a.synthetic_weights => Some(llamagen::model::vq::VqRunner::synthetic(
            c.clone(),
            false,
            args::vq_backend(a.device)?,
        )?),
        Some(_) => Some(args::vq_runner(&a.vq, false, a.device)?),
        None => None,
    };
    let mut sd = if a.synthetic_weights {
        llamagen::weights::synth::state_dict(&cfg.weight_shapes())
    } else {
        args::load_weights(a.gpt.gpt.as_ref().context("no GPT weights given: pass --gpt WEIGHTS")?)?
    };
    let batch = a.batch_size.min(num_images.max(1));
    let opts = GptOptions {
        dtype,
        batch,
        cfg_scale,
        cfg_interval: a.cfg_interval,
        sampling,
    };
    let mut gpt = GptRunner::new(cfg.clone(), &mut sd, opts, backend)?;
    drop(sd);
    let job = GenerateJob {
        out: a.out.clone(),
        plan: ImagePlan {
            num_images,
            classes: a.classes.iter().map(|&c| c as usize).collect(),
            num_classes: cfg.num_classes,
            num_captions,
        },
        shard,
        batch,
        seed: a.seed,
        settings: Settings {
            cfg_scale,
            cfg_interval: a.cfg_interval,
            temperature: a.temperature,
            top_k: sampling.top_k,
            top_p: a.top_p,
            dtype: format!("{dtype:?}").to_lowercase(),
            image_size: vq_cfg.as_ref().map(|_| cfg.grid() * downsample),
        },
        save_tokens: a.save_tokens || a.no_images,
        npz: a.npz.clone(),
        class_names,
        captions,
        progress: !a.quiet,
    };
    let s = pipeline::generate(&job, &mut gpt, vq.as_mut())?;
    tracing::info!(
        "{} images generated ({} already done) in {:.2} s: {:.3} images/s -> {}",
        s.generated,
        s.skipped,
        s.seconds,
        s.generated as f64 / s.seconds.max(1e-9),
        a.out.display()
    );
    Ok(())
}
