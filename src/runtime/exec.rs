//! The executor: owns a backend and the planned graphs of one model, and runs them. The arena is sized once for the
//! largest plan, so running a graph allocates nothing.
use super::graph::{Graph, Phase, TensorId};
use super::plan::Plan;
use crate::backend::{Backend, KvSpec, Weight};
use crate::{Error, Result};
use std::time::Instant;

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
    /// Opt-in per-node timing (`set_profiling`); off, `run` goes straight to `Backend::run`.
    profiling: bool,
    /// Per graph: accumulated (seconds, runs) of whole runs, and (seconds, calls) per node. Sized when a graph is
    /// added, so a profiled run allocates nothing either.
    timings: Vec<GraphTimings>,
}

#[derive(Clone, Debug, Default)]
struct GraphTimings {
    run: (f64, u64),
    nodes: Vec<(f64, u64)>,
}

/// Accumulated time of one op name inside one graph.
#[derive(Clone, Debug, PartialEq)]
pub struct OpStat {
    pub graph: GraphId,
    pub phase: Phase,
    /// `Op::name()`: the kernel's name.
    pub op: &'static str,
    pub seconds: f64,
    /// Node executions (a graph with 12 `rope` nodes run once counts 12).
    pub calls: u64,
}

/// Accumulated time of whole runs of one graph (wall time of `Session::run`, nodes and dispatch together).
#[derive(Clone, Debug, PartialEq)]
pub struct GraphStat {
    pub graph: GraphId,
    pub phase: Phase,
    pub seconds: f64,
    pub runs: u64,
}

/// What `Session::profile` returns: only graphs that ran since the last reset appear.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    pub graphs: Vec<GraphStat>,
    /// Per (graph, op name), in first-appearance order within each graph.
    pub ops: Vec<OpStat>,
}

impl Profile {
    /// Seconds and calls of `op` summed over graphs (of `phase` only, if given).
    pub fn op(&self, phase: Option<Phase>, op: &str) -> (f64, u64) {
        self.ops
            .iter()
            .filter(|s| s.op == op && phase.is_none_or(|p| s.phase == p))
            .fold((0.0, 0), |(t, n), s| (t + s.seconds, n + s.calls))
    }

    /// Seconds and runs of all graphs of `phase`.
    pub fn phase(&self, phase: Phase) -> (f64, u64) {
        self.graphs
            .iter()
            .filter(|s| s.phase == phase)
            .fold((0.0, 0), |(t, n), s| (t + s.seconds, n + s.runs))
    }

    /// Per op name over all graphs: (name, seconds, calls), slowest first.
    pub fn by_op(&self) -> Vec<(&'static str, f64, u64)> {
        let mut v: Vec<(&'static str, f64, u64)> = Vec::new();
        for s in &self.ops {
            match v.iter_mut().find(|e| e.0 == s.op) {
                Some(e) => {
                    e.1 += s.seconds;
                    e.2 += s.calls;
                }
                None => v.push((s.op, s.seconds, s.calls)),
            }
        }
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
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
        let t = std::time::Instant::now();
        backend.load_weights(weights)?;
        tracing::debug!(
            "weights laid out for the {} backend in {:.3} s",
            backend.name(),
            t.elapsed().as_secs_f64()
        );
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
        tracing::debug!(backend = backend.name(), arena_bytes = arena, "session ready");
        let timings = graphs.iter().map(|(g, _)| GraphTimings::new(g)).collect();
        Ok(Session {
            backend,
            graphs,
            profiling: false,
            timings,
        })
    }

    /// Adds a graph (e.g. a smaller last batch) to a running session; the arena grows if the new plan needs more.
    pub fn add_graph(&mut self, g: Graph) -> Result<GraphId> {
        let p = Plan::new(&g);
        self.backend.reserve_arena(p.size)?;
        self.timings.push(GraphTimings::new(&g));
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

    /// Waits for every run issued so far (GPU backends run asynchronously).
    pub fn synchronize(&mut self) -> Result<()> {
        self.backend.synchronize()
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
        if !self.profiling {
            return self.backend.run(g, p, step);
        }
        // One clock read per node boundary (a vDSO call, ~20 ns): the end of node i is the start of node i + 1.
        let t = &mut self.timings[id.0];
        let start = Instant::now();
        let mut last = start;
        for (i, node) in g.nodes.iter().enumerate() {
            self.backend.run_node(g, p, node, step)?;
            let now = Instant::now();
            let slot = &mut t.nodes[i];
            slot.0 += (now - last).as_secs_f64();
            slot.1 += 1;
            last = now;
        }
        t.run.0 += (last - start).as_secs_f64();
        t.run.1 += 1;
        Ok(())
    }

    /// Turns per-node timing on or off (off by default: then `run` costs one branch more than the backend's own
    /// loop). Timing a node waits for it: on an asynchronous device each node is synchronised.
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    pub fn profiling(&self) -> bool {
        self.profiling
    }

    /// Clears the accumulated timings.
    pub fn reset_profile(&mut self) {
        for t in &mut self.timings {
            t.run = (0.0, 0);
            t.nodes.iter_mut().for_each(|n| *n = (0.0, 0));
        }
    }

    /// Accumulated timings since the last reset, per graph and per (graph, op name).
    pub fn profile(&self) -> Profile {
        let mut prof = Profile::default();
        for (i, ((g, _), t)) in self.graphs.iter().zip(&self.timings).enumerate() {
            if t.run.1 == 0 {
                continue;
            }
            let id = GraphId(i);
            prof.graphs.push(GraphStat {
                graph: id,
                phase: g.phase,
                seconds: t.run.0,
                runs: t.run.1,
            });
            let first = prof.ops.len();
            for (node, &(secs, calls)) in g.nodes.iter().zip(&t.nodes) {
                let name = node.op.name();
                match prof.ops[first..].iter_mut().find(|s| s.op == name) {
                    Some(s) => {
                        s.seconds += secs;
                        s.calls += calls;
                    }
                    None => prof.ops.push(OpStat {
                        graph: id,
                        phase: g.phase,
                        op: name,
                        seconds: secs,
                        calls,
                    }),
                }
            }
        }
        prof
    }

    /// Ids of all graphs of the session, in the order they were added.
    pub fn graph_ids(&self) -> impl Iterator<Item = GraphId> + '_ {
        (0..self.graphs.len()).map(GraphId)
    }
}

impl GraphTimings {
    fn new(g: &Graph) -> Self {
        GraphTimings {
            run: (0.0, 0),
            nodes: vec![(0.0, 0); g.nodes.len()],
        }
    }
}
