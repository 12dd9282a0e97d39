//! `llamagen bench`: llama-bench style speed measurements. A sweep over models, image sizes, batch sizes, guidance
//! scales, top-k values and dtypes (comma lists); each configuration is warmed up, then repeated, and reported as
//! mean ± std per stage (prefill, decode step, sampling, GPT total, VQ decode, total) with images/s, tokens/s and
//! the share of the machine's measured ceiling (memory bandwidth or GEMM peak) that the stage reaches.
//!
//! The split comes from the session's per-node profiling (`Session::set_profiling`): `sampling` is the sampling
//! node of every step, `decode_step` the rest of the decode graph, `prefill` the rest of the prefill graph.
use super::args::{self, Device, DtypeArg, GptArgs, VqArgs};
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
    pub dtype: Vec<DtypeArg>,
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

/// One line of the report: a stage (or, with --ops, one op of a stage) of one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub commit: String,
    pub device: String,
    pub threads: usize,
    pub dtype: String,
    pub model: String,
    pub vq: String,
    pub image_size: usize,
    pub batch: usize,
    pub cfg: f32,
    pub top_k: usize,
    /// prefill, decode_step, sampling, gpt_generate, vq_decode, total; with --ops `<stage>/<op>`.
    pub stage: String,
    /// What one time value covers: `batch` (one batch of images) or `step` (one decode step of the batch).
    pub per: &'static str,
    pub time_ms: f64,
    pub time_ms_std: f64,
    pub images_per_s: Option<f64>,
    pub images_per_s_std: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub tokens_per_s_std: Option<f64>,
    /// The stage's physical floor: max(bytes / bandwidth, FLOPs / GEMM peak).
    pub floor_ms: Option<f64>,
    /// floor / measured time.
    pub pct_of_ceiling: Option<f64>,
    /// Which ceiling sets the floor: mem, gemm-f32, gemm-bf16.
    pub bound: Option<&'static str>,
    pub gflop: f64,
    pub gbytes: f64,
    pub reps: usize,
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
    let backend = args::backend(a.device.resolve(), Dtype::F32)?;
    if a.synthetic_weights {
        return Ok(VqRunner::synthetic(cfg.clone(), false, backend)?);
    }
    if a.vq.vq.is_none() && (a.vq.vq_model.is_some() || a.vq.vq_config.is_some()) {
        bail!("a VQ preset or config without weights needs --synthetic-weights (or --vq WEIGHTS)");
    }
    args::vq_runner(&a.vq, false, a.device.resolve())
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

/// What one timed repetition measured.
struct Sample {
    gpt_s: f64,
    vq_s: Option<f64>,
    /// From the profile: (prefill w/o sampling, decode w/o sampling, sampling, decode runs).
    split: Option<(f64, f64, f64, u64)>,
    gpt_profile: Option<Profile>,
    vq_profile: Option<Profile>,
}

fn condition(cfg: &GptConfig, b: usize) -> Condition {
    match cfg.model_type {
        ModelType::C2i => Condition::Classes((0..b).map(|i| i % cfg.num_classes).collect()),
        ModelType::T2i => {
            let t = cfg.cls_token_num;
            let embs = llamagen::weights::synth::value_f32("bench.caption_embs", &[b, t, cfg.caption_dim]);
            Condition::Captions {
                embs,
                mask: vec![1.0; b * t],
            }
        }
    }
}

fn split(p: &Profile) -> (f64, f64, f64, u64) {
    let (pre, _) = p.phase(Phase::Prefill);
    let (dec, runs) = p.phase(Phase::Decode);
    let (s_pre, _) = p.op(Some(Phase::Prefill), "sampling");
    let (s_dec, _) = p.op(Some(Phase::Decode), "sampling");
    (pre - s_pre, dec - s_dec, s_pre + s_dec, runs)
}

