//! One graph per op at real LlamaGen shapes (GPT-B at 256 px with guidance: 2 or 16 rows; VQ-16 decoding one
//! 256 px image), run through the same `Session` and dispatch as the models, so a bench measures exactly what a
//! model step pays for that node. Used by `benches/ops.rs` (criterion) and `llamagen bench --ops`.
use super::cost::{graph_cost, Cost, Widths};
use crate::backend::cpu::CpuBackend;
use crate::model::rope_table::rope_table;
use crate::ops::{
    attention::Attention, codebook::Codebook, concat::Concat, conv::Conv, embed::Embed, gelu::Gelu,
    groupnorm::Groupnorm, groupnorm_conv::GroupnormConv, matmul::Matmul, matmul_swiglu::MatmulSwiglu,
    quantize::Quantize, rmsnorm::Rmsnorm, rope::Rope, sampling::Sampling, swiglu::Swiglu, take_last::TakeLast,
    upsample_conv::UpsampleConv, vq_attention::VqAttention, Op,
};
use crate::ops::{Backend, Dtype, KvSpec, Layout, Weight};
use crate::runtime::{Graph, GraphId, Phase, Scalar, Session, StepParams, TensorId, WeightId};
use crate::sample::sampler::SamplingParams;
use crate::weights::synth::value_f32;
use crate::Result;

/// GPT-B: dim, heads, FFN width, vocabulary, KV-cache length at 256 px (1 + 256 rounded up to 8).
const D: usize = 768;
const H: usize = 12;
const F: usize = 2048;
const V: usize = 16384;
const S: usize = 264;

/// A single-op graph with its inputs written, ready to run.
pub struct OpBench {
    session: Session,
    id: GraphId,
    step: StepParams,
    /// FLOPs and bytes of one run.
    pub cost: Cost,
    /// Whether a run reads its weights as bf16 (selects the GEMM ceiling).
    pub bf16: bool,
}

impl OpBench {
    /// One run, complete when this returns (a GPU backend is synchronised).
    pub fn run(&mut self) -> Result<()> {
        self.session.run(self.id, &self.step)?;
        self.session.synchronize()
    }

    /// Whether the output is integer (tokens, codes), so two backends must agree exactly.
    pub fn output_is_int(&self) -> bool {
        let g = self.session.graph(self.id);
        g.find("out").is_some_and(|t| g.info(t).dtype == Scalar::I32)
    }

    /// The op's output: f32 values, or i32 tokens widened.
    pub fn output(&self) -> Result<Vec<f32>> {
        let g = self.session.graph(self.id);
        let out = g.find("out").expect("every op bench has an `out` tensor");
        if g.info(out).dtype == Scalar::I32 {
            Ok(self
                .session
                .read_i32(self.id, "out")?
                .iter()
                .map(|&v| v as f32)
                .collect())
        } else {
            self.session.read_f32(self.id, "out")
        }
    }
}

/// Makes the backend of a case: `bf16` says whether it rounds activations to bf16 (the case's storage).
pub type MakeBackend<'a> = &'a dyn Fn(bool) -> Result<Box<dyn Backend>>;

/// A named case: `op` is the kernel's name (`Op::name`), `case` the shape.
pub struct OpCase {
    pub op: &'static str,
    pub case: &'static str,
    /// Compute-bound by design (report FLOP/s); otherwise memory-bound (report bytes/s).
    pub compute: bool,
    build: fn() -> Result<OpSpec>,
}

impl OpCase {
    /// On the CPU backend.
    pub fn build(&self) -> Result<OpBench> {
        self.build_on(&|bf16| Ok(Box::new(CpuBackend::new(bf16))))
    }

    /// On the backend `make` returns (the CUDA backend on a GPU or the emulator).
    pub fn build_on(&self, make: MakeBackend) -> Result<OpBench> {
        let spec = (self.build)()?;
        let backend = make(spec.bf16)?;
        spec.start(backend)
    }

    /// `op/case`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.op, self.case)
    }
}

