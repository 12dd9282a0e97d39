//! The executor: owns a backend and the planned graphs of one model, and runs them. The arena is sized once for the
//! largest plan, so running a graph allocates nothing.
use super::graph::{Graph, Phase, Role, TensorId};
use super::plan::Plan;
use crate::ops::{Args, Backend, KvSpec, Op, RunInfo, Scalar, StepParams, TensorRef, Weight};
use crate::{Error, Result};
use std::time::Instant;

/// A graph ready to run: its plan, every node's tensors resolved to arena slots once, and its replay key.
struct Planned {
    g: Graph,
    plan: Plan,
    /// Inputs, output and scratch of every node.
    nodes: Vec<(Vec<TensorRef>, TensorRef, Option<TensorRef>)>,
    key: u64,
}

impl Planned {
    fn new(g: Graph) -> Self {
        let plan = Plan::new(&g);
        let r = |t: TensorId| tensor_ref(&g, &plan, t);
        let nodes = g
            .nodes
            .iter()
            .map(|n| (n.inputs.iter().map(|&t| r(t)).collect(), r(n.output), n.scratch.map(r)))
            .collect();
        let key = fingerprint(&g, &plan);
        Planned { g, plan, nodes, key }
    }

    fn tref(&self, t: TensorId) -> TensorRef {
        tensor_ref(&self.g, &self.plan, t)
    }
}

fn tensor_ref(g: &Graph, plan: &Plan, t: TensorId) -> TensorRef {
    let info = g.info(t);
    TensorRef {
        offset: plan.offsets[t.0 as usize],
        numel: info.numel(),
        scalar: info.dtype,
    }
}

/// Identifies a graph with its plan: a recorded device graph bakes in every node and arena address, so it may only
/// replay for the same nodes over the same offsets.
fn fingerprint(g: &Graph, plan: &Plan) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    plan.offsets.hash(&mut h);
    for n in &g.nodes {
        format!("{:?}", n.op).hash(&mut h);
        n.inputs.hash(&mut h);
        n.output.hash(&mut h);
        n.scratch.hash(&mut h);
    }
    for t in &g.tensors {
        t.shape.hash(&mut h);
    }
    h.finish()
}

/// A graph tensor, named for host reads and writes by its id (look it up once with [`Session::tensor`]) or, for a
/// one-off access, by its name.
pub trait TensorKey {
    fn id_in(&self, g: &Graph) -> Result<TensorId>;
}

impl TensorKey for TensorId {
    fn id_in(&self, g: &Graph) -> Result<TensorId> {
        match (self.0 as usize) < g.tensors.len() {
            true => Ok(*self),
            false => Err(Error::Invalid(format!("graph has no tensor {}", self.0))),
        }
    }
}

impl TensorKey for &str {
    fn id_in(&self, g: &Graph) -> Result<TensorId> {
        g.find(self)
            .ok_or_else(|| Error::Invalid(format!("graph has no tensor `{self}`")))
    }
}

impl TensorKey for &String {
    fn id_in(&self, g: &Graph) -> Result<TensorId> {
        self.as_str().id_in(g)
    }
}

