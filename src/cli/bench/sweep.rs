//! One configuration of the sweep: warm-up, timed repetitions, and its rows (stages, and ops with --ops), each
//! with its floor from the ops' bytes and FLOPs over the machine's ceilings.
use super::*;

/// What one timed repetition measured.
pub(super) struct Sample {
    gpt_s: f64,
    vq_s: Option<f64>,
    /// From the profile: (prefill w/o sampling, decode w/o sampling, sampling, decode runs).
    split: Option<(f64, f64, f64, u64)>,
    gpt_profile: Option<Profile>,
    vq_profile: Option<Profile>,
}

pub(super) fn condition(cfg: &GptConfig, b: usize) -> Condition {
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

pub(super) fn split(p: &Profile) -> (f64, f64, f64, u64) {
    let (pre, _) = p.phase(Phase::Prefill);
    let (dec, runs) = p.phase(Phase::Decode);
    let (s_pre, _) = p.op(Some(Phase::Prefill), "sampling");
    let (s_dec, _) = p.op(Some(Phase::Decode), "sampling");
    (pre - s_pre, dec - s_dec, s_pre + s_dec, runs)
}

/// Graph of `phase` whose `input` tensor has `numel` elements (the batch's graph).
pub(super) fn find_graph(s: &Session, phase: Phase, input: &str, numel: usize) -> Option<GraphId> {
    s.graph_ids().find(|&id| {
        let g = s.graph(id);
        g.phase == phase && g.find(input).is_some_and(|t| g.info(t).numel() == numel)
    })
}

/// Per op name: cost over all the runs of one generation (decode graph at every position).
pub(super) fn op_costs(g: &Graph, positions: &[usize], w: Widths) -> Vec<(&'static str, Cost)> {
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

pub(super) fn sum_cost(v: &[(&'static str, Cost)], op: &str, exclude: bool) -> Cost {
    v.iter().filter(|e| (e.0 == op) != exclude).map(|e| e.1).sum()
}

pub(super) struct Job<'a> {
    pub(super) a: &'a BenchArgs,
    pub(super) env: &'a Env,
    pub(super) ceilings: Option<&'a Ceilings>,
    pub(super) model: &'a str,
    pub(super) cfg: &'a GptConfig,
    pub(super) vq: Option<(&'a VqConfig, &'a str)>,
    pub(super) dtype: Dtype,
    pub(super) batch: usize,
    pub(super) cfg_scale: f32,
    pub(super) top_k: usize,
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

    pub(super) fn run(&self, vq: Option<&mut VqRunner>) -> Result<Vec<Row>> {
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
                Some(op_costs(vs.graph(vg), &[0], Widths::F32))
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
