//! The graph runtime: a static graph of ops (`crate::ops`), a liveness planner that gives every intermediate an
//! offset in one arena, and the executor that walks a graph on a [`Backend`].
pub mod exec;
pub mod graph;
pub mod plan;

pub use crate::ops::{Backend, KvSpec, Op, Scalar, StepParams, WeightId};
pub use exec::{GraphId, Session, TensorKey};
pub use graph::{Graph, Node, Phase, Role, TensorId, TensorInfo};
pub use plan::Plan;
