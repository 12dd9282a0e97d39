//! The op set: the one vocabulary the model graphs, the runtime, the bench and every backend share.
//!
//! Each op is a file here holding a typed descriptor (its geometry and weights, fixed when the graph is built), the
//! element counts of its inputs and output ([`OpDesc::io`], checked once by `runtime::Graph::push`), the shapes of the
//! weights it reads (checked once when a session binds the weight table), its cost for the bench, and a plain
//! reference implementation (f64 / f32 loops, no SIMD) that every CPU path and every CUDA kernel is tested against.
//! A backend implements [`Exec`]`<Descriptor>` for every op (in its own `<op>.rs`), and the runtime's one executor
//! walks a graph calling them; [`Backend`] (memory, upload, the run hooks) is the rest of the interface.
//!
//! This module sits below the backends so that nothing imports upward: the runtime (graphs, plans, the executor)
//! above calls down through these traits, the backends below implement them.
// The references index loops like the formulas they implement.
#![allow(clippy::needless_range_loop)]

pub mod backend;
pub mod cost;
pub mod reference;

pub use backend::{Backend, Dtype, KvSpec, Layout, Placement, RunInfo, Weight};
pub use cost::{Cost, CostAt, Widths};
pub use reference::{RefCtx, RefData};

use crate::Result;

/// Index into the model's weight table (weights live outside the arena, uploaded once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightId(pub u32);

/// Element type of a graph tensor. Float tensors are stored in the backend's activation [`Dtype`] (f32 or bf16);
/// I32 ones (ids, tokens, row tables) are always int32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    F32,
    I32,
}

/// What changes from one run of the same graph to the next (in device memory on the GPU, so a captured graph can
/// replay without re-recording).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepParams {
    /// First sequence position covered by this run (0 for the prefill).
    pub pos: usize,
    /// Generation step (0 = image token 0): the RNG counter.
    pub step: u32,
    /// Classifier-free guidance on for this step (`--cfg-interval` turns it off).
    pub cfg_active: bool,
    /// Run seed: with the image index, the key of each image's RNG stream.
    pub seed: u64,
}

/// A graph tensor as a backend sees it: its place in the arena (bytes from the start; every element takes a 4-byte
/// slot whatever the activation dtype), its element count and type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorRef {
    pub offset: usize,
    pub numel: usize,
    pub scalar: Scalar,
}

/// The tensors of one node: inputs in the order the op's descriptor documents, the output, the step, and the
/// node's scratch tensor when its op asks for one ([`OpDesc::scratch`]).
#[derive(Clone, Copy, Debug)]
pub struct Args<'a> {
    pub ins: &'a [TensorRef],
    pub out: TensorRef,
    pub step: &'a StepParams,
    pub scratch: Option<TensorRef>,
}

/// Element counts and types of an op's inputs (optional ones only when the descriptor has them) and output.
#[derive(Clone, Debug, PartialEq)]
pub struct Io {
    pub inputs: Vec<(usize, Scalar)>,
    pub output: (usize, Scalar),
}

impl Io {
    pub fn f32(inputs: &[usize], output: usize) -> Io {
        Io {
            inputs: inputs.iter().map(|&n| (n, Scalar::F32)).collect(),
            output: (output, Scalar::F32),
        }
    }
}

/// A weight an op reads and the shape it needs (`None`: any extent on that axis).
pub type WeightNeed = (WeightId, Vec<Option<usize>>);

/// One op's descriptor: everything about it that does not depend on the device.
pub trait OpDesc: Clone + std::fmt::Debug + PartialEq + Into<Op> {
    /// The op's one name: `kernels/<name>.cu`, `ops/<name>.rs`, `backend/{cpu,cuda}/<name>.rs`, its tests and bench.
    const NAME: &'static str;
    /// Refuses a geometry the op cannot have (checked by `Graph::push` before anything else).
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    fn io(&self) -> Io;
    fn weights(&self) -> Vec<WeightNeed> {
        Vec::new()
    }
    /// FLOPs (a multiply-add is 2) and bytes of an implementation that touches each value once.
    fn cost(&self, at: &CostAt) -> Cost;
    /// Elements (4-byte slots) of a scratch tensor the node may use while it runs: planned in the arena like an
    /// intermediate that lives only during the node, so it shares bytes with tensors dead by then (a fused op's
    /// intermediate costs no more memory than the unfused pair's did). 0: none.
    fn scratch(&self) -> usize {
        0
    }
    /// Whether the scratch may take the bytes of input 0 where no later node reads input 0 (the planner decides; the
    /// backend sees the two at one offset): the op then finishes reading input 0 before it writes the scratch, or
    /// works in place.
    fn scratch_reuses_input(&self) -> bool {
        false
    }
    /// The plain reference: reads the node's inputs and weights from `r`, writes its output there.
    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()>;
    /// Small examples of the op alone (descriptor, run in bf16), which `tests/ops.rs` runs on every backend against
    /// the reference with synthetic weights (f32, by `weights()`'s shapes) and F32 inputs. Ops that need a KV cache,
    /// integer inputs, a prepared weight layout or bf16 weights have their cases in `bench::ops::reference_cases`.
    fn examples() -> Vec<(Self, bool)> {
        Vec::new()
    }
}

