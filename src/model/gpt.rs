//! The GPT runner: binds a state dict to the weight table, builds the prefill and decode graphs, and drives them
//! (prefill, then one decode step per image token, sampled tokens fed back on the device).
use super::config::{GptConfig, ModelType};
use super::gpt_graph::{self, GptGraphSpec, GptWeightIds, LayerIds};
use super::rope_table::rope_table;
use super::Dtype;
use crate::ops::{Backend, KvSpec, Layout, Weight};
use crate::runtime::{GraphId, Session, StepParams, WeightId};
use crate::sample::sampler::SamplingParams;
use crate::weights::StateDict;
use crate::{Error, Result};

/// What each image is conditioned on.
#[derive(Clone, Debug)]
pub enum Condition {
    /// One class id per image.
    Classes(Vec<usize>),
    /// Precomputed T5 features per image, left-padded: `embs` [B, T, caption_dim], `mask` [B, T] (1 = valid).
    Captions { embs: Vec<f32>, mask: Vec<f32> },
}

impl Condition {
    pub fn len(&self, cfg: &GptConfig) -> usize {
        match self {
            Condition::Classes(c) => c.len(),
            Condition::Captions { mask, .. } => mask.len() / cfg.cls_token_num,
        }
    }
    pub fn is_empty(&self, cfg: &GptConfig) -> bool {
        self.len(cfg) == 0
    }
}

pub(super) fn round_vec(v: &mut [f32], dtype: Dtype) {
    if dtype == Dtype::Bf16 {
        v.iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32());
    }
}

struct Table {
    weights: Vec<Weight>,
}

impl Table {
    fn add(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>, storage: Dtype) -> WeightId {
        self.weights.push(Weight {
            name: name.into(),
            shape,
            data,
            storage,
            layout: Layout::Plain,
        });
        WeightId(self.weights.len() as u32 - 1)
    }
}

/// Checks every tensor the GPT reads (presence, shape, finiteness) and lays out the device weight table: matmul
/// weights and embedding tables in the chosen storage, norm weights as f32 holding values of the chosen precision,
/// w1|w3 stacked so the FFN input is read once, and the rotary table (computed, never read from the checkpoint).
/// Returns the table, its ids, and the host-side t2i `uncond_embedding`.
pub fn bind_weights(
    cfg: &GptConfig,
    sd: &mut StateDict,
    dtype: Dtype,
) -> Result<(Vec<Weight>, GptWeightIds, Option<Vec<f32>>)> {
    let big = dtype;
    let shapes: std::collections::HashMap<String, Vec<usize>> = cfg.weight_shapes().into_iter().collect();
    let mut take = |name: &str| -> Result<Vec<f32>> {
        let shape = &shapes[name];
        let t = sd.take_checked(name, shape)?;
        Ok(t.data)
    };
    let mut t = Table { weights: Vec::new() };
    let (d, f) = (cfg.dim, cfg.ffn_hidden());
    let small = |t: &mut Table, name: &str, data: Vec<f32>| {
        let mut data = data;
        round_vec(&mut data, dtype);
        t.add(name, vec![data.len()], data, Dtype::F32)
    };
    let (cls_table, cap_fc, uncond) = match cfg.model_type {
        ModelType::C2i => {
            let n = "cls_embedding.embedding_table.weight";
            (Some(t.add(n, shapes[n].clone(), take(n)?, big)), None, None)
        }
        ModelType::T2i => {
            let mut unc = take("cls_embedding.uncond_embedding")?;
            round_vec(&mut unc, dtype);
            let fc1 = t.add(
                "cls_embedding.cap_proj.fc1.weight",
                vec![d, cfg.caption_dim],
                take("cls_embedding.cap_proj.fc1.weight")?,
                big,
            );
            let fc2 = t.add(
                "cls_embedding.cap_proj.fc2.weight",
                vec![d, d],
                take("cls_embedding.cap_proj.fc2.weight")?,
                big,
            );
            (None, Some((fc1, fc2)), Some(unc))
        }
    };
    let tok = t.add(
        "tok_embeddings.weight",
        vec![cfg.vocab_size, d],
        take("tok_embeddings.weight")?,
        big,
    );
    let rope = {
        let tab = rope_table(cfg.cls_token_num, cfg.grid(), cfg.head_dim(), cfg.rope_base);
        t.add("rope.table", vec![tab.len()], tab, Dtype::F32)
    };
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let p = format!("layers.{i}");
        let attention_norm = small(
            &mut t,
            &format!("{p}.attention_norm.weight"),
            take(&format!("{p}.attention_norm.weight"))?,
        );
        let wqkv = t.add(
            &format!("{p}.attention.wqkv.weight"),
            vec![3 * d, d],
            take(&format!("{p}.attention.wqkv.weight"))?,
            big,
        );
        let wo = t.add(
            &format!("{p}.attention.wo.weight"),
            vec![d, d],
            take(&format!("{p}.attention.wo.weight"))?,
            big,
        );
        let ffn_norm = small(
            &mut t,
            &format!("{p}.ffn_norm.weight"),
            take(&format!("{p}.ffn_norm.weight"))?,
        );
        let mut w13 = take(&format!("{p}.feed_forward.w1.weight"))?;
        w13.extend(take(&format!("{p}.feed_forward.w3.weight"))?);
        let w13 = t.add(&format!("{p}.feed_forward.w1|w3"), vec![2 * f, d], w13, big);
        let w2 = t.add(
            &format!("{p}.feed_forward.w2.weight"),
            vec![d, f],
            take(&format!("{p}.feed_forward.w2.weight"))?,
            big,
        );
        layers.push(LayerIds {
            attention_norm,
            wqkv,
            wo,
            ffn_norm,
            w13,
            w2,
        });
    }
    let norm = small(&mut t, "norm.weight", take("norm.weight")?);
    let output = t.add("output.weight", vec![cfg.vocab_size, d], take("output.weight")?, big);
    let ids = GptWeightIds {
        cls_table,
        cap_fc,
        tok,
        rope,
        layers,
        norm,
        output,
    };
    Ok((t.weights, ids, uncond))
}