enum Input {
    F32(TensorId),
    I32(TensorId, i32),
    Mask(TensorId),
    /// A per-row placement table (`One::rows_in`) at this first position.
    Rows(TensorId, usize),
}

/// Builder of a one-node graph, its weights (deterministic synthetic values) and inputs.
struct One {
    g: Graph,
    weights: Vec<Weight>,
    inputs: Vec<Input>,
    kv: Option<KvSpec>,
    storage: Dtype,
    step: StepParams,
}

impl One {
    fn new(phase: Phase, storage: Dtype) -> Self {
        One {
            g: Graph::new(phase),
            weights: Vec::new(),
            inputs: Vec::new(),
            kv: None,
            storage,
            step: StepParams {
                pos: 0,
                step: 1,
                cfg_active: true,
                seed: 0,
            },
        }
    }

    fn weight_as(&mut self, name: &str, shape: &[usize], storage: Dtype, layout: Layout) -> WeightId {
        self.weights.push(Weight {
            name: name.into(),
            shape: shape.to_vec(),
            data: value_f32(name, shape),
            storage,
            layout,
        });
        WeightId(self.weights.len() as u32 - 1)
    }

    /// A big weight (matmul, embedding) in the case's storage.
    fn big(&mut self, name: &str, shape: &[usize]) -> WeightId {
        self.weight_as(name, shape, self.storage, Layout::Plain)
    }

    /// A small or VQ weight, always f32.
    fn small(&mut self, name: &str, shape: &[usize]) -> WeightId {
        self.weight_as(name, shape, Dtype::F32, Layout::Plain)
    }

    fn f32_in(&mut self, name: &str, shape: &[usize]) -> TensorId {
        let t = self.g.input(name, shape, Scalar::F32);
        self.inputs.push(Input::F32(t));
        t
    }

    /// GPT-B's rotary table at 256 px (1 condition position, a 16×16 grid), as the model builds it.
    fn rope_table(&mut self) -> WeightId {
        let data = rope_table(1, 16, D / H, 10000.0);
        self.weights.push(Weight {
            name: "rope.table".into(),
            shape: vec![data.len()],
            data,
            storage: Dtype::F32,
            layout: Layout::Plain,
        });
        WeightId(self.weights.len() as u32 - 1)
    }

    /// A per-row placement table `[rows, 2]`: row b in cache slot rows − 1 − b (not the identity), first position
    /// `pos`.
    fn rows_in(&mut self, rows: usize, pos: usize) -> TensorId {
        let t = self.g.input("rows", &[rows, 2], Scalar::I32);
        self.inputs.push(Input::Rows(t, pos));
        t
    }

    /// A 0/1 F32 mask input `[rows, keys]` (alternate keys hidden, see `start`).
    fn mask_in(&mut self, name: &str, shape: &[usize]) -> TensorId {
        let t = self.g.input(name, shape, Scalar::F32);
        self.inputs.push(Input::Mask(t));
        t
    }

    /// An I32 input with values spread over `0..range`.
    fn i32_in(&mut self, name: &str, shape: &[usize], range: i32) -> TensorId {
        let t = self.g.input(name, shape, Scalar::I32);
        self.inputs.push(Input::I32(t, range));
        t
    }

    fn node(mut self, op: impl Into<Op>, ins: &[TensorId], shape: &[usize]) -> Result<OpSpec> {
        let out = self.g.push(op, ins, "out", shape)?;
        self.g.mark_output(out);
        let bf16 = self.storage == Dtype::Bf16;
        let widths = if bf16 { Widths::BF16 } else { Widths::F32 };
        let cost = graph_cost(&self.g, self.step.pos, widths);
        Ok(OpSpec { one: self, cost, bf16 })
    }
}

/// A built one-op graph with its weights, before a backend holds it.
pub struct OpSpec {
    one: One,
    cost: Cost,
    bf16: bool,
}

