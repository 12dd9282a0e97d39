//! One graph per op at real LlamaGen shapes (GPT-B at 256 px with guidance: 2 or 16 rows; VQ-16 decoding one
//! 256 px image), run through the same `Session` and dispatch as the models, so a bench measures exactly what a
//! model step pays for that node. Used by `benches/ops.rs` (criterion) and `llamagen bench --ops`.
use super::cost::{graph_cost, Cost, Widths};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Dtype, KvSpec, Layout, Weight};
use crate::model::rope_table::rope_table;
use crate::runtime::{Graph, GraphId, Op, Phase, Scalar, Session, StepParams, TensorId, WeightId};
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

    /// An I32 input with values spread over `0..range`.
    fn i32_in(&mut self, name: &str, shape: &[usize], range: i32) -> TensorId {
        let t = self.g.input(name, shape, Scalar::I32);
        self.inputs.push(Input::I32(t, range));
        t
    }

    fn node(mut self, op: Op, ins: &[TensorId], shape: &[usize], dtype: Scalar) -> Result<OpSpec> {
        let out = self.g.push(op, ins, "out", shape, dtype);
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
                    let info = g.info(t);
                    session.write_f32(id, &info.name, &value_f32(&info.name, &info.shape))?;
                }
                Input::I32(t, range) => {
                    let info = g.info(t);
                    let v: Vec<i32> = (0..info.numel())
                        .map(|i| ((i * 7919) % range as usize) as i32)
                        .collect();
                    session.write_i32(id, &info.name, &v)?;
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
    o.node(Op::Embed { table }, &[ids], &[rows, 1, D], Scalar::F32)
}

/// `x [m, k] · Wᵀ`, W `[n, k]`; with a residual when `add`.
fn matmul(m: usize, k: usize, n: usize, bf16: bool, add: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let w = o.big("w.weight", &[n, k]);
    let x = o.f32_in("x", &[m, k]);
    if add {
        let r = o.f32_in("residual", &[m, n]);
        o.node(Op::MatmulAdd { w }, &[x, r], &[m, n], Scalar::F32)
    } else {
        o.node(Op::Matmul { w }, &[x], &[m, n], Scalar::F32)
    }
}

fn rmsnorm(rows: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, Dtype::F32);
    let w = o.small("norm.weight", &[D]);
    let x = o.f32_in("x", &[rows, 1, D]);
    o.node(Op::Rmsnorm { w, eps: 1e-5 }, &[x], &[rows, 1, D], Scalar::F32)
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

fn rope(rows: usize, pos: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    let tab = rope_table(1, 16, D / H, 10000.0);
    let n = tab.len();
    o.weights.push(Weight {
        name: "rope.table".into(),
        shape: vec![n],
        data: tab,
        storage: Dtype::F32,
        layout: Layout::Plain,
    });
    let table = WeightId(0);
    o.kv = Some(kv(rows, bf16));
    o.step.pos = pos;
    let qkv = o.f32_in("qkv", &[rows, 1, 3 * D]);
    o.node(
        Op::Rope {
            layer: 0,
            table,
            per_row: false,
        },
        &[qkv],
        &[rows, 1, D],
        Scalar::F32,
    )
}

fn attention(rows: usize, pos: usize, bf16: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, storage(bf16));
    o.kv = Some(kv(rows, bf16));
    o.step.pos = pos;
    let q = o.f32_in("q", &[rows, 1, D]);
    o.node(
        Op::Attention {
            layer: 0,
            per_row: false,
        },
        &[q],
        &[rows, 1, D],
        Scalar::F32,
    )
}

fn swiglu(rows: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, Dtype::F32);
    let x = o.f32_in("ab", &[rows, 1, 2 * F]);
    o.node(Op::Swiglu, &[x], &[rows, 1, F], Scalar::F32)
}

fn gelu(rows: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::Prefill, Dtype::F32);
    let x = o.f32_in("x", &[rows, D]);
    o.node(Op::GeluTanh, &[x], &[rows, D], Scalar::F32)
}

fn take_last(rows: usize, len: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::Prefill, Dtype::F32);
    let x = o.f32_in("x", &[rows, len, D]);
    o.node(Op::TakeLast, &[x], &[rows, D], Scalar::F32)
}

fn concat(rows: usize, la: usize, lb: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::Prefill, Dtype::F32);
    let a = o.f32_in("a", &[rows, la, D]);
    let b = o.f32_in("b", &[rows, lb, D]);
    o.node(Op::Concat, &[a, b], &[rows, la + lb, D], Scalar::F32)
}

fn sampling(images: usize, top_k: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::Decode, Dtype::F32);
    let logits = o.f32_in("logits", &[2 * images, V]);
    let index = o.i32_in("image_index", &[images], 1 << 20);
    let params = SamplingParams {
        temperature: 1.0,
        top_k,
        top_p: 1.0,
    };
    let op = Op::Sampling { cfg_scale: 4.0, params };
    o.node(op, &[logits, index], &[2 * images], Scalar::I32)
}

