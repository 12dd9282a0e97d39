//! llamagen: a LlamaGen inference engine.
//!
//! Layers point down only: `cli` (binary) -> `pipeline` -> `model` -> `runtime` -> `backend`.
pub mod error;
pub mod io;
pub mod weights;
pub mod sample;

pub use error::{Error, Result};