impl OpSpec {
    /// Uploads the weights to `backend`, writes the inputs: ready to run.
    fn start(self, backend: Box<dyn Backend>) -> Result<OpBench> {
        let One {
            g,
            weights,
            inputs,
            kv,
            step,
            ..
        } = self.one;
        let mut session = Session::new(backend, weights, kv, vec![g.clone()])?;
        let id = GraphId(0);
        for inp in &inputs {
            match *inp {
                Input::F32(t) => {
                    // A bf16 case's activations are bf16 values, as every op's input is in a bf16 model.
                    let info = g.info(t);
                    let mut v = value_f32(&info.name, &info.shape);
                    if self.bf16 {
                        v.iter_mut().for_each(|x| *x = crate::ops::round_bf16(*x));
                    }
                    session.write_f32(id, &info.name, &v)?;
                }
                Input::Rows(t, pos) => {
                    let info = g.info(t);
                    let rows = info.numel() / 2;
                    let v: Vec<i32> = (0..rows).flat_map(|b| [(rows - 1 - b) as i32, pos as i32]).collect();
                    session.write_i32(id, &info.name, &v)?;
                }
                Input::I32(t, range) => {
                    let info = g.info(t);
                    let v: Vec<i32> = (0..info.numel())
                        .map(|i| ((i * 7919) % range as usize) as i32)
                        .collect();
                    session.write_i32(id, &info.name, &v)?;
                }
                Input::Mask(t) => {
                    // Row b hides the keys k with k + b odd: the last key in one row, the first in the next.
                    let info = g.info(t);
                    let keys = info.shape[1];
                    let hidden = |i: usize| (i % keys + i / keys) % 2 == 1;
                    let v: Vec<f32> = (0..info.numel()).map(|i| if hidden(i) { 0.0 } else { 1.0 }).collect();
                    session.write_f32(id, &info.name, &v)?;
                }
            }
        }
        Ok(OpBench {
            session,
            id,
            step,
            cost: self.cost,
            bf16: self.bf16,
        })
    }
}

fn storage(bf16: bool) -> Dtype {
    if bf16 {
        Dtype::Bf16
    } else {
        Dtype::F32
    }
}

fn embed(rows: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let table = o.big("tok_embeddings.weight", &[V, D]);
    let ids = o.i32_in("ids", &[rows], V as i32);
    o.node(Embed { table, rows, d: D }, &[ids], &[rows, 1, D])
}

/// `x [m, k] · Wᵀ`, W `[n, k]`; with a residual when `add`.
fn matmul(m: usize, k: usize, n: usize, bf16: bool, add: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let w = o.big("w.weight", &[n, k]);
    let mut ins = vec![o.f32_in("x", &[m, k])];
    if add {
        ins.push(o.f32_in("residual", &[m, n]));
    }
    o.node(
        Matmul {
            w,
            m,
            k,
            n,
            residual: add,
        },
        &ins,
        &[m, n],
    )
}

fn matmul_swiglu(m: usize, k: usize, f: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let w = o.big("w13.weight", &[2 * f, k]);
    let x = o.f32_in("x", &[m, k]);
    o.node(MatmulSwiglu { w, m, k, f }, &[x], &[m, f])
}

fn rmsnorm(rows: usize, d: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let w = o.small("norm.weight", &[d]);
    let x = o.f32_in("x", &[rows, 1, d]);
    o.node(Rmsnorm { w, rows, d, eps: 1e-5 }, &[x], &[rows, 1, d])
}

fn kv(rows: usize, bf16: bool) -> KvSpec {
    KvSpec {
        layers: 1,
        batch: rows,
        heads: H,
        seq: S,
        head_dim: D / H,
        storage: storage(bf16),
    }
}

fn rope(rows: usize, len: usize, pos: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let table = o.rope_table();
    o.kv = Some(kv(rows, bf16));
    o.step.pos = pos;
    let qkv = o.f32_in("qkv", &[rows, len, 3 * D]);
    let op = Rope {
        layer: 0,
        table,
        rows,
        len,
        heads: H,
        head_dim: D / H,
        per_row: false,
    };
    o.node(op, &[qkv], &[rows, len, D])
}