fn codebook(n: usize, grid: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let cb = o.small("quantize.embedding.weight", &[V, 8]);
    let codes = o.i32_in("codes", &[n * grid * grid], V as i32);
    o.node(
        Op::Codebook { codebook: cb },
        &[codes],
        &[n, 8, grid, grid],
        Scalar::F32,
    )
}

fn quantize(n: usize, grid: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqEncode, Dtype::F32);
    let cb = o.small("quantize.embedding.weight", &[V, 8]);
    let z = o.f32_in("z", &[n, 8, grid, grid]);
    o.node(Op::Quantize { codebook: cb }, &[z], &[n * grid * grid], Scalar::I32)
}

/// `k`×`k` conv, stride 1, same padding, `ci` -> `co` channels at `hw`×`hw`, optionally with a residual.
fn conv(ci: usize, co: usize, k: usize, hw: usize, residual: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let w = o.small("conv.weight", &[co, ci, k, k]);
    let b = o.small("conv.bias", &[co]);
    let x = o.f32_in("x", &[1, ci, hw, hw]);
    let mut ins = vec![x];
    if residual {
        ins.push(o.f32_in("residual", &[1, co, hw, hw]));
    }
    let p = k / 2;
    let op = Op::Conv {
        w,
        b,
        k,
        stride: 1,
        pad: [p; 4],
    };
    o.node(op, &ins, &[1, co, hw, hw], Scalar::F32)
}

fn upsample_conv(c: usize, hw: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let w = o.weight_as("up.conv.weight", &[c, c, 3, 3], Dtype::F32, Layout::UpsamplePhases);
    let b = o.small("up.conv.bias", &[c]);
    let x = o.f32_in("x", &[1, c, hw, hw]);
    o.node(Op::UpsampleConv { w, b }, &[x], &[1, c, 2 * hw, 2 * hw], Scalar::F32)
}

fn groupnorm(c: usize, hw: usize, silu: bool) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let gamma = o.small("norm.weight", &[c]);
    let beta = o.small("norm.bias", &[c]);
    let x = o.f32_in("x", &[1, c, hw, hw]);
    let op = Op::Groupnorm {
        gamma,
        beta,
        groups: 32,
        eps: 1e-6,
        silu,
    };
    o.node(op, &[x], &[1, c, hw, hw], Scalar::F32)
}

fn vq_attention(c: usize, hw: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let mut lin = |n: &str| {
        [
            o.small(&format!("attn.{n}.weight"), &[c, c, 1, 1]),
            o.small(&format!("attn.{n}.bias"), &[c]),
        ]
    };
    let op = Op::VqAttention {
        q: lin("q"),
        k: lin("k"),
        v: lin("v"),
        proj: lin("proj_out"),
    };
    let x = o.f32_in("x", &[1, c, hw, hw]);
    let normed = o.f32_in("normed", &[1, c, hw, hw]);
    o.node(op, &[x, normed], &[1, c, hw, hw], Scalar::F32)
}

fn add(c: usize, hw: usize) -> Result<OpSpec> {
    let mut o = One::new(Phase::VqDecode, Dtype::F32);
    let a = o.f32_in("a", &[1, c, hw, hw]);
    let b = o.f32_in("b", &[1, c, hw, hw]);
    o.node(Op::Add, &[a, b], &[1, c, hw, hw], Scalar::F32)
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
        case!("gelu", "t2i_cap_b1", gelu(240)),
        case!("rmsnorm", "decode_b8", rmsnorm(16)),
        case!("rope", "decode_b8_pos128_f32", rope(16, 128, false)),
        case!("attention", "decode_b8_pos255_f32", attention(16, 255, false)),
        case!("attention", "decode_b8_pos255_bf16", attention(16, 255, true)),
        case!("swiglu", "decode_b8", swiglu(16)),
        case!("take_last", "t2i_prefill_b8", take_last(16, 120)),
        case!("concat", "full_b8", concat(16, 1, 255)),
        case!("sampling", "b8_topk2000", sampling(8, 2000)),
        case!("sampling", "b8_topk0", sampling(8, 0)),
        case!("codebook", "vq16_256px_b1", codebook(1, 16)),
        case!("quantize", "vq16_256px_b1", quantize(1, 16), flops),
        case!("conv", "3x3_128ch_256px", conv(128, 128, 3, 256, false), flops),
        case!("conv", "3x3_128ch_256px_res", conv(128, 128, 3, 256, true), flops),
        case!("conv", "3x3_512ch_16px", conv(512, 512, 3, 16, false), flops),
        case!("conv", "3x3_128to3_256px", conv(128, 3, 3, 256, false), flops),
        case!("upsample_conv", "128ch_128to256px", upsample_conv(128, 128), flops),
        case!("groupnorm", "128ch_256px_swish", groupnorm(128, 256, true)),
        case!("groupnorm", "128ch_256px", groupnorm(128, 256, false)),
        case!("vq_attention", "512ch_16px", vq_attention(512, 16), flops),
        case!("add", "128ch_256px", add(128, 256)),
    ]
}
