//! The graph runtime: a static graph of LlamaGen-specific ops, a liveness planner that gives every intermediate an
//! offset in one arena, and an executor that walks the graph on a [`crate::backend::Backend`].
pub mod exec;
pub mod graph;
pub mod op;
pub mod plan;

pub use exec::{GraphId, Session, StepParams};
pub use graph::{Graph, Node, Phase, Role, Scalar, TensorId, TensorInfo, WeightId};
pub use op::Op;
pub use plan::Plan;