fn attention(rows: usize, pos: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    o.kv = Some(kv(rows, bf16));
    o.step.pos = pos;
    let q = o.f32_in("q", &[rows, 1, D]);
    let op = Attention {
        layer: 0,
        rows,
        len: 1,
        heads: H,
        head_dim: D / H,
        mask: None,
        per_row: false,
    };
    o.node(op, &[q], &[rows, 1, D])
}

/// A prefill of `len` positions from position 0 (so every key attention reads was written): rope fills the KV
/// cache, then attention (with a t2i condition mask over the first `mask` keys when given, or through a per-row
/// placement table when `per_row`) is the case's output.
fn rope_attention(rows: usize, len: usize, bf16: bool, mask: Option<usize>, per_row: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Prefill, storage(bf16));
    let table = o.rope_table();
    o.kv = Some(kv(rows, bf16));
    let qkv = o.f32_in("qkv", &[rows, len, 3 * D]);
    let place = per_row.then(|| o.rows_in(rows, 0));
    let (heads, head_dim) = (H, D / H);
    let rope = Rope {
        layer: 0,
        table,
        rows,
        len,
        heads,
        head_dim,
        per_row,
    };
    let q =
        o.g.push(rope, &[&[qkv][..], place.as_slice()].concat(), "q", &[rows, len, D])?;
    let mut ins = vec![q];
    ins.extend(mask.map(|t| o.mask_in("mask", &[rows, t])));
    ins.extend(place);
    let att = Attention {
        layer: 0,
        rows,
        len,
        heads,
        head_dim,
        mask,
        per_row,
    };
    o.node(att, &ins, &[rows, len, D])
}

/// A decode step at position `pos`: a prefill rope writes positions 0..pos of every cache row, a per-row rope
/// (row b in slot rows − 1 − b) the position `pos` itself, and attention's one query per row reads all pos + 1 keys (the decode kernels, split over
/// the keys from 64 on, with their merge).
fn decode_attention(rows: usize, pos: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let table = o.rope_table();
    o.kv = Some(kv(rows, bf16));
    let (heads, head_dim) = (H, D / H);
    let rope = |len, per_row| Rope {
        layer: 0,
        table,
        rows,
        len,
        heads,
        head_dim,
        per_row,
    };
    let past = o.f32_in("qkv_past", &[rows, pos, 3 * D]);
    o.g.push(rope(pos, false), &[past], "q_past", &[rows, pos, D])?;
    let qkv = o.f32_in("qkv", &[rows, 1, 3 * D]);
    let place = o.rows_in(rows, pos);
    let q = o.g.push(rope(1, true), &[qkv, place], "q", &[rows, 1, D])?;
    let att = Attention {
        layer: 0,
        rows,
        len: 1,
        heads,
        head_dim,
        mask: None,
        per_row: true,
    };
    o.node(att, &[q, place], &[rows, 1, D])
}

fn swiglu(rows: usize, f: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let x = o.f32_in("ab", &[rows, 1, 2 * f]);
    o.node(Swiglu { rows, f }, &[x], &[rows, 1, f])
}

fn gelu(rows: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Prefill, storage(bf16));
    let x = o.f32_in("x", &[rows, D]);
    o.node(Gelu { n: rows * D }, &[x], &[rows, D])
}

fn take_last(rows: usize, len: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::Prefill, Dtype::F32);
    let x = o.f32_in("x", &[rows, len, D]);
    o.node(TakeLast { batch: rows, len, d: D }, &[x], &[rows, D])
}

fn concat(rows: usize, la: usize, lb: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::Prefill, Dtype::F32);
    let a = o.f32_in("a", &[rows, la, D]);
    let b = o.f32_in("b", &[rows, lb, D]);
    o.node(
        Concat {
            batch: rows,
            la,
            lb,
            d: D,
        },
        &[a, b],
        &[rows, la + lb, D],
    )
}

fn sampling(images: usize, vocab: usize, top_k: usize, top_p: f32) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, Dtype::F32);
    let logits = o.f32_in("logits", &[2 * images, vocab]);
    let index = o.i32_in("image_index", &[images], 1 << 20);
    let params = SamplingParams {
        temperature: 1.0,
        top_k,
        top_p,
    };
    let op = Sampling {
        rows: 2 * images,
        vocab,
        images,
        cfg_scale: 4.0,
        params,
    };
    o.node(op, &[logits, index], &[2 * images])
}

