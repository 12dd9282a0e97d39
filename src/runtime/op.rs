//! The op set. Every op has one name used everywhere: `kernels/<op>.cu`, the CPU implementation
//! `backend::cpu::<op>`, its test and its bench. Shapes come from the graph's tensor table, not from the op.
use super::graph::WeightId;
use crate::sample::sampler::SamplingParams;

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// ids (I32 `[rows]`) -> rows of a table `[rows, D]` (token, class embeddings).
    Embed { table: WeightId },
    /// `x [M, K] · Wᵀ`, W `[N, K]` -> `[M, N]`.
    Matmul { w: WeightId },
    /// `residual + x · Wᵀ` (input 1 is the residual): the fused epilogue of `wo` and `w2`.
    MatmulAdd { w: WeightId },
    /// tanh-approximated GELU (the t2i caption MLP).
    GeluTanh,
    /// `x / sqrt(mean(x²) + eps) ⊙ w`.
    Rmsnorm { w: WeightId, eps: f32 },
    /// qkv `[B', L, 3D]` -> rotated q `[B', L, D]`; rotated k and v are written into the KV cache of `layer` at positions
    /// `pos .. pos + L` (pos from the step parameters). Condition positions get zero q and k (the official zero RoPE rows).
    /// `per_row`: input 1 is a row table I32 `[B', 2]` of (cache slot, first position) per row instead (continuous
    /// batching, `backend::Placement::PerRow`).
    Rope {
        layer: usize,
        table: WeightId,
        per_row: bool,
    },
    /// q `[B', L, D]` over the KV cache of `layer` -> `[B', L, D]`. Optional input 1: condition-key mask `[B', T]`
    /// (t2i padding; 1 = visible), with the diagonal always visible. `per_row`: the last input is the row table, as
    /// for `Rope`.
    Attention { layer: usize, per_row: bool },
    /// `[M, 2F]` (w1|w3 outputs side by side) -> `silu(a) · b`, `[M, F]`.
    Swiglu,
    /// `[B, La, D]` ++ `[B, Lb, D]` -> `[B, La + Lb, D]` along the sequence axis.
    Concat,
    /// `[B', L, D]` -> `[B', D]`: the last position only (the LM head runs on one row per sequence).
    TakeLast,
    /// logits `[B', V]` (+ image index per image I32 `[B]`) -> tokens I32 `[B']`: CFG mix, temperature, top-k, top-p,
    /// draw from the per-image counter RNG; both CFG halves receive the same token.
    Sampling { cfg_scale: f32, params: SamplingParams },
    /// Codes I32 `[n·h·w]` -> latent `[n, dim, h, w]` from the L2-normalised codebook.
    Codebook { codebook: WeightId },
    /// Nearest normalised code per position of z `[n, dim, h, w]` -> I32 `[n·h·w]`.
    Quantize { codebook: WeightId },
    /// Conv2d with bias; optional input 1 is a residual added in the epilogue.
    Conv {
        w: WeightId,
        b: WeightId,
        k: usize,
        stride: usize,
        pad: [usize; 4],
    },
    /// Nearest ×2 upsample then 3×3 conv, computed per output phase (weights pre-folded by the backend).
    UpsampleConv { w: WeightId, b: WeightId },
    /// GroupNorm (+ swish).
    Groupnorm {
        gamma: WeightId,
        beta: WeightId,
        groups: usize,
        eps: f32,
        silu: bool,
    },
    /// The VQ AttnBlock after its GroupNorm: inputs x, normed.
    VqAttention {
        q: [WeightId; 2],
        k: [WeightId; 2],
        v: [WeightId; 2],
        proj: [WeightId; 2],
    },
    /// Elementwise a + b.
    Add,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Embed { .. } => "embed",
            Op::Matmul { .. } | Op::MatmulAdd { .. } => "matmul",
            Op::GeluTanh => "gelu",
            Op::Rmsnorm { .. } => "rmsnorm",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Swiglu => "swiglu",
            Op::TakeLast => "take_last",
            Op::Concat => "concat",
            Op::Sampling { .. } => "sampling",
            Op::Codebook { .. } => "codebook",
            Op::Quantize { .. } => "quantize",
            Op::Conv { .. } => "conv",
            Op::UpsampleConv { .. } => "upsample_conv",
            Op::Groupnorm { .. } => "groupnorm",
            Op::VqAttention { .. } => "vq_attention",
            Op::Add => "add",
        }
    }
}
