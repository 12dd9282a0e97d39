//! The pipeline: turns "N images of these conditions with these settings" into batches with per-image RNG streams,
//! shards and resume, drives the GPT and VQ runners, and writes every output atomically.
pub mod generate;
pub mod outputs;
pub mod select;

pub use generate::{generate, GenerateJob};
pub use select::{ImagePlan, Shard};