/// The static KV cache for `rows` sequences of this GPT (bf16 in bf16 mode, like the reference).
pub fn kv_spec(cfg: &GptConfig, rows: usize, dtype: Dtype) -> KvSpec {
    KvSpec {
        layers: cfg.n_layer,
        batch: rows,
        heads: cfg.n_head,
        seq: cfg.cache_len(),
        head_dim: cfg.head_dim(),
        storage: dtype,
    }
}

/// Whether guidance applies to image token `token` (≥ 1: drawn after decode iteration `token − 1`): iterations
/// i > `cfg_interval` run unguided, −1 keeps guidance on throughout (the official `cfg_interval`).
pub fn guided_at(cfg_interval: i64, token: u32) -> bool {
    !(cfg_interval > -1 && token as i64 - 1 > cfg_interval)
}

#[derive(Clone, Debug)]
pub struct GptOptions {
    pub dtype: Dtype,
    /// Largest number of images per batch.
    pub batch: usize,
    pub cfg_scale: f32,
    /// Decode iterations i > cfg_interval run unguided (-1: always guided).
    pub cfg_interval: i64,
    pub sampling: SamplingParams,
}

pub struct GptRunner {
    pub cfg: GptConfig,
    opts: GptOptions,
    session: Session,
    ids: GptWeightIds,
    uncond: Option<Vec<f32>>,
    /// (images, prefill graph, decode graph) per batch size seen so far.
    graphs: Vec<(usize, GraphId, GraphId)>,
}

impl GptRunner {
    pub fn new(cfg: GptConfig, sd: &mut StateDict, opts: GptOptions, backend: Box<dyn Backend>) -> Result<Self> {
        if opts.batch == 0 {
            return Err(Error::Invalid("--batch-size must be at least 1".into()));
        }
        opts.sampling.validate()?;
        if !(opts.cfg_scale >= 0.0) || !opts.cfg_scale.is_finite() {
            return Err(Error::Invalid(format!(
                "--cfg-scale {} must be a finite number >= 0",
                opts.cfg_scale
            )));
        }
        let (weights, ids, uncond) = bind_weights(&cfg, sd, opts.dtype)?;
        let spec = GptGraphSpec {
            images: opts.batch,
            cfg_scale: opts.cfg_scale,
            sampling: opts.sampling,
            continuous: false,
        };
        let kv = kv_spec(&cfg, spec.rows(), opts.dtype);
        let graphs = vec![
            gpt_graph::prefill(&cfg, &ids, &spec)?,
            gpt_graph::decode(&cfg, &ids, &spec)?,
        ];
        let session = Session::new(backend, weights, Some(kv), graphs)?;
        Ok(GptRunner {
            cfg,
            opts,
            session,
            ids,
            uncond,
            graphs: vec![(spec.images, GraphId(0), GraphId(1))],
        })
    }

    pub fn options(&self) -> &GptOptions {
        &self.opts
    }

    pub fn arena_bytes(&self) -> usize {
        self.session.arena_bytes()
    }

