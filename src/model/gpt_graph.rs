//! The GPT as runtime graphs: prefill (condition positions) and one decode step. Reads like spec §3.4.
use super::config::{GptConfig, ModelType};
use crate::runtime::{Graph, Op, Phase, Scalar, TensorId, WeightId};
use crate::sample::sampler::SamplingParams;

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
pub fn prefill(cfg: &GptConfig, w: &GptWeightIds, spec: &GptGraphSpec) -> Graph {
    let mut g = Graph::new(Phase::Prefill);
    let (rows, t, d) = (spec.rows(), cfg.cls_token_num, cfg.dim);
    let x = match cfg.model_type {
        ModelType::C2i => {
            let ids = g.input("cond_ids", &[rows], Scalar::I32);
            g.push(
                Op::Embed {
                    table: w.cls_table.expect("c2i table"),
                },
                &[ids],
                "cond_emb",
                &[rows, 1, d],
                Scalar::F32,
            )
        }
        ModelType::T2i => {
            let (fc1, fc2) = w.cap_fc.expect("t2i caption MLP");
            let cap = g.input("caption", &[rows, t, cfg.caption_dim], Scalar::F32);
            let h = g.push(Op::Matmul { w: fc1 }, &[cap], "cap_fc1", &[rows, t, d], Scalar::F32);
            let h = g.push(Op::GeluTanh, &[h], "cap_gelu", &[rows, t, d], Scalar::F32);
            g.push(Op::Matmul { w: fc2 }, &[h], "cond_emb", &[rows, t, d], Scalar::F32)
        }
    };
    let x = blocks(&mut g, cfg, w, spec, x, t);
    head(&mut g, cfg, w, spec, x, t);
    g
}

/// Graph inputs: `ids` I32 [B'] (the token fed at this step, same for both CFG halves), `cond_mask` (t2i),
/// `image_index`. Outputs as for the prefill.
pub fn decode(cfg: &GptConfig, w: &GptWeightIds, spec: &GptGraphSpec) -> Graph {
    let mut g = Graph::new(Phase::Decode);
    let rows = spec.rows();
    let ids = g.input("ids", &[rows], Scalar::I32);
    let x = g.push(
        Op::Embed { table: w.tok },
        &[ids],
        "tok_emb",
        &[rows, 1, cfg.dim],
        Scalar::F32,
    );
    let x = blocks(&mut g, cfg, w, spec, x, 1);
    head(&mut g, cfg, w, spec, x, 1);
    g
}

/// Full recomputation without reusing the cache: the condition and `fed` image tokens (input `ids` I32 [B', fed])
/// in one pass over positions 0..T+fed. Output `logits_all` [B', T+fed, V]. A check of the KV-cache path.
pub fn full(cfg: &GptConfig, w: &GptWeightIds, spec: &GptGraphSpec, fed: usize) -> Graph {
    let mut g = prefill(cfg, w, spec);
    // Keep only the prefill's embedding prologue: cut everything after the condition embedding.
    let cond = g.find("cond_emb").expect("prefill defines cond_emb");
    let keep = g.nodes.iter().position(|n| n.output == cond).expect("cond_emb node") + 1;
    g.nodes.truncate(keep);
    let (rows, t, d) = (spec.rows(), cfg.cls_token_num, cfg.dim);
    let ids = g.input("ids", &[rows, fed], Scalar::I32);
    let tok = g.push(
        Op::Embed { table: w.tok },
        &[ids],
        "tok_emb",
        &[rows, fed, d],
        Scalar::F32,
    );
    let x = g.push(Op::Concat, &[cond, tok], "seq", &[rows, t + fed, d], Scalar::F32);
    let x = blocks(&mut g, cfg, w, spec, x, t + fed);
    let xn = g.push(
        Op::Rmsnorm {
            w: w.norm,
            eps: cfg.norm_eps as f32,
        },
        &[x],
        "final_norm_all",
        &[rows, t + fed, d],
        Scalar::F32,
    );
    let logits = g.push(
        Op::Matmul { w: w.output },
        &[xn],
        "logits_all",
        &[rows, t + fed, cfg.vocab_size],
        Scalar::F32,
    );
    g.mark_output(logits);
    g
}