/// A backend's implementation of op `O`.
pub trait Exec<O> {
    fn exec(&mut self, op: &O, a: &Args<'_>) -> Result<()>;
}

/// The op list: one line per op declares its module here and in both backends, and generates the [`Op`] enum, its
/// dispatch to [`Exec`], and the [`Kernels`] bound (a backend implements every op or does not compile).
macro_rules! op_set {
    ($d:tt; $($variant:ident: $module:ident::$ty:ident),+ $(,)?) => {
        $(pub mod $module;)+

        /// `each_op_module!(m)` calls macro `m` with every op's module name: the backends declare their per-op
        /// modules (`backend/{cpu,cuda}/<op>.rs`) from this one list.
        macro_rules! each_op_module {
            ($d callback:ident) => {
                $d callback!($($module),+);
            };
        }
        pub(crate) use each_op_module;

        /// A node's op: one variant per op, holding its descriptor.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $($variant($module::$ty)),+
        }

        $(impl From<$module::$ty> for Op {
            fn from(d: $module::$ty) -> Op {
                Op::$variant(d)
            }
        })+

        /// Every op's [`Exec`]: what a backend must implement.
        pub trait Kernels: $(Exec<$module::$ty> +)+ {}
        impl<B: ?Sized $(+ Exec<$module::$ty>)+> Kernels for B {}

        impl Op {
            pub fn name(&self) -> &'static str {
                match self { $(Op::$variant(_) => <$module::$ty as OpDesc>::NAME),+ }
            }
            pub fn io(&self) -> Io {
                match self { $(Op::$variant(d) => d.io()),+ }
            }
            pub fn validate(&self) -> Result<()> {
                match self { $(Op::$variant(d) => d.validate()),+ }
            }
            pub fn weights(&self) -> Vec<WeightNeed> {
                match self { $(Op::$variant(d) => d.weights()),+ }
            }
            pub fn cost(&self, at: &CostAt) -> Cost {
                match self { $(Op::$variant(d) => d.cost(at)),+ }
            }
            pub fn scratch(&self) -> usize {
                match self { $(Op::$variant(d) => d.scratch()),+ }
            }
            pub fn scratch_reuses_input(&self) -> bool {
                match self { $(Op::$variant(d) => d.scratch_reuses_input()),+ }
            }
            pub fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
                match self { $(Op::$variant(d) => d.reference(r)),+ }
            }
            /// Every op's `OpDesc::examples`.
            pub fn examples() -> Vec<(Op, bool)> {
                let mut v = Vec::new();
                $(v.extend(<$module::$ty as OpDesc>::examples().into_iter().map(|(d, bf16)| (Op::from(d), bf16)));)+
                v
            }
            /// Runs the op on backend `b`.
            pub fn exec<B: Kernels + ?Sized>(&self, b: &mut B, a: &Args<'_>) -> Result<()> {
                match self { $(Op::$variant(d) => Exec::<$module::$ty>::exec(b, d, a)),+ }
            }
        }

        /// Every op name, in the order of the list.
        pub const NAMES: &[&str] = &[$(<$module::$ty as OpDesc>::NAME),+];
    };
}

op_set! { $;
    Embed: embed::Embed,
    Matmul: matmul::Matmul,
    MatmulSwiglu: matmul_swiglu::MatmulSwiglu,
    Gelu: gelu::Gelu,
    Rmsnorm: rmsnorm::Rmsnorm,
    Rope: rope::Rope,
    Attention: attention::Attention,
    Swiglu: swiglu::Swiglu,
    Concat: concat::Concat,
    TakeLast: take_last::TakeLast,
    Sampling: sampling::Sampling,
    Codebook: codebook::Codebook,
    Quantize: quantize::Quantize,
    Conv: conv::Conv,
    UpsampleConv: upsample_conv::UpsampleConv,
    Groupnorm: groupnorm::Groupnorm,
    GroupnormConv: groupnorm_conv::GroupnormConv,
    VqAttention: vq_attention::VqAttention,
}

/// The error of a descriptor's `validate`.
pub(crate) fn invalid(op: &str, why: String) -> Result<()> {
    Err(crate::Error::Invalid(format!("op `{op}`: {why}")))
}

/// Rounds to the nearest bf16 (ties to even), as a float: where the official code stores a bf16 tensor.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}