    /// The session (benchmarks: profiling and the graphs' shapes).
    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    fn graphs_for(&mut self, images: usize) -> Result<(GraphId, GraphId)> {
        if images == 0 || images > self.opts.batch {
            return Err(Error::Invalid(format!(
                "batch of {images} images (1..={} allowed)",
                self.opts.batch
            )));
        }
        if let Some(&(_, p, d)) = self.graphs.iter().find(|g| g.0 == images) {
            return Ok((p, d));
        }
        let spec = GptGraphSpec {
            images,
            cfg_scale: self.opts.cfg_scale,
            sampling: self.opts.sampling,
            continuous: false,
        };
        let p = self
            .session
            .add_graph(gpt_graph::prefill(&self.cfg, &self.ids, &spec)?)?;
        let d = self
            .session
            .add_graph(gpt_graph::decode(&self.cfg, &self.ids, &spec)?)?;
        self.graphs.push((images, p, d));
        Ok((p, d))
    }

    fn cfg_on(&self) -> bool {
        self.opts.cfg_scale > 1.0
    }

    /// Writes the condition inputs of the prefill. Returns the t2i mask rows, which the decode graph needs too: all
    /// graphs share one arena, so the decode inputs are written only after the prefill has run.
    fn write_condition(&mut self, cond: &Condition, prefill: GraphId) -> Result<Option<Vec<f32>>> {
        let b = cond.len(&self.cfg);
        let cfg_on = self.cfg_on();
        match cond {
            Condition::Classes(classes) => {
                let nc = self.cfg.num_classes;
                let mut ids: Vec<i32> = Vec::with_capacity(2 * b);
                for &c in classes {
                    if c >= nc {
                        return Err(Error::Invalid(format!("class {c} is outside 0..{nc}")));
                    }
                    ids.push(c as i32);
                }
                if cfg_on {
                    ids.extend(std::iter::repeat_n(nc as i32, b));
                }
                self.session.write_i32(prefill, "cond_ids", &ids)?;
                Ok(None)
            }
            Condition::Captions { embs, mask } => {
                let (t, cd) = (self.cfg.cls_token_num, self.cfg.caption_dim);
                if embs.len() != b * t * cd {
                    return Err(Error::Invalid(format!(
                        "caption embeddings: expected {b}×{t}×{cd} values, got {}",
                        embs.len()
                    )));
                }
                let mut x = embs.clone();
                round_vec(&mut x, self.opts.dtype);
                let mut m = mask.clone();
                if cfg_on {
                    let unc = self
                        .uncond
                        .as_ref()
                        .ok_or_else(|| Error::Invalid("a c2i model takes no captions".into()))?;
                    for _ in 0..b {
                        x.extend_from_slice(unc);
                    }
                    m.extend_from_slice(mask);
                }
                self.session.write_f32(prefill, "caption", &x)?;
                self.session.write_f32(prefill, "cond_mask", &m)?;
                Ok(Some(m))
            }
        }
    }

    /// Runs the prefill, hands `take` its results (the graphs share the arena, so they must be read before the
    /// decode graph's inputs are written over it), then writes the decode graph's persistent inputs.
    fn start<R>(
        &mut self,
        (cond, idx): (&Condition, &[i32]),
        (prefill, decode): (GraphId, GraphId),
        step: &StepParams,
        take: impl FnOnce(&mut Session) -> Result<R>,
    ) -> Result<R> {
        let mask = self.write_condition(cond, prefill)?;
        self.session.write_i32(prefill, "image_index", idx)?;
        self.session.run(prefill, step)?;
        let r = take(&mut self.session)?;
        if let Some(m) = mask {
            self.session.write_f32(decode, "cond_mask", &m)?;
        }
        self.session.write_i32(decode, "image_index", idx)?;
        Ok(r)
    }

    /// Runs the whole generation for one batch; returns `g²` tokens per image. `on_token` is called after each step.
    pub fn generate(
        &mut self,
        cond: &Condition,
        image_index: &[u64],
        seed: u64,
        on_token: impl FnMut(usize) + Send,
    ) -> Result<Vec<Vec<u32>>> {
        // Drive the loop from a pool worker: the ops' parallel jobs then go to its own deque instead of the global
        // injector, which costs a wake-up per op and a heap block per ~60 jobs.
        rayon::scope(|_| self.generate_in_pool(cond, image_index, seed, on_token))
    }