fn codebook(n: usize, grid: usize, size: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let cb = o.small("quantize.embedding.weight", &[size, 8]);
    let codes = o.i32_in("codes", &[n * grid * grid], size as i32);
    let op = Codebook {
        codebook: cb,
        n,
        dim: 8,
        h: grid,
        w: grid,
        size,
    };
    o.node(op, &[codes], &[n, 8, grid, grid])
}

fn quantize(n: usize, grid: usize, size: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqEncode, Dtype::F32);
    let cb = o.small("quantize.embedding.weight", &[size, 8]);
    let z = o.f32_in("z", &[n, 8, grid, grid]);
    let op = Quantize {
        codebook: cb,
        n,
        dim: 8,
        h: grid,
        w: grid,
        size,
    };
    o.node(op, &[z], &[n * grid * grid])
}

/// `k`×`k` conv at `stride` with padding `pad` ([top, bottom, left, right]), `ci` -> `co` channels at `hw`×`hw`,
/// optionally with a residual.
fn conv_with(
    ci: usize,
    co: usize,
    k: usize,
    hw: usize,
    stride: usize,
    pad: [usize; 4],
    residual: bool,
) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let layout = if k == 3 && stride == 1 && pad == [1; 4] {
        Layout::Winograd
    } else {
        Layout::Conv
    };
    let w = o.weight_as("conv.weight", &[co, ci, k, k], Dtype::F32, layout);
    let b = o.small("conv.bias", &[co]);
    let op = Conv {
        w,
        b,
        n: 1,
        c_in: ci,
        h: hw,
        w_in: hw,
        c_out: co,
        k,
        stride,
        pad,
        residual,
    };
    let (oh, ow) = op.out_hw();
    let mut ins = vec![o.f32_in("x", &[1, ci, hw, hw])];
    if residual {
        ins.push(o.f32_in("residual", &[1, co, oh, ow]));
    }
    o.node(op, &ins, &[1, co, oh, ow])
}

/// Same padding, stride 1.
fn conv(ci: usize, co: usize, k: usize, hw: usize, residual: bool) -> Result<OpSpec> {
    conv_with(ci, co, k, hw, 1, [k / 2; 4], residual)
}

fn upsample_conv(c: usize, hw: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let w = o.weight_as("up.conv.weight", &[c, c, 3, 3], Dtype::F32, Layout::UpsamplePhases);
    let b = o.small("up.conv.bias", &[c]);
    let x = o.f32_in("x", &[1, c, hw, hw]);
    let op = UpsampleConv {
        w,
        b,
        n: 1,
        c_in: c,
        h: hw,
        w_in: hw,
        c_out: c,
    };
    o.node(op, &[x], &[1, c, 2 * hw, 2 * hw])
}

fn groupnorm(c: usize, hw: usize, silu: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let gamma = o.small("norm.weight", &[c]);
    let beta = o.small("norm.bias", &[c]);
    let x = o.f32_in("x", &[1, c, hw, hw]);
    let op = Groupnorm {
        gamma,
        beta,
        n: 1,
        c,
        hw: hw * hw,
        groups: 32,
        eps: 1e-6,
        silu,
    };
    o.node(op, &[x], &[1, c, hw, hw])
}