/// The transformer blocks over `len` positions per row (spec §3.4 step 2).
fn blocks(
    g: &mut Graph,
    cfg: &GptConfig,
    w: &GptWeightIds,
    spec: &GptGraphSpec,
    mut x: TensorId,
    len: usize,
) -> TensorId {
    let (rows, d, f) = (spec.rows(), cfg.dim, cfg.ffn_hidden());
    let mask = match g.find("cond_mask") {
        Some(m) => Some(m),
        None => {
            (cfg.model_type == ModelType::T2i).then(|| g.input("cond_mask", &[rows, cfg.cls_token_num], Scalar::F32))
        }
    };
    let act = [rows, len, d];
    let place = match (spec.continuous, g.find("rows")) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => Some(g.input("rows", &[rows, 2], Scalar::I32)),
    };
    for (i, l) in w.layers.iter().enumerate() {
        let eps = cfg.norm_eps as f32;
        let hn = g.push(
            Op::Rmsnorm {
                w: l.attention_norm,
                eps,
            },
            &[x],
            format!("l{i}.attn_norm"),
            &act,
            Scalar::F32,
        );
        let qkv = g.push(
            Op::Matmul { w: l.wqkv },
            &[hn],
            format!("l{i}.qkv"),
            &[rows, len, 3 * d],
            Scalar::F32,
        );
        let q = g.push(
            Op::Rope {
                layer: i,
                table: w.rope,
                per_row: place.is_some(),
            },
            &[&[qkv][..], place.as_slice()].concat(),
            format!("l{i}.q"),
            &act,
            Scalar::F32,
        );
        let mut att_in = vec![q];
        att_in.extend(mask);
        att_in.extend(place);
        let att = g.push(
            Op::Attention {
                layer: i,
                per_row: place.is_some(),
            },
            &att_in,
            format!("l{i}.att"),
            &act,
            Scalar::F32,
        );
        let h = g.push(
            Op::MatmulAdd { w: l.wo },
            &[att, x],
            format!("l{i}.h"),
            &act,
            Scalar::F32,
        );
        let fnorm = g.push(
            Op::Rmsnorm { w: l.ffn_norm, eps },
            &[h],
            format!("l{i}.ffn_norm"),
            &act,
            Scalar::F32,
        );
        let ab = g.push(
            Op::Matmul { w: l.w13 },
            &[fnorm],
            format!("l{i}.w13"),
            &[rows, len, 2 * f],
            Scalar::F32,
        );
        let s = g.push(Op::Swiglu, &[ab], format!("l{i}.swiglu"), &[rows, len, f], Scalar::F32);
        x = g.push(
            Op::MatmulAdd { w: l.w2 },
            &[s, h],
            format!("l{i}.out"),
            &act,
            Scalar::F32,
        );
    }
    x
}

/// Final norm, LM head on the last position, CFG + sampling (spec §3.4 step 3, §5.2-5.3).
fn head(g: &mut Graph, cfg: &GptConfig, w: &GptWeightIds, spec: &GptGraphSpec, x: TensorId, len: usize) {
    let (rows, d) = (spec.rows(), cfg.dim);
    // Only the last position's logits are used: take it before the (row-wise) final norm and the LM head.
    let last = if len > 1 {
        g.push(Op::TakeLast, &[x], "last", &[rows, d], Scalar::F32)
    } else {
        x
    };
    let xn = g.push(
        Op::Rmsnorm {
            w: w.norm,
            eps: cfg.norm_eps as f32,
        },
        &[last],
        "final_norm",
        &[rows, d],
        Scalar::F32,
    );
    let logits = g.push(
        Op::Matmul { w: w.output },
        &[xn],
        "logits",
        &[rows, cfg.vocab_size],
        Scalar::F32,
    );
    g.mark_output(logits);
    if spec.continuous {
        return;
    }
    let index = g.input("image_index", &[spec.images], Scalar::I32);
    let tokens = g.push(
        Op::Sampling {
            cfg_scale: spec.cfg_scale,
            params: spec.sampling,
        },
        &[logits, index],
        "tokens",
        &[rows],
        Scalar::I32,
    );
    g.mark_output(tokens);
}