/// Every weight a node reads exists and has the shape its descriptor needs (weights as (name, shape)).
fn check_weights(g: &Graph, weights: &[(String, Vec<usize>)]) -> Result<()> {
    for n in &g.nodes {
        for (id, want) in n.op.weights() {
            let Some((name, shape)) = weights.get(id.0 as usize) else {
                let (op, n) = (n.op.name(), weights.len());
                return Err(Error::Invalid(format!("op `{op}` reads weight {} of {n}", id.0)));
            };
            let fits = shape.len() == want.len() && shape.iter().zip(&want).all(|(&s, d)| d.is_none_or(|d| d == s));
            if !fits {
                let want: Vec<String> = want.iter().map(|d| d.map_or("_".into(), |d| d.to_string())).collect();
                let op = n.op.name();
                return Err(Error::tensor(
                    name,
                    format!("has shape {shape:?}; op `{op}` needs [{}]", want.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// All graphs of a session share one arena: a graph's inputs stay valid across runs of that graph, but running
/// another graph may overwrite them, so write a graph's inputs after the other graphs it follows have run.
pub struct Session {
    backend: Box<dyn Backend>,
    graphs: Vec<Planned>,
    kv: Option<KvSpec>,
    /// (name, shape) of every weight, for checking the graphs added later.
    weight_shapes: Vec<(String, Vec<usize>)>,
    /// The graph whose tensors the arena holds intact: the last one written or run (graphs share the arena, so a
    /// write into one graph's tensors may land on another's). Reading a graph's tensors needs it.
    owner: Option<GraphId>,
    /// The graph whose computed tensors are valid: the last one run, while it is still the owner.
    results_of: Option<GraphId>,
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
        let weight_shapes: Vec<(String, Vec<usize>)> =
            weights.iter().map(|w| (w.name.clone(), w.shape.clone())).collect();
        for g in &graphs {
            g.check()?;
            check_weights(g, &weight_shapes)?;
        }
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
        let graphs: Vec<Planned> = graphs.into_iter().map(Planned::new).collect();
        let arena = graphs.iter().map(|p| p.plan.size).max().unwrap_or(0);
        backend.reserve_arena(arena)?;
        tracing::debug!(backend = backend.name(), arena_bytes = arena, "session ready");
        let timings = graphs.iter().map(|p| GraphTimings::new(&p.g)).collect();
        Ok(Session {
            backend,
            graphs,
            kv,
            weight_shapes,
            owner: None,
            results_of: None,
            profiling: false,
            timings,
        })
    }

    /// Adds a graph (e.g. a smaller last batch) to a running session; the arena grows if the new plan needs more.
    pub fn add_graph(&mut self, g: Graph) -> Result<GraphId> {
        g.check()?;
        check_weights(&g, &self.weight_shapes)?;
        let p = Planned::new(g);
        self.backend.reserve_arena(p.plan.size)?;
        self.timings.push(GraphTimings::new(&p.g));
        self.graphs.push(p);
        Ok(GraphId(self.graphs.len() - 1))
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn arena_bytes(&self) -> usize {
        self.graphs.iter().map(|p| p.plan.size).max().unwrap_or(0)
    }

    pub fn graph(&self, id: GraphId) -> &Graph {
        &self.graphs[id.0].g
    }

    /// The tensor of graph `id` named `name` (look it up once, then use the id).
    pub fn tensor(&self, id: GraphId, name: &str) -> Result<TensorId> {
        name.id_in(&self.graphs[id.0].g)
    }

    /// The tensor's slot after checking its element type and, for a write, the number of values given.
    fn slot(&self, id: GraphId, key: impl TensorKey, want: Scalar, have: Option<usize>) -> Result<TensorRef> {
        let p = &self.graphs[id.0];
        let t = key.id_in(&p.g)?;
        let info = p.g.info(t);
        if info.dtype != want {
            return Err(Error::Invalid(format!(
                "tensor `{}` is {:?}, not {want:?}",
                info.name, info.dtype
            )));
        }
        if have.is_some_and(|n| n != info.numel()) {
            return Err(Error::Invalid(format!(
                "tensor `{}` {:?} needs {} values, got {}",
                info.name,
                info.shape,
                info.numel(),
                have.unwrap_or(0)
            )));
        }
        Ok(p.tref(t))
    }

    pub fn write_f32(&mut self, id: GraphId, t: impl TensorKey, data: &[f32]) -> Result<()> {
        let t = self.slot(id, t, Scalar::F32, Some(data.len()))?;
        self.wrote(id);
        self.backend.write_f32(t, data)
    }

    pub fn write_i32(&mut self, id: GraphId, t: impl TensorKey, data: &[i32]) -> Result<()> {
        let t = self.slot(id, t, Scalar::I32, Some(data.len()))?;
        self.wrote(id);
        self.backend.write_i32(t, data)
    }

    /// A write into graph `id`'s tensors: any other graph's tensors may be overwritten.
    fn wrote(&mut self, id: GraphId) {
        if self.owner != Some(id) {
            self.results_of = None;
        }
        self.owner = Some(id);
    }

    /// A graph's tensors can be read while no other graph's were written since; its computed ones also need a run
    /// since then.
    fn check_fresh(&self, id: GraphId, t: TensorId) -> Result<()> {
        let info = self.graphs[id.0].g.info(t);
        if self.owner == Some(id) && (info.role == Role::Input || self.results_of == Some(id)) {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "tensor `{}` is stale: another graph's tensors were written into the shared arena since (read a \
             graph's results before writing the next graph's inputs), or its graph has not run",
            info.name
        )))
    }

    /// Waits for every run issued so far (GPU backends run asynchronously).
    pub fn synchronize(&mut self) -> Result<()> {
        self.backend.synchronize()
    }

    pub fn read_f32(&self, id: GraphId, t: impl TensorKey) -> Result<Vec<f32>> {
        let key = t.id_in(&self.graphs[id.0].g)?;
        self.check_fresh(id, key)?;
        let t = self.slot(id, key, Scalar::F32, None)?;
        self.backend.read_f32(t)
    }

    pub fn read_i32(&self, id: GraphId, t: impl TensorKey) -> Result<Vec<i32>> {
        let key = t.id_in(&self.graphs[id.0].g)?;
        self.check_fresh(id, key)?;
        let t = self.slot(id, key, Scalar::I32, None)?;
        self.backend.read_i32(t)
    }

    /// Device-side copy between graphs (e.g. sampled tokens -> next step's input ids).
    pub fn copy(&mut self, from: GraphId, src: impl TensorKey, to: GraphId, dst: impl TensorKey) -> Result<()> {
        let (gs, gd) = (&self.graphs[from.0], &self.graphs[to.0]);
        let (si, di) = (src.id_in(&gs.g)?, dst.id_in(&gd.g)?);
        let (s, d) = (gs.tref(si), gd.tref(di));
        if s.numel != d.numel || s.scalar != d.scalar {
            return Err(Error::Invalid(format!(
                "copy {} -> {}: {} {:?} vs {} {:?} elements",
                gs.g.info(si).name,
                gd.g.info(di).name,
                s.numel,
                s.scalar,
                d.numel,
                d.scalar
            )));
        }
        self.check_fresh(from, si)?;
        if s == d {
            return Ok(());
        }
        self.wrote(to);
        self.backend.copy(s, d)
    }

    /// The kernels read the position from device memory and cannot report it: positions past the KV cache are refused
    /// here, before anything runs (per-row placements are checked by whoever writes the row table, and by the ops).
    fn check_positions(&self, p: &Planned, step: &StepParams) -> Result<()> {
        let Some(spec) = &self.kv else { return Ok(()) };
        for n in &p.g.nodes {
            if let Op::Rope(r) = &n.op {
                if !r.per_row && step.pos + r.len > spec.seq {
                    return Err(Error::Invalid(format!(
                        "positions {}..{} are outside the KV cache ({} positions)",
                        step.pos,
                        step.pos + r.len,
                        spec.seq
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs graph `id`: the one executor. Each node's op goes to the backend's implementation of it; a backend may
    /// replay a recorded run instead (`Backend::begin_run`). Profiled, every node is timed and waited for.
    pub fn run(&mut self, id: GraphId, step: &StepParams) -> Result<()> {
        self.wrote(id);
        self.results_of = None;
        self.run_nodes(id, step)?;
        self.results_of = Some(id);
        Ok(())
    }

    fn run_nodes(&mut self, id: GraphId, step: &StepParams) -> Result<()> {
        let p = &self.graphs[id.0];
        self.check_positions(p, step)?;
        let b = &mut *self.backend;
        let run = RunInfo {
            key: p.key,
            replayable: p.g.phase == Phase::Decode && !self.profiling,
        };
        if b.begin_run(run, step)? {
            return Ok(());
        }
        let exec = |b: &mut dyn Backend, i: usize| {
            let (ins, out, scratch) = &p.nodes[i];
            p.g.nodes[i].op.exec(
                b,
                &Args {
                    ins,
                    out: *out,
                    step,
                    scratch: *scratch,
                },
            )
        };
        if !self.profiling {
            let r = (0..p.nodes.len()).try_for_each(|i| exec(b, i));
            let end = b.end_run(run, r.is_ok());
            return r.and(end);
        }
        // One clock read per node boundary (a vDSO call, ~20 ns): the end of node i is the start of node i + 1.
        let t = &mut self.timings[id.0];
        let start = Instant::now();
        let mut last = start;
        let mut r = Ok(());
        for i in 0..p.nodes.len() {
            r = exec(b, i).and_then(|_| b.synchronize());
            if r.is_err() {
                break;
            }
            let now = Instant::now();
            let slot = &mut t.nodes[i];
            slot.0 += (now - last).as_secs_f64();
            slot.1 += 1;
            last = now;
        }
        let end = b.end_run(run, r.is_ok());
        r.and(end)?;
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
        for (i, (p, t)) in self.graphs.iter().zip(&self.timings).enumerate() {
            let g = &p.g;
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
