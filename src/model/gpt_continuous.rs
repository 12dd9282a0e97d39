//! The GPT for continuous batching (`llamagen serve`): every row of the batch owns a slot of the KV cache and sits
//! at its own position, so rows join (prefill) and leave (their image is done) at any decode step. The graphs end at
//! the logits: the caller mixes CFG and samples each row with its own request's settings.
//!
//! Row by row this runs exactly the ops of `GptRunner` (prefill over the condition, then one decode step per image
//! token at the next position), which is why a served image equals the batch CLI's: every op computes each row
//! independently of the others (the batch-invariance tests check it).
use super::config::{GptConfig, ModelType};
use super::gpt::{bind_weights, kv_spec, round_vec};
use super::gpt_graph::{self, GptGraphSpec, GptWeightIds};
use super::Dtype;
use crate::ops::Backend;
use crate::runtime::{GraphId, Session, StepParams};
use crate::sample::sampler::SamplingParams;
use crate::weights::StateDict;
use crate::{Error, Result};

/// What one row is conditioned on.
#[derive(Clone, Debug, PartialEq)]
pub enum RowCondition {
    /// A class id (c2i); `num_classes` is the unconditional row of CFG.
    Class(usize),
    /// t2i: caption features `[T, caption_dim]` (None: the model's unconditional embedding) and the row's mask
    /// `[T]` (1 = valid; the unconditional row of an image shares its image's mask).
    Caption { embs: Option<Vec<f32>>, mask: Vec<f32> },
}

/// A row joining the batch: its cache slot and condition.
#[derive(Clone, Debug)]
pub struct NewRow {
    pub slot: usize,
    pub cond: RowCondition,
}

/// A running row: its cache slot, the token fed at this step, and the position that token takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepRow {
    pub slot: usize,
    pub token: u32,
    pub pos: usize,
}

pub struct ContinuousGpt {
    pub cfg: GptConfig,
    dtype: Dtype,
    session: Session,
    ids: GptWeightIds,
    uncond: Option<Vec<f32>>,
    slots: usize,
    /// (rows, prefill graph, decode graph) per row count seen so far.
    graphs: Vec<(usize, GraphId, GraphId)>,
    /// t2i: each slot's mask, written with every decode step (rows move between graph rows from step to step).
    masks: Vec<Vec<f32>>,
}

impl ContinuousGpt {
    /// Binds the weights and allocates a KV cache of `slots` rows (two per guided image).
    pub fn new(
        cfg: GptConfig,
        sd: &mut StateDict,
        dtype: Dtype,
        slots: usize,
        backend: Box<dyn Backend>,
    ) -> Result<Self> {
        if slots == 0 {
            return Err(Error::Invalid("continuous batching needs at least one KV slot".into()));
        }
        let (weights, ids, uncond) = bind_weights(&cfg, sd, dtype)?;
        let kv = kv_spec(&cfg, slots, dtype);
        let session = Session::new(backend, weights, Some(kv), Vec::new())?;
        Ok(ContinuousGpt {
            masks: vec![Vec::new(); slots],
            cfg,
            dtype,
            session,
            ids,
            uncond,
            slots,
            graphs: Vec::new(),
        })
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn backend_name(&self) -> &'static str {
        self.session.backend_name()
    }

    fn graphs_for(&mut self, rows: usize) -> Result<(GraphId, GraphId)> {
        if rows == 0 || rows > self.slots {
            return Err(Error::Invalid(format!("{rows} rows (1..={} slots)", self.slots)));
        }
        if let Some(&(_, p, d)) = self.graphs.iter().find(|g| g.0 == rows) {
            return Ok((p, d));
        }
        let spec = GptGraphSpec {
            images: rows,
            cfg_scale: 1.0,
            sampling: SamplingParams::default(),
            continuous: true,
        };
        let p = self
            .session
            .add_graph(gpt_graph::prefill(&self.cfg, &self.ids, &spec)?)?;
        let d = self
            .session
            .add_graph(gpt_graph::decode(&self.cfg, &self.ids, &spec)?)?;
        self.graphs.push((rows, p, d));
        Ok((p, d))
    }

    fn check_slots(&self, slots: impl Iterator<Item = usize>) -> Result<()> {
        let mut seen = vec![false; self.slots];
        for s in slots {
            if s >= self.slots || std::mem::replace(&mut seen[s], true) {
                return Err(Error::Invalid(format!(
                    "slot {s} is out of range or used twice in one run"
                )));
            }
        }
        Ok(())
    }