/// 3×3 pad-1 conv `ci` -> `co` of GroupNorm(32 groups)(x) (then swish), `n` images of `hw`×`hw`, optionally with a
/// residual: the VQ ResnetBlock's norm + conv as one node.
fn groupnorm_conv(n: usize, ci: usize, co: usize, hw: usize, silu: bool, residual: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let gamma = o.small("norm.weight", &[ci]);
    let beta = o.small("norm.bias", &[ci]);
    let w = o.weight_as("conv.weight", &[co, ci, 3, 3], Dtype::F32, Layout::Winograd);
    let b = o.small("conv.bias", &[co]);
    let (h, w_in, c_in, c_out) = (hw, hw, ci, co);
    let norm = Groupnorm {
        gamma,
        beta,
        n,
        c: ci,
        hw: hw * hw,
        groups: 32,
        eps: 1e-6,
        silu,
    };
    let (k, stride, pad) = (3, 1, [1; 4]);
    let conv = Conv {
        w,
        b,
        n,
        c_in,
        h,
        w_in,
        c_out,
        k,
        stride,
        pad,
        residual,
    };
    let mut ins = vec![o.f32_in("x", &[n, ci, hw, hw])];
    if residual {
        ins.push(o.f32_in("residual", &[n, co, hw, hw]));
    }
    o.node(GroupnormConv { norm, conv }, &ins, &[n, co, hw, hw])
}

fn vq_attention(c: usize, hw: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let mut lin = |n: &str| {
        [
            o.small(&format!("attn.{n}.weight"), &[c, c, 1, 1]),
            o.small(&format!("attn.{n}.bias"), &[c]),
        ]
    };
    let (q, k, v, proj) = (lin("q"), lin("k"), lin("v"), lin("proj_out"));
    let op = VqAttention {
        q,
        k,
        v,
        proj,
        n: 1,
        c,
        hw: hw * hw,
    };
    let x = o.f32_in("x", &[1, c, hw, hw]);
    let normed = o.f32_in("normed", &[1, c, hw, hw]);
    o.node(op, &[x, normed], &[1, c, hw, hw])
}

/// An op's own example (`OpDesc::examples`) as a one-node graph: synthetic f32 weights of the shapes its descriptor
/// asks for, one F32 input per input of the op.
pub struct Example {
    pub op: Op,
    pub bf16: bool,
    /// Position among the op's examples.
    pub index: usize,
}

impl Example {
    /// `op/example<i>_<dtype>`.
    pub fn id(&self) -> String {
        let dt = if self.bf16 { "bf16" } else { "f32" };
        format!("{}/example{}_{dt}", self.op.name(), self.index)
    }

    pub fn build_on(&self, make: MakeBackend) -> Result<OpBench> {
        let mut o = One::new(Phase::Decode, storage(self.bf16));
        let needs = self.op.weights();
        let count = needs.iter().map(|(id, _)| id.0 as usize + 1).max().unwrap_or(0);
        for i in 0..count {
            let shape = needs.iter().find(|(id, _)| id.0 as usize == i).map(|(_, s)| s.clone());
            let shape: Vec<usize> = shape.unwrap_or_default().iter().map(|d| d.unwrap_or(1)).collect();
            o.small(&format!("w{i}"), &shape);
        }
        let io = self.op.io();
        let mut ins = Vec::new();
        for (i, &(numel, scalar)) in io.inputs.iter().enumerate() {
            if scalar != Scalar::F32 {
                return Err(crate::Error::Invalid(format!(
                    "{}: examples take F32 inputs only",
                    self.id()
                )));
            }
            ins.push(o.f32_in(&format!("x{i}"), &[numel]));
        }
        let spec = o.node(self.op.clone(), &ins, &[io.output.0])?;
        spec.start(make(self.bf16)?)
    }
}

/// Every op's examples.
pub fn examples() -> Vec<Example> {
    let mut seen: Vec<&str> = Vec::new();
    Op::examples()
        .into_iter()
        .map(|(op, bf16)| {
            let index = seen.iter().filter(|n| **n == op.name()).count();
            seen.push(op.name());
            Example { op, bf16, index }
        })
        .collect()
}

macro_rules! case {
    ($op:literal, $case:literal, $f:expr) => {
        OpCase {
            op: $op,
            case: $case,
            compute: false,
            build: || $f,
        }
    };
    ($op:literal, $case:literal, $f:expr, flops) => {
        OpCase {
            op: $op,
            case: $case,
            compute: true,
            build: || $f,
        }
    };
}