    fn generate_in_pool(
        &mut self,
        cond: &Condition,
        image_index: &[u64],
        seed: u64,
        mut on_token: impl FnMut(usize) + Send,
    ) -> Result<Vec<Vec<u32>>> {
        let b = cond.len(&self.cfg);
        if image_index.len() != b {
            return Err(Error::Invalid("one image index per condition needed".into()));
        }
        let (prefill, decode) = self.graphs_for(b)?;
        let idx: Vec<i32> = image_index.iter().map(|&i| i as i32).collect();
        let n = self.cfg.block_size;
        let t = self.cfg.cls_token_num;
        let mut out = vec![Vec::with_capacity(n); b];
        let mut step = StepParams {
            pos: 0,
            step: 0,
            cfg_active: true,
            seed,
        };
        let toks = self.start((cond, &idx), (prefill, decode), &step, |s| {
            s.read_i32(prefill, "tokens")
        })?;
        out.iter_mut().zip(&toks).for_each(|(o, &tk)| o.push(tk as u32));
        on_token(0);
        // The step loop's tensors, looked up once.
        let (tokens, ids) = (
            self.session.tensor(decode, "tokens")?,
            self.session.tensor(decode, "ids")?,
        );
        self.session.write_i32(decode, ids, &toks)?;
        for i in 0..n.saturating_sub(1) {
            step.pos = t + i;
            step.step = i as u32 + 1;
            step.cfg_active = guided_at(self.opts.cfg_interval, step.step);
            self.session.run(decode, &step)?;
            let toks = self.session.read_i32(decode, tokens)?;
            out.iter_mut().zip(&toks).for_each(|(o, &tk)| o.push(tk as u32));
            on_token(i + 1);
            self.session.copy(decode, tokens, decode, ids)?;
        }
        Ok(out)
    }

    /// Full recomputation (no cache reuse): logits `[B', T + fed, V]` of one pass over the condition and the first
    /// `fed` tokens of each image. Used to check the KV-cache path.
    pub fn full_logits(&mut self, cond: &Condition, tokens: &[Vec<u32>], fed: usize) -> Result<Vec<f32>> {
        let b = cond.len(&self.cfg);
        if b != self.opts.batch {
            return Err(Error::Invalid(format!(
                "full recomputation runs the full batch of {}",
                self.opts.batch
            )));
        }
        let spec = GptGraphSpec {
            images: b,
            cfg_scale: self.opts.cfg_scale,
            sampling: self.opts.sampling,
            continuous: false,
        };
        let id = self
            .session
            .add_graph(gpt_graph::full(&self.cfg, &self.ids, &spec, fed)?)?;
        self.write_condition(cond, id)?;
        if let Condition::Captions { mask, .. } = cond {
            let mut m = mask.clone();
            if self.cfg_on() {
                m.extend_from_slice(mask);
            }
            self.session.write_f32(id, "cond_mask", &m)?;
        }
        let mut ids: Vec<i32> = tokens
            .iter()
            .flat_map(|tk| tk[..fed].iter().map(|&t| t as i32))
            .collect();
        if self.cfg_on() {
            ids.extend_from_within(..);
        }
        self.session.write_i32(id, "ids", &ids)?;
        self.session.run(id, &StepParams::default())?;
        self.session.read_f32(id, "logits_all")
    }

    /// Teacher forcing: prefill, then feed `tokens[img][0..N-1]`; returns logits `[B', N, V]` where column j predicts
    /// image token j (column 0 comes from the last condition position), like the golden fixtures.
    pub fn teacher_force(&mut self, cond: &Condition, tokens: &[Vec<u32>]) -> Result<Vec<f32>> {
        let b = cond.len(&self.cfg);
        let (prefill, decode) = self.graphs_for(b)?;
        let idx: Vec<i32> = (0..b as i32).collect();
        let (n, v, t) = (self.cfg.block_size, self.cfg.vocab_size, self.cfg.cls_token_num);
        let rows = if self.cfg_on() { 2 * b } else { b };
        let mut logits = vec![0f32; rows * n * v];
        let mut put = |col: usize, l: &[f32]| {
            for r in 0..rows {
                logits[(r * n + col) * v..(r * n + col + 1) * v].copy_from_slice(&l[r * v..(r + 1) * v]);
            }
        };
        let mut step = StepParams {
            pos: 0,
            step: 0,
            cfg_active: true,
            seed: 0,
        };
        let first = self.start((cond, &idx), (prefill, decode), &step, |s| {
            s.read_f32(prefill, "logits")
        })?;
        put(0, &first);
        for i in 0..n - 1 {
            let mut ids: Vec<i32> = tokens.iter().map(|tk| tk[i] as i32).collect();
            if self.cfg_on() {
                ids.extend_from_within(..);
            }
            self.session.write_i32(decode, "ids", &ids)?;
            step.pos = t + i;
            step.step = i as u32 + 1;
            self.session.run(decode, &step)?;
            put(i + 1, &self.session.read_f32(decode, "logits")?);
        }
        Ok(logits)
    }
}
