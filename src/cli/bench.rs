//! `llamagen bench`: llama-bench style speed measurements. A sweep over models, image sizes, batch sizes, guidance
//! scales, top-k values and dtypes (comma lists); each configuration is warmed up, then repeated, and reported as
//! mean ± std per stage (prefill, decode step, sampling, GPT total, VQ decode, total) with images/s, tokens/s and
//! the share of the machine's measured ceiling (memory bandwidth or GEMM peak) that the stage reaches.
//!
//! The split comes from the session's per-node profiling (`Session::set_profiling`): `sampling` is the sampling
//! node of every step, `decode_step` the rest of the decode graph, `prefill` the rest of the prefill graph.
use super::args::{self, Device, GptArgs, VqArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use llamagen::bench::ceiling::{Bound, Ceilings};
use llamagen::bench::cost::{node_cost, Cost, Widths};
use llamagen::bench::mean_std;
use llamagen::model::gpt::{Condition, GptOptions, GptRunner};
use llamagen::model::vq::VqRunner;
use llamagen::model::{Dtype, GptConfig, ModelType, VqConfig};
use llamagen::runtime::exec::Profile;
use llamagen::runtime::{Graph, GraphId, Phase, Session};
use llamagen::sample::sampler::SamplingParams;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod report;
mod sweep;
use report::*;
use sweep::*;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Markdown table.
    Md,
    Csv,
    /// One JSON object: ceilings and rows.
    Json,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// GPT weights (one model); its config from --gpt-config or the file.
    #[arg(long)]
    pub gpt: Option<PathBuf>,
    /// GPT config JSON (one model; with --synthetic-weights no weights file is needed).
    #[arg(long)]
    pub gpt_config: Option<PathBuf>,
    /// GPT presets, comma-separated: GPT-B,GPT-L,GPT-XL,GPT-XXL,GPT-3B (c2i; with --synthetic-weights).
    #[arg(long, value_delimiter = ',')]
    pub gpt_model: Vec<String>,
    /// Image sizes in pixels for presets, comma-separated (default 256).
    #[arg(long, value_delimiter = ',')]
    pub image_size: Vec<usize>,
    #[command(flatten)]
    pub vq: VqArgs,
    /// Images per batch, comma-separated.
    #[arg(long, short = 'b', value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Guidance scales, comma-separated (guidance doubles the GPT rows when > 1) [default: 4.0; the demo model's
    /// tuned value for the demo model].
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub cfg_scale: Vec<f32>,
    /// top-k values, comma-separated (0 = all tokens) [default: 2000; the demo model's tuned value for the demo
    /// model].
    #[arg(long, value_delimiter = ',')]
    pub top_k: Vec<usize>,
    /// GPT dtypes, comma-separated: f32, bf16 (the VQ decoder always runs in f32).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "f32")]
    pub dtype: Vec<Dtype>,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Untimed runs per configuration before the repetitions.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed repetitions per configuration (mean ± sample std over them).
    #[arg(long, short = 'r', default_value_t = 3)]
    pub reps: usize,
    /// Deterministic synthetic weights (any preset size, no download); outputs are noise, timings are real.
    #[arg(long)]
    pub synthetic_weights: bool,
    /// GPT only: skip the VQ decode stage.
    #[arg(long)]
    pub no_vq: bool,
    /// Also report every op per stage (time, share, achieved rate, % of ceiling).
    #[arg(long)]
    pub ops: bool,
    /// Skip the ceiling measurement (about a second); the % columns stay empty.
    #[arg(long)]
    pub no_ceilings: bool,
    /// Time only whole generations (no per-node timing): no prefill / decode_step / sampling split.
    #[arg(long)]
    pub no_profile: bool,
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
    #[command(flatten)]
    pub device: args::DeviceArgs,
    /// Run seed (repetition r uses seed + r).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Where a configuration's GPT comes from.
#[derive(Clone, Debug)]
enum GptSource {
    Preset(String),
    /// --gpt and/or --gpt-config (or the build's default model).
    Given,
}

struct Env {
    commit: String,
    device: String,
    threads: usize,
}

fn commit() -> String {
    if let Ok(c) = std::env::var("LLAMAGEN_COMMIT") {
        return c;
    }
    std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
            "--abbrev=10",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn file_label(p: &Path) -> String {
    let name = p
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('.').next().unwrap_or_default().to_string()
}

/// The VQ config and its label, or None with --no-vq.
fn vq_config(a: &BenchArgs, presets: bool) -> Result<Option<(VqConfig, String)>> {
    if a.no_vq {
        return Ok(None);
    }
    let v = &a.vq;
    if let Some(m) = &v.vq_model {
        return Ok(Some((args::vq_config(v)?, m.to_ascii_uppercase())));
    }
    if v.vq.is_some() || v.vq_config.is_some() {
        let label = file_label(v.vq_config.as_ref().or(v.vq.as_ref()).expect("checked"));
        return Ok(Some((args::vq_config(v)?, label)));
    }
    if presets {
        return Ok(Some((VqConfig::preset("VQ-16")?, "VQ-16".into())));
    }
    let cfg = args::vq_config(v).context("no VQ tokenizer: give --vq-model, --vq-config or --vq, or --no-vq")?;
    Ok(Some((cfg, "default".into())))
}

fn vq_runner(a: &BenchArgs, cfg: &VqConfig) -> Result<VqRunner> {
    let backend = args::vq_backend(a.device)?;
    if a.synthetic_weights {
        return Ok(VqRunner::synthetic(cfg.clone(), false, backend)?);
    }
    if a.vq.vq.is_none() && (a.vq.vq_model.is_some() || a.vq.vq_config.is_some()) {
        bail!("a VQ preset or config without weights needs --synthetic-weights (or --vq WEIGHTS)");
    }
    args::vq_runner(&a.vq, false, a.device)
}

/// (label, config) of every GPT in the sweep.
fn gpt_configs(a: &BenchArgs, downsample: usize) -> Result<Vec<(String, GptConfig)>> {
    let sources: Vec<GptSource> = if a.gpt_model.is_empty() {
        vec![GptSource::Given]
    } else {
        if a.gpt.is_some() || a.gpt_config.is_some() {
            bail!("give either --gpt-model presets or --gpt / --gpt-config, not both");
        }
        a.gpt_model.iter().map(|m| GptSource::Preset(m.clone())).collect()
    };
    let sizes: Vec<Option<usize>> = if a.image_size.is_empty() {
        vec![None]
    } else {
        a.image_size.iter().map(|&s| Some(s)).collect()
    };
    let mut out = Vec::new();
    for src in &sources {
        for &size in &sizes {
            let (ga, label) = match src {
                GptSource::Preset(m) => (
                    GptArgs {
                        gpt: None,
                        gpt_config: None,
                        gpt_model: Some(m.clone()),
                        image_size: size,
                    },
                    m.to_ascii_uppercase(),
                ),
                GptSource::Given => (
                    GptArgs {
                        gpt: a.gpt.clone(),
                        gpt_config: a.gpt_config.clone(),
                        gpt_model: None,
                        image_size: size,
                    },
                    a.gpt_config
                        .as_ref()
                        .or(a.gpt.as_ref())
                        .map(|p| file_label(p))
                        .unwrap_or_else(|| "default".into()),
                ),
            };
            let cfg = match (src, &a.gpt_config) {
                // A config file with --image-size: the grid follows the size (a config is shape only).
                (GptSource::Given, Some(p)) if size.is_some() && a.gpt.is_none() => {
                    let mut c = GptConfig::from_json_file(p)?;
                    let g = size.expect("checked") / downsample.max(1);
                    c.block_size = g * g;
                    c.validate()?;
                    c
                }
                _ => args::gpt_config(&ga, downsample)?,
            };
            out.push((label, cfg));
        }
    }
    Ok(out)
}

fn load_gpt(a: &BenchArgs, cfg: &GptConfig, opts: GptOptions) -> Result<GptRunner> {
    let t = Instant::now();
    let mut sd = if a.synthetic_weights {
        llamagen::weights::synth::state_dict(&cfg.weight_shapes())
    } else {
        let p = a.gpt.as_ref().context(
            "no GPT weights: pass --gpt WEIGHTS, or --synthetic-weights for presets and configs without weights",
        )?;
        args::load_weights(p)?
    };
    let read_s = t.elapsed().as_secs_f64();
    let backend = args::backend(a.device.resolve(), opts.dtype)?;
    let runner = GptRunner::new(cfg.clone(), &mut sd, opts, backend)?;
    tracing::debug!(
        "GPT weights: {read_s:.3} s to f32 tensors, {:.3} s more to the backend",
        t.elapsed().as_secs_f64() - read_s
    );
    Ok(runner)
}

/// With no model flags at all (and real weights), the bundled demo model is measured, with its tuned sampling
/// defaults. Returns the labels of its GPT and VQ.
fn use_demo(a: &mut BenchArgs) -> Result<Option<(String, String)>> {
    if a.gpt.is_some() || a.gpt_config.is_some() || !a.gpt_model.is_empty() || a.synthetic_weights {
        return Ok(None);
    }
    let demo = args::demo_model()?;
    a.gpt = Some(demo.gpt);
    if a.vq.vq.is_none() && a.vq.vq_config.is_none() && a.vq.vq_model.is_none() {
        a.vq.vq = Some(demo.vq);
    }
    if a.cfg_scale.is_empty() {
        a.cfg_scale.push(demo.cfg_scale);
    }
    if a.top_k.is_empty() {
        a.top_k.push(demo.top_k.max(0) as usize);
    }
    tracing::info!(
        "no model given: measuring the bundled demo model from {}",
        demo.dir.display()
    );
    Ok(Some(("demo".into(), "demo".into())))
}

pub fn run(mut a: BenchArgs) -> Result<()> {
    let demo = use_demo(&mut a)?;
    if a.cfg_scale.is_empty() {
        a.cfg_scale.push(4.0);
    }
    if a.top_k.is_empty() {
        a.top_k.push(2000);
    }
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if a.batch.contains(&0) {
        bail!("--batch values must be at least 1");
    }
    if let Some(c) = a.cfg_scale.iter().find(|c| !(c.is_finite() && **c >= 0.0)) {
        bail!("--cfg-scale {c} must be a finite number >= 0");
    }
    let dtypes: Vec<Dtype> = a.dtype.clone();
    let mut vq = vq_config(&a, !a.gpt_model.is_empty())?;
    let downsample = vq.as_ref().map_or(16, |(v, _)| v.downsample());
    let mut models = gpt_configs(&a, downsample)?;
    if let Some((g, v)) = demo {
        models.iter_mut().for_each(|m| m.0 = g.clone());
        if let Some(q) = vq.as_mut() {
            q.1 = v;
        }
    }
    for (label, cfg) in &models {
        if let Some((v, vl)) = &vq {
            if cfg.vocab_size > v.codebook_size {
                tracing::warn!(
                    "{label}: vocab_size {} > {vl} codebook_size {}: tokens are folded into the codebook for VQ timing",
                    cfg.vocab_size,
                    v.codebook_size
                );
            }
        }
    }
    let ceilings = if a.no_ceilings {
        None
    } else if a.device.resolve() == Device::Cuda {
        let name = llamagen::backend::cuda::gpu::device_name(0)?;
        let c = Ceilings::gpu_datasheet(&name);
        match &c {
            Some(c) => tracing::info!("ceilings of the {name}: {}", c.describe()),
            None => tracing::warn!("no datasheet ceilings for the {name}: the % columns stay empty"),
        }
        c
    } else {
        let c = Ceilings::measure();
        tracing::info!("ceilings: {}", c.describe());
        Some(c)
    };
    let env = Env {
        commit: commit(),
        device: format!("{} ({})", args::device_label(a.device.resolve())?, cpu_name()),
        threads: rayon::current_num_threads(),
    };
    let mut vq_run = match &vq {
        Some((c, _)) => Some(vq_runner(&a, c)?),
        None => None,
    };
    let mut rows = Vec::new();
    for (label, cfg) in &models {
        for &dtype in &dtypes {
            for &batch in &a.batch {
                for &cfg_scale in &a.cfg_scale {
                    for &top_k in &a.top_k {
                        let job = Job {
                            a: &a,
                            env: &env,
                            ceilings: ceilings.as_ref(),
                            model: label,
                            cfg,
                            vq: vq.as_ref().map(|(c, l)| (c, l.as_str())),
                            dtype,
                            batch,
                            cfg_scale,
                            top_k,
                        };
                        rows.extend(job.run(vq_run.as_mut())?);
                    }
                }
            }
        }
    }
    let text = match a.format {
        Format::Md => markdown(&rows, ceilings.as_ref()),
        Format::Csv => csv(&rows),
        Format::Json => {
            #[derive(Serialize)]
            struct Report<'a> {
                ceilings: Option<&'a Ceilings>,
                rows: &'a [Row],
            }
            serde_json::to_string_pretty(&Report {
                ceilings: ceilings.as_ref(),
                rows: &rows,
            })? + "\n"
        }
    };
    print!("{text}");
    Ok(())
}