/// Every op at the shapes that dominate its cost in LlamaGen. `b1`/`b8`: images per batch with guidance (2 or 16
/// GPT rows); GPT shapes are GPT-B, VQ shapes the VQ-16 decoder of one 256 px image. The decode-step products are
/// memory-bound by design (each weight streamed once per step); the VQ convolutions and the t2i caption
/// projection are compute-bound.
pub fn cases() -> Vec<OpCase> {
    vec![
        case!("embed", "tok_b8_bf16", embed(16, true)),
        case!("matmul", "qkv_b1_f32", matmul(2, D, 3 * D, false, false)),
        case!("matmul", "qkv_b1_bf16", matmul(2, D, 3 * D, true, false)),
        case!("matmul", "w13_b8_f32", matmul(16, D, 2 * F, false, false)),
        case!("matmul", "w13_b8_bf16", matmul(16, D, 2 * F, true, false)),
        case!("matmul", "w2_add_b8_bf16", matmul(16, F, D, true, true)),
        case!("matmul", "lm_head_b8_bf16", matmul(16, D, V, true, false)),
        case!(
            "matmul",
            "t2i_cap_fc1_b1_f32",
            matmul(240, 2048, D, false, false),
            flops
        ),
        case!("gelu", "t2i_cap_b1", gelu(240, false)),
        case!("rmsnorm", "decode_b8", rmsnorm(16, D, false)),
        case!("rope", "decode_b8_pos128_f32", rope(16, 1, 128, false)),
        case!("attention", "decode_b8_pos255_f32", attention(16, 255, false)),
        case!("attention", "decode_b8_pos255_bf16", attention(16, 255, true)),
        case!("swiglu", "decode_b8", swiglu(16, F, false)),
        case!("take_last", "t2i_prefill_b8", take_last(16, 120)),
        case!("concat", "full_b8", concat(16, 1, 255)),
        case!("sampling", "b8_topk2000", sampling(8, V, 2000, 1.0)),
        case!("sampling", "b8_topk0", sampling(8, V, 0, 1.0)),
        case!("codebook", "vq16_256px_b1", codebook(1, 16, V)),
        case!("quantize", "vq16_256px_b1", quantize(1, 16, V), flops),
        case!("conv", "3x3_128ch_256px", conv(128, 128, 3, 256, false), flops),
        case!("conv", "3x3_128ch_256px_res", conv(128, 128, 3, 256, true), flops),
        case!("conv", "3x3_512ch_16px", conv(512, 512, 3, 16, false), flops),
        case!("conv", "3x3_128to3_256px", conv(128, 3, 3, 256, false), flops),
        case!("upsample_conv", "128ch_128to256px", upsample_conv(128, 128), flops),
        case!("groupnorm", "128ch_256px_swish", groupnorm(128, 256, true)),
        case!("groupnorm", "128ch_256px", groupnorm(128, 256, false)),
        case!(
            "groupnorm_conv",
            "3x3_128ch_256px_swish_res",
            groupnorm_conv(1, 128, 128, 256, true, true),
            flops
        ),
        case!("vq_attention", "512ch_16px", vq_attention(512, 16), flops),
    ]
}

