//! llamagen: a LlamaGen inference engine.
//!
//! Layers point down only: `cli` (binary) -> `pipeline` -> `model` -> `runtime` -> `backend`.
pub mod backend;
pub mod bench;
pub mod error;
pub mod io;
pub mod sample;
pub mod weights;

pub use error::{Error, Result};
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod runtime;
pub mod serve;
