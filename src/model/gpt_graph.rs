//! The GPT as runtime graphs: prefill (condition positions) and one decode step. Reads like spec §3.4.
use super::config::{GptConfig, ModelType};
use crate::ops::{
    attention::Attention, concat::Concat, embed::Embed, gelu::Gelu, matmul::Matmul, matmul_swiglu::MatmulSwiglu,
    rmsnorm::Rmsnorm, rope::Rope, sampling::Sampling, take_last::TakeLast,
};
use crate::runtime::{Graph, Phase, Scalar, TensorId, WeightId};
use crate::sample::sampler::SamplingParams;
use crate::{Error, Result};

/// Weight ids of the GPT's table (see `gpt::bind_weights`).
#[derive(Clone, Debug)]
pub struct GptWeightIds {
    pub cls_table: Option<WeightId>,
    pub cap_fc: Option<(WeightId, WeightId)>,
    pub tok: WeightId,
    pub rope: WeightId,
    pub layers: Vec<LayerIds>,
    pub norm: WeightId,
    pub output: WeightId,
}

#[derive(Clone, Debug)]
pub struct LayerIds {
    pub attention_norm: WeightId,
    pub wqkv: WeightId,
    pub wo: WeightId,
    pub ffn_norm: WeightId,
    /// w1 and w3 stacked: `[2F, D]`.
    pub w13: WeightId,
    pub w2: WeightId,
}

/// Everything a GPT graph depends on besides weights.
#[derive(Clone, Debug)]
pub struct GptGraphSpec {
    /// Images in the batch.
    pub images: usize,
    pub cfg_scale: f32,
    pub sampling: SamplingParams,
    /// Continuous batching (`serve`): `images` counts rows (a guided image has two, placed anywhere), each row's
    /// cache slot and position come from the input `rows` I32 `[rows, 2]`, and the graph ends at the logits: the
    /// scheduler mixes and samples every request with its own settings.
    pub continuous: bool,
}

impl GptGraphSpec {
    /// Rows run through the transformer: `[cond; uncond]` when guidance is on (scale > 1 strictly).
    pub fn rows(&self) -> usize {
        if self.continuous {
            self.images
        } else if self.cfg_scale > 1.0 {
            2 * self.images
        } else {
            self.images
        }
    }
}

/// Graph inputs: `cond_ids` I32 [B'] (c2i) or `caption` F32 [B', T, caption_dim] (t2i), plus `cond_mask` F32 [B', T]
/// for t2i and `image_index` I32 [B]. Outputs: `logits` [B', V] and `tokens` I32 [B'].
pub fn prefill(cfg: &GptConfig, w: &GptWeightIds, spec: &GptGraphSpec) -> Result<Graph> {
    let mut g = Graph::new(Phase::Prefill);
    let (rows, t, d) = (spec.rows(), cfg.cls_token_num, cfg.dim);
    let missing = |what: &str| Error::Invalid(format!("a {:?} GPT without its {what}", cfg.model_type));
    let x = match cfg.model_type {
        ModelType::C2i => {
            let ids = g.input("cond_ids", &[rows], Scalar::I32);
            let table = w.cls_table.ok_or_else(|| missing("class embedding"))?;
            g.push(Embed { table, rows, d }, &[ids], "cond_emb", &[rows, 1, d])?
        }
        ModelType::T2i => {
            let (fc1, fc2) = w.cap_fc.ok_or_else(|| missing("caption MLP"))?;
            let cap = g.input("caption", &[rows, t, cfg.caption_dim], Scalar::F32);
            let (m, k) = (rows * t, cfg.caption_dim);
            let mm = |w, k| Matmul {
                w,
                m,
                k,
                n: d,
                residual: false,
            };
            let h = g.push(mm(fc1, k), &[cap], "cap_fc1", &[rows, t, d])?;
            let h = g.push(Gelu { n: m * d }, &[h], "cap_gelu", &[rows, t, d])?;
            g.push(mm(fc2, d), &[h], "cond_emb", &[rows, t, d])?
        }
    };
    let x = blocks(&mut g, cfg, w, spec, x, t)?;
    head(&mut g, cfg, w, spec, x, t)?;
    Ok(g)
}

/// Graph inputs: `ids` I32 [B'] (the token fed at this step, same for both CFG halves), `cond_mask` (t2i),
/// `image_index`. Outputs as for the prefill.
pub fn decode(cfg: &GptConfig, w: &GptWeightIds, spec: &GptGraphSpec) -> Result<Graph> {
    let mut g = Graph::new(Phase::Decode);
    let (rows, d) = (spec.rows(), cfg.dim);
    let ids = g.input("ids", &[rows], Scalar::I32);
    let x = g.push(Embed { table: w.tok, rows, d }, &[ids], "tok_emb", &[rows, 1, d])?;
    let x = blocks(&mut g, cfg, w, spec, x, 1)?;
    head(&mut g, cfg, w, spec, x, 1)?;
    Ok(g)
}

