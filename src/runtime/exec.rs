//! The executor: owns a backend and the planned graphs of one model, and runs them. The arena is sized once for the
//! largest plan, so running a graph allocates nothing.
use super::graph::{Graph, TensorId};
use super::plan::Plan;
use crate::backend::{Backend, KvSpec, Weight};
use crate::{Error, Result};

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

/// All graphs of a session share one arena: a graph's inputs stay valid across runs of that graph, but running
/// another graph may overwrite them, so write a graph's inputs after the other graphs it follows have run.
pub struct Session {
    backend: Box<dyn Backend>,
    graphs: Vec<(Graph, Plan)>,
}

/// Handle of a graph inside a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphId(pub usize);

impl Session {
    pub fn new(
        mut backend: Box<dyn Backend>,
        weights: Vec<Weight>,
        kv: Option<KvSpec>,
        graphs: Vec<Graph>,
    ) -> Result<Self> {
        backend.load_weights(weights)?;
        if let Some(kv) = kv {
            backend.alloc_kv(kv)?;
        }
        let graphs: Vec<(Graph, Plan)> = graphs
            .into_iter()
            .map(|g| {
                let p = Plan::new(&g);
                (g, p)
            })
            .collect();
        let arena = graphs.iter().map(|(_, p)| p.size).max().unwrap_or(0);
        backend.reserve_arena(arena)?;
        tracing::debug!(
            backend = backend.name(),
            arena_bytes = arena,
            "session ready"
        );
        Ok(Session { backend, graphs })
    }

    /// Adds a graph (e.g. a smaller last batch) to a running session; the arena grows if the new plan needs more.
    pub fn add_graph(&mut self, g: Graph) -> Result<GraphId> {
        let p = Plan::new(&g);
        self.backend.reserve_arena(p.size)?;
        self.graphs.push((g, p));
        Ok(GraphId(self.graphs.len() - 1))
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn arena_bytes(&self) -> usize {
        self.graphs.iter().map(|(_, p)| p.size).max().unwrap_or(0)
    }

    pub fn graph(&self, id: GraphId) -> &Graph {
        &self.graphs[id.0].0
    }

    fn tensor(&self, id: GraphId, name: &str) -> Result<TensorId> {
        self.graphs[id.0]
            .0
            .find(name)
            .ok_or_else(|| Error::Invalid(format!("graph has no tensor `{name}`")))
    }

    pub fn write_f32(&mut self, id: GraphId, name: &str, data: &[f32]) -> Result<()> {
        let t = self.tensor(id, name)?;
        let (g, p) = &self.graphs[id.0];
        self.backend.write_f32(g, p, t, data)
    }

    pub fn write_i32(&mut self, id: GraphId, name: &str, data: &[i32]) -> Result<()> {
        let t = self.tensor(id, name)?;
        let (g, p) = &self.graphs[id.0];
        self.backend.write_i32(g, p, t, data)
    }

    pub fn read_f32(&self, id: GraphId, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(id, name)?;
        let (g, p) = &self.graphs[id.0];
        self.backend.read_f32(g, p, t)
    }

    pub fn read_i32(&self, id: GraphId, name: &str) -> Result<Vec<i32>> {
        let t = self.tensor(id, name)?;
        let (g, p) = &self.graphs[id.0];
        self.backend.read_i32(g, p, t)
    }

    /// Device-side copy between graphs (e.g. sampled tokens -> next step's input ids).
    pub fn copy(&mut self, from: GraphId, src: &str, to: GraphId, dst: &str) -> Result<()> {
        let s = self.tensor(from, src)?;
        let d = self.tensor(to, dst)?;
        let (gs, ps) = &self.graphs[from.0];
        let (gd, pd) = &self.graphs[to.0];
        self.backend.copy(gs, ps, s, gd, pd, d)
    }

    pub fn run(&mut self, id: GraphId, step: &StepParams) -> Result<()> {
        let (g, p) = &self.graphs[id.0];
        self.backend.run(g, p, step)
    }
}
