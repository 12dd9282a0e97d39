//! The device side of the interface: what a backend stores and how the runtime's executor drives it. The ops
//! themselves are the [`Exec`](super::Exec) impls every backend has (see [`super::Kernels`]).
use super::{Kernels, TensorRef};
use crate::Result;

/// The engine's one precision vocabulary: how weights, activations and the KV cache are stored and computed.
/// f32 is the bit-faithful reference; bf16 rounds to nearest even where the official GPU code stores bf16 tensors
/// (`--dtype bf16`), accumulating in f32. (`ops::Scalar` is a different thing: the element type of a graph tensor,
/// f32 or i32; file formats have their own element types.)
/// (Also the `--dtype` flag's values: `f32`, `bf16`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    /// The activation dtype of a backend that rounds activations to bf16 when `bf16`.
    pub fn activations(bf16: bool) -> Self {
        if bf16 {
            Dtype::Bf16
        } else {
            Dtype::F32
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" | "float32" | "fp32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(crate::Error::Invalid(format!("--dtype `{s}`: expected f32 or bf16"))),
        }
    }
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
    pub storage: Dtype,
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
    pub storage: Dtype,
}

impl KvSpec {
    pub fn elems(&self) -> usize {
        2 * self.layers * self.batch * self.heads * self.seq * self.head_dim
    }
}

/// Where the rows of a `rope` / `attention` run sit in the KV cache.
#[derive(Clone, Copy, Debug)]
pub enum Placement<'a> {
    /// Row b is cache row b, its queries at positions `pos..pos + L` (a batch whose images all run in step).
    Uniform { pos: usize },
    /// Row b is cache row `table[2b]`, its queries at positions `table[2b + 1]..` (continuous batching: rows join
    /// and leave at any step, each in its own cache slot).
    PerRow(&'a [i32]),
}

impl<'a> Placement<'a> {
    /// A rope / attention node's placement: its row table when it has one, else every row at the step's position.
    pub fn of(table: Option<&'a [i32]>, step: &super::StepParams) -> Self {
        match table {
            Some(t) => Placement::PerRow(t),
            None => Placement::Uniform { pos: step.pos },
        }
    }
}

impl Placement<'_> {
    /// (cache row, first position) of run row `b`; valid after `check`.
    #[inline]
    pub fn at(&self, b: usize) -> (usize, usize) {
        match self {
            Placement::Uniform { pos } => (b, *pos),
            Placement::PerRow(t) => (t[2 * b] as usize, t[2 * b + 1] as usize),
        }
    }

    /// Refuses a placement that would read or write outside the cache: `rows` run rows of `len` positions each in a
    /// cache of `kv_rows` rows × `seq` positions.
    pub fn check(&self, rows: usize, len: usize, kv_rows: usize, seq: usize) -> Result<()> {
        let bad = |m: String| Err(crate::Error::Invalid(m));
        match self {
            Placement::Uniform { pos } => {
                if rows > kv_rows {
                    return bad(format!("{rows} rows in a KV cache of {kv_rows}"));
                }
                if pos + len > seq {
                    return bad(format!(
                        "positions {pos}..{} are outside the KV cache ({seq} positions)",
                        pos + len
                    ));
                }
            }
            Placement::PerRow(t) => {
                if t.len() != 2 * rows {
                    return bad(format!("row table of {} values for {rows} rows (2 per row)", t.len()));
                }
                for (b, r) in t.chunks_exact(2).enumerate() {
                    let (slot, pos) = (r[0], r[1]);
                    if slot < 0 || slot as usize >= kv_rows {
                        return bad(format!("row {b}: cache slot {slot} is outside 0..{kv_rows}"));
                    }
                    if pos < 0 || pos as usize + len > seq {
                        return bad(format!(
                            "row {b}: positions {pos}..{} are outside the KV cache ({seq} positions)",
                            pos as i64 + len as i64
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What the executor tells a backend about a run of a graph before its nodes: a key that identifies the graph with its
/// arena layout (equal keys: same nodes over the same offsets), and whether the backend may record the run and replay
/// it later instead of executing the nodes (decode steps, not profiled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunInfo {
    pub key: u64,
    pub replayable: bool,
}

/// A device: memory, upload, and the hooks around a run; the ops are its [`Kernels`]. The runtime's executor checks
/// every tensor access (element type, count) before it reaches a backend.
pub trait Backend: Send + Kernels {
    fn name(&self) -> &'static str;
    /// Uploads the weight table once (weights are addressed by `WeightId` = index in this slice).
    fn load_weights(&mut self, weights: Vec<Weight>) -> Result<()>;
    /// Allocates (and zeroes) the KV cache.
    fn alloc_kv(&mut self, spec: KvSpec) -> Result<()>;
    /// Grows the arena to at least `bytes` (done once per session, before the first run).
    fn reserve_arena(&mut self, bytes: usize) -> Result<()>;
    fn write_f32(&mut self, t: TensorRef, data: &[f32]) -> Result<()>;
    fn write_i32(&mut self, t: TensorRef, data: &[i32]) -> Result<()>;
    fn read_f32(&self, t: TensorRef) -> Result<Vec<f32>>;
    fn read_i32(&self, t: TensorRef) -> Result<Vec<i32>>;
    /// Copies `src` into `dst` (same element count and type; possibly of different graphs): feeds sampled tokens back
    /// into the next decode step without a round trip through the host.
    fn copy(&mut self, src: TensorRef, dst: TensorRef) -> Result<()>;
    /// Called before a run's nodes, with its step parameters. `Ok(true)`: the backend replayed a recorded run, skip
    /// the nodes (and `end_run`). `Ok(false)`: execute them, then call `end_run`.
    fn begin_run(&mut self, run: RunInfo, step: &crate::ops::StepParams) -> Result<bool> {
        let _ = (run, step);
        Ok(false)
    }
    /// Called after the nodes of a run that `begin_run` did not replay, also when one of them failed (`ok` false).
    fn end_run(&mut self, run: RunInfo, ok: bool) -> Result<()> {
        let _ = (run, ok);
        Ok(())
    }
    /// Waits until every run issued so far is complete (a no-op where runs are synchronous).
    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
}