/// Full recomputation without reusing the cache: the condition and `fed` image tokens (input `ids` I32 [B', fed])
/// in one pass over positions 0..T+fed. Output `logits_all` [B', T+fed, V]. A check of the KV-cache path.
pub fn full(cfg: &GptConfig, w: &GptWeightIds, spec: &GptGraphSpec, fed: usize) -> Result<Graph> {
    let mut g = prefill(cfg, w, spec)?;
    // Keep only the prefill's embedding prologue: cut everything after the condition embedding.
    let cut = || Error::Invalid("the prefill graph has no cond_emb node".into());
    let cond = g.find("cond_emb").ok_or_else(cut)?;
    let keep = g.nodes.iter().position(|n| n.output == cond).ok_or_else(cut)? + 1;
    g.nodes.truncate(keep);
    let (rows, t, d) = (spec.rows(), cfg.cls_token_num, cfg.dim);
    let ids = g.input("ids", &[rows, fed], Scalar::I32);
    let tok = g.push(
        Embed {
            table: w.tok,
            rows: rows * fed,
            d,
        },
        &[ids],
        "tok_emb",
        &[rows, fed, d],
    )?;
    let cat = Concat {
        batch: rows,
        la: t,
        lb: fed,
        d,
    };
    let x = g.push(cat, &[cond, tok], "seq", &[rows, t + fed, d])?;
    let x = blocks(&mut g, cfg, w, spec, x, t + fed)?;
    let m = rows * (t + fed);
    let norm = Rmsnorm {
        w: w.norm,
        rows: m,
        d,
        eps: cfg.norm_eps as f32,
    };
    let xn = g.push(norm, &[x], "final_norm_all", &[rows, t + fed, d])?;
    let lm = Matmul {
        w: w.output,
        m,
        k: d,
        n: cfg.vocab_size,
        residual: false,
    };
    let logits = g.push(lm, &[xn], "logits_all", &[rows, t + fed, cfg.vocab_size])?;
    g.mark_output(logits);
    Ok(g)
}

/// The transformer blocks over `len` positions per row (spec §3.4 step 2).
fn blocks(
    g: &mut Graph,
    cfg: &GptConfig,
    w: &GptWeightIds,
    spec: &GptGraphSpec,
    mut x: TensorId,
    len: usize,
) -> Result<TensorId> {
    let (rows, d, f) = (spec.rows(), cfg.dim, cfg.ffn_hidden());
    let t = cfg.cls_token_num;
    let mask = match g.find("cond_mask") {
        Some(m) => Some(m),
        None => (cfg.model_type == ModelType::T2i).then(|| g.input("cond_mask", &[rows, t], Scalar::F32)),
    };
    let act = [rows, len, d];
    let place = match (spec.continuous, g.find("rows")) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => Some(g.input("rows", &[rows, 2], Scalar::I32)),
    };
    let (m, per_row, eps) = (rows * len, place.is_some(), cfg.norm_eps as f32);
    let (heads, head_dim) = (cfg.n_head, cfg.head_dim());
    let mm = |w, k, n, residual| Matmul { w, m, k, n, residual };
    for (i, l) in w.layers.iter().enumerate() {
        let hn = g.push(
            Rmsnorm {
                w: l.attention_norm,
                rows: m,
                d,
                eps,
            },
            &[x],
            format!("l{i}.attn_norm"),
            &act,
        )?;
        let qkv = g.push(
            mm(l.wqkv, d, 3 * d, false),
            &[hn],
            format!("l{i}.qkv"),
            &[rows, len, 3 * d],
        )?;
        let rope = Rope {
            layer: i,
            table: w.rope,
            rows,
            len,
            heads,
            head_dim,
            per_row,
        };
        let q = g.push(rope, &[&[qkv][..], place.as_slice()].concat(), format!("l{i}.q"), &act)?;
        let mut att_in = vec![q];
        att_in.extend(mask);
        att_in.extend(place);
        let att = Attention {
            layer: i,
            rows,
            len,
            heads,
            head_dim,
            mask: mask.map(|_| t),
            per_row,
        };
        let att = g.push(att, &att_in, format!("l{i}.att"), &act)?;
        let h = g.push(mm(l.wo, d, d, true), &[att, x], format!("l{i}.h"), &act)?;
        let fnorm = g.push(
            Rmsnorm {
                w: l.ffn_norm,
                rows: m,
                d,
                eps,
            },
            &[h],
            format!("l{i}.ffn_norm"),
            &act,
        )?;
        let s = g.push(
            MatmulSwiglu { w: l.w13, m, k: d, f },
            &[fnorm],
            format!("l{i}.w13"),
            &[rows, len, f],
        )?;
        x = g.push(mm(l.w2, f, d, true), &[s, h], format!("l{i}.out"), &act)?;
    }
    Ok(x)
}

/// Final norm, LM head on the last position, CFG + sampling (spec §3.4 step 3, §5.2-5.3).
fn head(g: &mut Graph, cfg: &GptConfig, w: &GptWeightIds, spec: &GptGraphSpec, x: TensorId, len: usize) -> Result<()> {
    let (rows, d, vocab) = (spec.rows(), cfg.dim, cfg.vocab_size);
    // Only the last position's logits are used: take it before the (row-wise) final norm and the LM head.
    let last = if len > 1 {
        g.push(TakeLast { batch: rows, len, d }, &[x], "last", &[rows, d])?
    } else {
        x
    };
    let norm = Rmsnorm {
        w: w.norm,
        rows,
        d,
        eps: cfg.norm_eps as f32,
    };
    let xn = g.push(norm, &[last], "final_norm", &[rows, d])?;
    let lm = Matmul {
        w: w.output,
        m: rows,
        k: d,
        n: vocab,
        residual: false,
    };
    let logits = g.push(lm, &[xn], "logits", &[rows, vocab])?;
    g.mark_output(logits);
    if spec.continuous {
        return Ok(());
    }
    let index = g.input("image_index", &[spec.images], Scalar::I32);
    let sampling = Sampling {
        rows,
        vocab,
        images: spec.images,
        cfg_scale: spec.cfg_scale,
        params: spec.sampling,
    };
    let tokens = g.push(sampling, &[logits, index], "tokens", &[rows])?;
    g.mark_output(tokens);
    Ok(())
}