/// Graph of `phase` whose `input` tensor has `numel` elements (the batch's graph).
fn find_graph(s: &Session, phase: Phase, input: &str, numel: usize) -> Option<GraphId> {
    s.graph_ids().find(|&id| {
        let g = s.graph(id);
        g.phase == phase && g.find(input).is_some_and(|t| g.info(t).numel() == numel)
    })
}

/// Per op name: cost over all the runs of one generation (decode graph at every position).
fn op_costs(g: &Graph, positions: &[usize], w: Widths) -> Vec<(&'static str, Cost)> {
    let mut v: Vec<(&'static str, Cost)> = Vec::new();
    for &pos in positions {
        for n in &g.nodes {
            let c = node_cost(g, n, pos, w);
            match v.iter_mut().find(|e| e.0 == n.op.name()) {
                Some(e) => e.1 += c,
                None => v.push((n.op.name(), c)),
            }
        }
    }
    v
}

fn sum_cost(v: &[(&'static str, Cost)], op: &str, exclude: bool) -> Cost {
    v.iter().filter(|e| (e.0 == op) != exclude).map(|e| e.1).sum()
}

struct Job<'a> {
    a: &'a BenchArgs,
    env: &'a Env,
    ceilings: Option<&'a Ceilings>,
    model: &'a str,
    cfg: &'a GptConfig,
    vq: Option<(&'a VqConfig, &'a str)>,
    dtype: Dtype,
    batch: usize,
    cfg_scale: f32,
    top_k: usize,
}

impl Job<'_> {
    fn row(&self, stage: &str, per: &'static str, times_s: &[f64], units: Option<(f64, f64)>, cost: Cost) -> Row {
        let ms: Vec<f64> = times_s.iter().map(|t| t * 1e3).collect();
        let (time_ms, time_ms_std) = mean_std(&ms);
        let rate = |k: f64| {
            let v: Vec<f64> = times_s.iter().map(|t| k / t).collect();
            mean_std(&v)
        };
        let (img, tok) = match units {
            Some((i, t)) => ((i > 0.0).then(|| rate(i)), (t > 0.0).then(|| rate(t))),
            None => (None, None),
        };
        let bf16 = self.dtype == Dtype::Bf16 && !stage.starts_with("vq");
        let floor = self.ceilings.map(|c| c.floor(cost, bf16));
        let image_size = self.cfg.grid() * self.vq.map_or(16, |(v, _)| v.downsample());
        Row {
            commit: self.env.commit.clone(),
            device: self.env.device.clone(),
            threads: self.env.threads,
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            model: self.model.to_string(),
            vq: self.vq.map_or("-".to_string(), |(_, l)| l.to_string()),
            image_size,
            batch: self.batch,
            cfg: self.cfg_scale,
            top_k: self.top_k,
            stage: stage.to_string(),
            per,
            time_ms,
            time_ms_std,
            images_per_s: img.map(|r| r.0),
            images_per_s_std: img.map(|r| r.1),
            tokens_per_s: tok.map(|r| r.0),
            tokens_per_s_std: tok.map(|r| r.1),
            floor_ms: floor.map(|f| f.0 * 1e3),
            pct_of_ceiling: floor.map(|f| 100.0 * f.0 / (time_ms / 1e3)),
            bound: floor.map(|f| f.1.as_str()),
            gflop: cost.flops / 1e9,
            gbytes: cost.bytes / 1e9,
            reps: times_s.len(),
        }
    }

    fn run(&self, vq: Option<&mut VqRunner>) -> Result<Vec<Row>> {
        let (a, cfg, b) = (self.a, self.cfg, self.batch);
        let sampling = SamplingParams {
            temperature: a.temperature,
            top_k: self.top_k,
            top_p: a.top_p,
        };
        let opts = GptOptions {
            dtype: self.dtype,
            batch: b,
            cfg_scale: self.cfg_scale,
            cfg_interval: -1,
            sampling,
        };
        let t = Instant::now();
        let mut gpt = load_gpt(a, cfg, opts)?;
        let load_s = t.elapsed().as_secs_f64();
        let profile = !a.no_profile;
        gpt.session_mut().set_profiling(profile);
        let mut vq = vq;
        let cond = condition(cfg, b);
        let index: Vec<u64> = (0..b as u64).collect();
        let (n, g) = (cfg.block_size, cfg.grid());
        let mut samples = Vec::new();
        for r in 0..a.warmup + a.reps {
            let timed = r >= a.warmup;
            gpt.session_mut().reset_profile();
            let t = Instant::now();
            let tokens = gpt.generate(&cond, &index, a.seed + r as u64, |_| {})?;
            let gpt_s = t.elapsed().as_secs_f64();
            let gpt_profile = profile.then(|| gpt.session().profile());
            let (vq_s, vq_profile) = match vq.as_deref_mut() {
                Some(v) => {
                    let size = v.cfg.codebook_size as u32;
                    let codes: Vec<u32> = tokens.iter().flatten().map(|&t| t % size).collect();
                    if let Some(s) = v.session_mut() {
                        s.set_profiling(profile);
                        s.reset_profile();
                    }
                    let t = Instant::now();
                    v.decode(&codes, b, g, g)?;
                    let s = t.elapsed().as_secs_f64();
                    let prof = v.session().filter(|s| s.profiling()).map(|s| s.profile());
                    (Some(s), prof)
                }
                None => (None, None),
            };
            tracing::info!(
                "{} {}px b={b} cfg={} top-k={} {:?}: {} {}/{}: GPT {:.3} s{}",
                self.model,
                g * self.vq.map_or(16, |(v, _)| v.downsample()),
                self.cfg_scale,
                self.top_k,
                self.dtype,
                if timed { "rep" } else { "warm-up" },
                if timed { r - a.warmup + 1 } else { r + 1 },
                if timed { a.reps } else { a.warmup },
                gpt_s,
                vq_s.map_or(String::new(), |s| format!(", VQ {s:.3} s"))
            );
            if timed {
                samples.push(Sample {
                    gpt_s,
                    vq_s,
                    split: gpt_profile.as_ref().map(split),
                    gpt_profile,
                    vq_profile,
                });
            }
        }
        // Costs from the graphs that ran.
        let w = if self.dtype == Dtype::Bf16 {
            Widths::BF16
        } else {
            Widths::F32
        };
        let t = cfg.cls_token_num;
        let rows = if self.cfg_scale > 1.0 { 2 * b } else { b };
        let s = gpt.session();
        let pg = find_graph(s, Phase::Prefill, "image_index", b).context("prefill graph")?;
        let dg = find_graph(s, Phase::Decode, "ids", rows).context("decode graph")?;
        let positions: Vec<usize> = (0..n.saturating_sub(1)).map(|i| t + i).collect();
        let pre_ops = op_costs(s.graph(pg), &[0], w);
        let dec_ops = op_costs(s.graph(dg), &positions, w);
        let steps = positions.len().max(1) as f64;
        let vq_ops = match vq.as_deref() {
            Some(v) => {
                let vs = v.session().context("VQ session")?;
                let vg = find_graph(vs, Phase::VqDecode, "codes", b * g * g).context("VQ decode graph")?;
                let vw = Widths {
                    weight: 4,
                    codebook: v.cfg.codebook_size,
                };
                Some(op_costs(vs.graph(vg), &[0], vw))
            }
            None => None,
        };
        let (bf, nf, tf) = (b as f64, n as f64, t as f64);
        let col = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
        let mut out = Vec::new();
        if let (false, Some(path)) = (a.synthetic_weights, &a.gpt) {
            // from the file to weights ready in the backend (its creation included): the file read once, the weights
            // written once
            let file = std::fs::metadata(path).map_or(0, |m| m.len()) as f64;
            let params: usize = cfg
                .weight_shapes()
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            let cost = Cost {
                flops: 0.0,
                bytes: file + (params * w.weight) as f64,
            };
            out.push(self.row("load", "model", &[load_s], None, cost));
        }
        let gpt_cost = sum_cost(&pre_ops, "", true) + sum_cost(&dec_ops, "", true);
        if samples[0].split.is_some() {
            let pre = col(|s| s.split.expect("profiled").0);
            out.push(self.row(
                "prefill",
                "batch",
                &pre,
                Some((0.0, bf * tf)),
                sum_cost(&pre_ops, "sampling", true),
            ));
            let dec = col(|s| {
                let (_, d, _, runs) = s.split.expect("profiled");
                d / runs.max(1) as f64
            });
            out.push(self.row(
                "decode_step",
                "step",
                &dec,
                Some((0.0, bf)),
                sum_cost(&dec_ops, "sampling", true) * (1.0 / steps),
            ));
            let smp = col(|s| {
                let (_, _, sm, runs) = s.split.expect("profiled");
                sm / (runs + 1) as f64
            });
            out.push(self.row(
                "sampling",
                "step",
                &smp,
                Some((0.0, bf)),
                sum_cost(&pre_ops, "sampling", false),
            ));
        }
        let gen = col(|s| s.gpt_s);
        let mut gen_row = self.row("gpt_generate", "batch", &gen, Some((bf, bf * nf)), gpt_cost);
        // Floor of the whole generation: prefill + Σ per-step floors (steps are sequential, so their floors add up;
        // the floor of the summed cost would let one step's compute overlap another's memory traffic).
        if let Some(c) = self.ceilings {
            let bf16 = self.dtype == Dtype::Bf16;
            let dgraph = s.graph(dg);
            let mut floor = c.floor(sum_cost(&pre_ops, "", true), bf16).0;
            let mut mem = 0.0;
            for &pos in &positions {
                let step: Cost = dgraph.nodes.iter().map(|nd| node_cost(dgraph, nd, pos, w)).sum();
                let (f, bound) = c.floor(step, bf16);
                floor += f;
                if bound == Bound::Mem {
                    mem += f;
                }
            }
            gen_row.floor_ms = Some(floor * 1e3);
            gen_row.pct_of_ceiling = Some(100.0 * floor / (gen_row.time_ms / 1e3));
            gen_row.bound = Some(if mem >= floor / 2.0 {
                "mem"
            } else if bf16 {
                "gemm-bf16"
            } else {
                "gemm-f32"
            });
        }
        let gpt_floor_ms = gen_row.floor_ms;
        out.push(gen_row);
        if let Some(vops) = &vq_ops {
            let vqt = col(|s| s.vq_s.expect("VQ ran"));
            let vcost = sum_cost(vops, "", true);
            let vq_row = self.row("vq_decode", "batch", &vqt, Some((bf, bf * nf)), vcost);
            let vq_floor_ms = vq_row.floor_ms;
            out.push(vq_row);
            let tot = col(|s| s.gpt_s + s.vq_s.expect("VQ ran"));
            let mut total = self.row("total", "batch", &tot, Some((bf, bf * nf)), gpt_cost + vcost);
            if let (Some(gf), Some(vf)) = (gpt_floor_ms, vq_floor_ms) {
                total.floor_ms = Some(gf + vf);
                total.pct_of_ceiling = Some(100.0 * (gf + vf) / total.time_ms);
                let gpt_bound = out.iter().find(|r| r.stage == "gpt_generate").and_then(|r| r.bound);
                total.bound = if gf >= vf { gpt_bound } else { Some(Bound::F32.as_str()) };
            }
            out.push(total);
        }
        if a.ops && samples[0].gpt_profile.is_some() {
            out.extend(self.op_rows(
                "prefill",
                Phase::Prefill,
                &samples,
                |s| s.gpt_profile.as_ref(),
                &pre_ops,
            ));
            out.extend(self.op_rows("decode", Phase::Decode, &samples, |s| s.gpt_profile.as_ref(), &dec_ops));
            if let Some(vops) = &vq_ops {
                if samples.iter().all(|s| s.vq_profile.is_some()) {
                    out.extend(self.op_rows("vq_decode", Phase::VqDecode, &samples, |s| s.vq_profile.as_ref(), vops));
                }
            }
        }
        Ok(out)
    }

    /// One row per op of a stage: time per batch summed over the stage's runs.
    fn op_rows(
        &self,
        stage: &str,
        phase: Phase,
        samples: &[Sample],
        prof: fn(&Sample) -> Option<&Profile>,
        costs: &[(&'static str, Cost)],
    ) -> Vec<Row> {
        costs
            .iter()
            .map(|&(op, cost)| {
                let times: Vec<f64> = samples
                    .iter()
                    .map(|s| prof(s).map_or(0.0, |p| p.op(Some(phase), op).0))
                    .collect();
                self.row(&format!("{stage}/{op}"), "batch", &times, None, cost)
            })
            .collect()
    }
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
    let dtypes: Vec<Dtype> = a.dtype.iter().map(|&d| d.into()).collect();
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

fn pm(mean: f64, std: f64) -> String {
    let digits = |v: f64| {
        if v.abs() >= 100.0 {
            1
        } else if v.abs() >= 1.0 {
            2
        } else {
            4
        }
    };
    let d = digits(mean);
    format!("{mean:.d$} ± {std:.d$}")
}

fn opt_pm(m: Option<f64>, s: Option<f64>) -> String {
    match (m, s) {
        (Some(m), Some(s)) => pm(m, s),
        _ => String::new(),
    }
}

fn markdown(rows: &[Row], ceilings: Option<&Ceilings>) -> String {
    let mut s = String::new();
    if let Some(c) = ceilings {
        s += &format!("Ceilings: {}\n\n", c.describe());
    }
    let head =
        "| commit | device | threads | dtype | model | vq | size | batch | cfg | top-k | stage | time (ms) | per | \
                images/s | tokens/s | floor (ms) | % of ceiling | bound |\n\
                |---|---|---:|---|---|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---|\n";
    let line = |r: &Row| {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.commit,
            r.device,
            r.threads,
            r.dtype,
            r.model,
            r.vq,
            r.image_size,
            r.batch,
            r.cfg,
            r.top_k,
            r.stage,
            pm(r.time_ms, r.time_ms_std),
            r.per,
            opt_pm(r.images_per_s, r.images_per_s_std),
            opt_pm(r.tokens_per_s, r.tokens_per_s_std),
            r.floor_ms.map_or(String::new(), |f| format!("{f:.3}")),
            r.pct_of_ceiling.map_or(String::new(), |p| format!("{p:.1}")),
            r.bound.unwrap_or(""),
        )
    };
    let (stages, ops): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| !r.stage.contains('/'));
    s += head;
    stages.iter().for_each(|r| s += &line(r));
    if !ops.is_empty() {
        s += "\nPer op (time per batch, summed over the stage's runs):\n\n";
        s += head;
        ops.iter().for_each(|r| s += &line(r));
    }
    s
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "commit,device,threads,dtype,model,vq,image_size,batch,cfg,top_k,stage,per,time_ms,time_ms_std,\
         images_per_s,images_per_s_std,tokens_per_s,tokens_per_s_std,floor_ms,pct_of_ceiling,bound,gflop,gbytes,reps\n",
    );
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
    for r in rows {
        let fields = [
            csv_field(&r.commit),
            csv_field(&r.device),
            r.threads.to_string(),
            r.dtype.clone(),
            csv_field(&r.model),
            csv_field(&r.vq),
            r.image_size.to_string(),
            r.batch.to_string(),
            r.cfg.to_string(),
            r.top_k.to_string(),
            csv_field(&r.stage),
            r.per.to_string(),
            format!("{}", r.time_ms),
            format!("{}", r.time_ms_std),
            o(r.images_per_s),
            o(r.images_per_s_std),
            o(r.tokens_per_s),
            o(r.tokens_per_s_std),
            o(r.floor_ms),
            o(r.pct_of_ceiling),
            r.bound.unwrap_or("").to_string(),
            format!("{}", r.gflop),
            format!("{}", r.gbytes),
            r.reps.to_string(),
        ];
        s += &fields.join(",");
        s.push('\n');
    }
    s
}
