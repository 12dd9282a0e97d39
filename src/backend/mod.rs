//! Backends: one implementation of every runtime op per device. `cpu` is the reference and the engine for machines
//! without a GPU.
pub mod common;
pub mod cpu;
pub mod cuda;

use crate::runtime::{Graph, Node, Plan, StepParams, TensorId};
use crate::Result;

/// How a weight is stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    /// Rounded to bf16 (nearest even) at upload: the official GPU setting for the GPT.
    Bf16,
}

/// Layout transformations a backend applies once at upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Plain,
    /// A 3×3 conv weight feeding `UpsampleConv`: the backend may fold it into its four 2×2 phase kernels.
    UpsamplePhases,
    /// A conv weight `(c_out, c_in, kh, kw)` of an `Op::Conv`: the backend may pack it for its GEMM.
    Conv,
    /// The weight of a 3×3 stride-1 pad-1 `Op::Conv`: the backend may also pre-transform it (Winograd).
    Winograd,
}

/// One weight: the official name (for messages), its shape, its f32 values, and how to store it.
#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub storage: Storage,
    pub layout: Layout,
}

/// KV cache geometry: `[layer][k|v][batch][head][seq][head_dim]`, allocated once, written in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvSpec {
    pub layers: usize,
    pub batch: usize,
    pub heads: usize,
    pub seq: usize,
    pub head_dim: usize,
    pub storage: Storage,
}

impl KvSpec {
    pub fn elems(&self) -> usize {
        2 * self.layers * self.batch * self.heads * self.seq * self.head_dim
    }
}

pub trait Backend: Send {
    fn name(&self) -> &'static str;
    /// Uploads the weight table once (weights are addressed by `WeightId` = index in this slice).
    fn load_weights(&mut self, weights: Vec<Weight>) -> Result<()>;
    /// Allocates (and zeroes) the KV cache.
    fn alloc_kv(&mut self, spec: KvSpec) -> Result<()>;
    /// Grows the arena to at least `bytes` (done once per session, before the first run).
    fn reserve_arena(&mut self, bytes: usize) -> Result<()>;
    fn write_f32(&mut self, g: &Graph, plan: &Plan, t: TensorId, data: &[f32]) -> Result<()>;
    fn write_i32(&mut self, g: &Graph, plan: &Plan, t: TensorId, data: &[i32]) -> Result<()>;
    fn read_f32(&self, g: &Graph, plan: &Plan, t: TensorId) -> Result<Vec<f32>>;
    fn read_i32(&self, g: &Graph, plan: &Plan, t: TensorId) -> Result<Vec<i32>>;
    /// Copies tensor `src` of graph `gs` into tensor `dst` of graph `gd` (same element count): feeds sampled tokens
    /// back into the next decode step without a round trip through the host.
    fn copy(&mut self, gs: &Graph, ps: &Plan, src: TensorId, gd: &Graph, pd: &Plan, dst: TensorId) -> Result<()>;
    /// Runs every node of the graph in order (a GPU backend may return before the work is done).
    fn run(&mut self, g: &Graph, plan: &Plan, step: &StepParams) -> Result<()>;
    /// Waits until every run issued so far is complete (a no-op where runs are synchronous).
    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
    /// Runs one node of the graph and returns when its result is complete (the profiled path of `Session::run`).
    fn run_node(&mut self, g: &Graph, plan: &Plan, node: &Node, step: &StepParams) -> Result<()> {
        let _ = (g, plan, node, step);
        Err(crate::Error::Invalid(format!(
            "the {} backend cannot time single nodes (profiling)",
            self.name()
        )))
    }
}
