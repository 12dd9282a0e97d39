//! A static graph: a tensor table and a list of nodes in execution order (built once per config, batch and phase).
use super::op::Op;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

/// Index into the model's weight table (weights live outside the arena, uploaded once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    F32,
    I32,
}

impl Scalar {
    pub fn size(self) -> usize {
        4
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Written by the host before a run; live from the start.
    Input,
    /// Produced and consumed inside the graph.
    Intermediate,
    /// Read back (or fed to the next graph) after a run; live to the end.
    Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Prefill,
    Decode,
    VqDecode,
    VqEncode,
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Scalar,
    pub role: Role,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<TensorId>,
    pub output: TensorId,
}

impl Node {
    /// The optional inputs of a `rope` / `attention` node, by the convention of `Op::Rope` and `Op::Attention`:
    /// (condition mask, row table). (None, None) for every other op; an error for a per-row node without its table.
    pub fn kv_inputs(&self) -> crate::Result<(Option<TensorId>, Option<TensorId>)> {
        let (per_row, mask) = match self.op {
            Op::Rope { per_row, .. } => (per_row, None),
            Op::Attention { per_row, .. } => {
                let masked = self.inputs.len() == 2 + usize::from(per_row);
                (per_row, masked.then(|| self.inputs[1]))
            }
            _ => return Ok((None, None)),
        };
        let rows = match (per_row, self.inputs.len()) {
            (false, _) => None,
            (true, n) if n >= 2 => Some(self.inputs[n - 1]),
            (true, _) => {
                return Err(crate::Error::Invalid(format!(
                    "a per-row {} node has no row table input",
                    self.op.name()
                )))
            }
        };
        Ok((mask, rows))
    }
}

#[derive(Clone, Debug)]
pub struct Graph {
    pub phase: Phase,
    pub tensors: Vec<TensorInfo>,
    pub nodes: Vec<Node>,
}

impl Graph {
    pub fn new(phase: Phase) -> Self {
        Graph {
            phase,
            tensors: Vec::new(),
            nodes: Vec::new(),
        }
    }

    fn add(&mut self, name: String, shape: Vec<usize>, dtype: Scalar, role: Role) -> TensorId {
        self.tensors.push(TensorInfo {
            name,
            shape,
            dtype,
            role,
        });
        TensorId(self.tensors.len() as u32 - 1)
    }

    pub fn input(&mut self, name: &str, shape: &[usize], dtype: Scalar) -> TensorId {
        self.add(name.to_string(), shape.to_vec(), dtype, Role::Input)
    }

    /// Appends a node producing a new tensor.
    pub fn push(
        &mut self,
        op: Op,
        inputs: &[TensorId],
        name: impl Into<String>,
        shape: &[usize],
        dtype: Scalar,
    ) -> TensorId {
        let out = self.add(name.into(), shape.to_vec(), dtype, Role::Intermediate);
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            output: out,
        });
        out
    }

    pub fn mark_output(&mut self, t: TensorId) {
        self.tensors[t.0 as usize].role = Role::Output;
    }

    pub fn info(&self, t: TensorId) -> &TensorInfo {
        &self.tensors[t.0 as usize]
    }

    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.tensors[t.0 as usize].shape
    }

    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors
            .iter()
            .position(|t| t.name == name)
            .map(|i| TensorId(i as u32))
    }
}
