//! A static graph: a tensor table and a list of nodes in execution order (built once per config, batch and phase).
use crate::ops::{Op, Scalar};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

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
    /// The op's scratch tensor (`OpDesc::scratch`), live only while the node runs.
    pub scratch: Option<TensorId>,
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

    /// Appends a node producing a new tensor of `shape`, after checking the inputs and the output against the op's
    /// descriptor (element counts and types): a graph that builds is a graph every backend can run.
    pub fn push(
        &mut self,
        op: impl Into<Op>,
        inputs: &[TensorId],
        name: impl Into<String>,
        shape: &[usize],
    ) -> Result<TensorId> {
        let (op, name) = (op.into(), name.into());
        if let Err(e) = op.validate() {
            return Err(Error::Invalid(format!("graph node `{name}`: {e}")));
        }
        let io = op.io();
        let bad = |m: String| Err(Error::Invalid(format!("graph node `{name}` ({}): {m}", op.name())));
        if inputs.len() != io.inputs.len() {
            return bad(format!("{} inputs, the op takes {}", inputs.len(), io.inputs.len()));
        }
        for (i, (&t, &(numel, scalar))) in inputs.iter().zip(&io.inputs).enumerate() {
            let info = self.info(t);
            if info.numel() != numel || info.dtype != scalar {
                return bad(format!(
                    "input {i} `{}` is {:?} {:?}, the op needs {numel} {scalar:?} elements",
                    info.name, info.shape, info.dtype
                ));
            }
        }
        if shape.iter().product::<usize>() != io.output.0 {
            return bad(format!(
                "output shape {shape:?}, the op writes {} elements",
                io.output.0
            ));
        }
        let out = self.add(name.clone(), shape.to_vec(), io.output.1, Role::Intermediate);
        let scratch = match op.scratch() {
            0 => None,
            n => Some(self.add(format!("{name}.scratch"), vec![n], Scalar::F32, Role::Intermediate)),
        };
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            output: out,
            scratch,
        });
        Ok(out)
    }

    /// Every node against its op again (`push` checks each node as it is added; a graph edited through its public
    /// fields is checked here when a session takes it).
    pub fn check(&self) -> Result<()> {
        for n in &self.nodes {
            n.op.validate()?;
            let io = n.op.io();
            let counts: Vec<(usize, crate::ops::Scalar)> = n
                .inputs
                .iter()
                .map(|&t| (self.info(t).numel(), self.info(t).dtype))
                .collect();
            let out = (self.info(n.output).numel(), self.info(n.output).dtype);
            if counts != io.inputs || out != io.output {
                let name = &self.info(n.output).name;
                return Err(Error::Invalid(format!(
                    "graph node `{name}` ({}) does not match its op",
                    n.op.name()
                )));
            }
        }
        Ok(())
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