    /// Prefills the condition positions of new rows into their slots; returns their logits `[rows, V]` (which
    /// predict image token 0).
    pub fn prefill(&mut self, rows: &[NewRow]) -> Result<Vec<f32>> {
        self.check_slots(rows.iter().map(|r| r.slot))?;
        let (prefill, _) = self.graphs_for(rows.len())?;
        let t = self.cfg.cls_token_num;
        let table: Vec<i32> = rows.iter().flat_map(|r| [r.slot as i32, 0]).collect();
        match self.cfg.model_type {
            ModelType::C2i => {
                let nc = self.cfg.num_classes;
                let mut ids = Vec::with_capacity(rows.len());
                for r in rows {
                    match r.cond {
                        RowCondition::Class(c) if c <= nc => ids.push(c as i32),
                        ref c => return Err(Error::Invalid(format!("c2i row condition {c:?} (classes 0..={nc})"))),
                    }
                }
                self.session.write_i32(prefill, "cond_ids", &ids)?;
            }
            ModelType::T2i => {
                let cd = self.cfg.caption_dim;
                let (mut x, mut m) = (
                    Vec::with_capacity(rows.len() * t * cd),
                    Vec::with_capacity(rows.len() * t),
                );
                for r in rows {
                    let RowCondition::Caption { embs, mask } = &r.cond else {
                        return Err(Error::Invalid("a t2i model takes caption rows".into()));
                    };
                    let e = match embs {
                        Some(e) => e.as_slice(),
                        None => self
                            .uncond
                            .as_deref()
                            .ok_or_else(|| Error::Invalid("no uncond embedding".into()))?,
                    };
                    if e.len() != t * cd || mask.len() != t {
                        return Err(Error::Invalid(format!(
                            "caption row: expected {t}×{cd} features and {t} mask values, got {} and {}",
                            e.len(),
                            mask.len()
                        )));
                    }
                    let start = x.len();
                    x.extend_from_slice(e);
                    // The caption features only: the unconditional embedding is already stored at the model's dtype.
                    if embs.is_some() {
                        round_vec(&mut x[start..], self.dtype);
                    }
                    m.extend_from_slice(mask);
                    self.masks[r.slot] = mask.clone();
                }
                self.session.write_f32(prefill, "caption", &x)?;
                self.session.write_f32(prefill, "cond_mask", &m)?;
            }
        }
        self.session.write_i32(prefill, "rows", &table)?;
        self.session.run(prefill, &StepParams::default())?;
        self.session.read_f32(prefill, "logits")
    }

    /// One decode step of the running rows: each row's token goes in at its position; returns the logits
    /// `[rows, V]` (which predict the next token).
    pub fn decode(&mut self, rows: &[StepRow]) -> Result<Vec<f32>> {
        self.check_slots(rows.iter().map(|r| r.slot))?;
        // The CUDA kernels cannot report a bad position from the device: every row is checked here.
        let (t, seq) = (self.cfg.cls_token_num, self.cfg.cache_len());
        if let Some(r) = rows.iter().find(|r| r.pos < t || r.pos >= seq) {
            return Err(Error::Invalid(format!(
                "slot {}: position {} is outside the image positions {t}..{seq}",
                r.slot, r.pos
            )));
        }
        let (_, decode) = self.graphs_for(rows.len())?;
        let v = self.cfg.vocab_size;
        let ids: Vec<i32> = rows
            .iter()
            .map(|r| {
                i32::try_from(r.token)
                    .ok()
                    .filter(|&t| (t as usize) < v)
                    .ok_or_else(|| Error::Invalid(format!("token {} is outside the vocabulary 0..{v}", r.token)))
            })
            .collect::<Result<_>>()?;
        let table: Vec<i32> = rows.iter().flat_map(|r| [r.slot as i32, r.pos as i32]).collect();
        self.session.write_i32(decode, "ids", &ids)?;
        self.session.write_i32(decode, "rows", &table)?;
        if self.cfg.model_type == ModelType::T2i {
            let m: Vec<f32> = rows.iter().flat_map(|r| self.masks[r.slot].iter().copied()).collect();
            self.session.write_f32(decode, "cond_mask", &m)?;
        }
        self.session.run(decode, &StepParams::default())?;
        self.session.read_f32(decode, "logits")
    }
}