/// The ops that need more than their own examples (`OpDesc::examples`: a KV cache filled by rope, integer inputs, a
/// prepared weight layout, bf16 weights) at small and odd shapes, for checking backends against the plain references
/// (`tests/ops.rs`): each runs in well under a second through `ops::reference::RefBackend`, and with the examples
/// they take every path of every op (bf16 and f32, residual epilogues, 1×1 / 3×3 Winograd / stride-2 asymmetric
/// convs, top-k and top-p, masked, per-row and decode-step attention).
pub fn reference_cases() -> Vec<OpCase> {
    vec![
        case!("embed", "b3_bf16", embed(6, true)),
        case!("embed", "b1_f32", embed(2, false)),
        case!("matmul", "m3_f32", matmul(3, 96, 40, false, false)),
        case!("matmul", "m5_add_f32", matmul(5, 72, 24, false, true)),
        case!("matmul", "m2_bf16", matmul(2, 64, 48, true, false)),
        case!("matmul", "m7_add_bf16", matmul(7, 40, 72, true, true)),
        // Past the small-m kernels' 64 rows: the CUDA backend's tensor-core tiles (bf16) and strided f32 GEMM.
        case!("matmul", "m130_add_bf16_tiled", matmul(130, 96, 80, true, true)),
        // the FFN's w1|w3 product with silu(a)·b: the decode kernel's fused epilogue (bf16, f % 4 == 0), else unfused
        case!("matmul_swiglu", "m4_bf16", matmul_swiglu(4, 64, 48, true)),
        case!("matmul_swiglu", "m3_f18_bf16", matmul_swiglu(3, 40, 18, true)),
        case!("matmul_swiglu", "m70_bf16", matmul_swiglu(70, 48, 24, true)),
        // ... split-K on CUDA (6 blocks of 64×64 over n = 2f = 96: 3 splits of 128) through the shared workspace
        case!("matmul_swiglu", "m130_bf16_splitk", matmul_swiglu(130, 384, 48, true)),
        case!("matmul_swiglu", "m2_f32", matmul_swiglu(2, 32, 20, false)),
        case!("matmul_swiglu", "m960_f32", matmul_swiglu(960, 64, 256, false)),
        // ... and with k long enough to split (6 blocks of 64×64: 3 splits of 128 through the workspace)
        case!("matmul", "m130_add_bf16_splitk", matmul(130, 96, 384, true, true)),
        case!("matmul", "m70_f32_tiled", matmul(70, 40, 72, false, false)),
        case!("rope", "b2_pos5_f32", rope(2, 1, 5, false)),
        case!("rope", "b3_prefill4_bf16", rope(3, 4, 0, true)),
        case!("attention", "b2_prefill9_f32", rope_attention(2, 9, false, None, false)),
        case!(
            "attention",
            "b3_prefill40_bf16",
            rope_attention(3, 40, true, None, false)
        ),
        case!(
            "attention",
            "b2_prefill7_mask4_f32",
            rope_attention(2, 7, false, Some(4), false)
        ),
        case!(
            "attention",
            "b3_prefill5_per_row_bf16",
            rope_attention(3, 5, true, None, true)
        ),
        case!(
            "attention",
            "b2_prefill6_mask3_per_row_f32",
            rope_attention(2, 6, false, Some(3), true)
        ),
        case!("attention", "b2_decode_pos150_f32", decode_attention(2, 150, false)),
        case!("attention", "b3_decode_pos90_bf16", decode_attention(3, 90, true)),
        case!("sampling", "b3_v500_topk20", sampling(3, 500, 20, 1.0)),
        case!("sampling", "b2_v300_topp", sampling(2, 300, 0, 0.8)),
        case!("sampling", "b2_v300_all", sampling(2, 300, 0, 1.0)),
        case!("codebook", "b2_7px", codebook(2, 7, 50)),
        case!("quantize", "b2_5px", quantize(2, 5, 60)),
        case!("conv", "3x3_12to20_9px_res", conv(12, 20, 3, 9, true)),
        case!("conv", "1x1_16to24_6px", conv(16, 24, 1, 6, false)),
        case!(
            "conv",
            "3x3_s2_8to8_10px",
            conv_with(8, 8, 3, 10, 2, [0, 1, 0, 1], false)
        ),
        case!("upsample_conv", "8ch_5px", upsample_conv(8, 5)),
        // CUDA: the halo loader's GroupNorm prologue, whole-row tiles over two images (their own statistics), and
        // 32-column row pieces; then a width the halo does not take (groupnorm into a workspace, then the conv)
        case!(
            "groupnorm_conv",
            "b2_32to24_8px_swish_res",
            groupnorm_conv(2, 32, 24, 8, true, true)
        ),
        case!(
            "groupnorm_conv",
            "32to16_96px",
            groupnorm_conv(1, 32, 16, 96, false, false)
        ),
        case!(
            "groupnorm_conv",
            "32to8_6px_swish",
            groupnorm_conv(1, 32, 8, 6, true, false)
        ),
    ]
}
