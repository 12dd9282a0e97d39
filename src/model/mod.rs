//! Model graphs: the GPT (prefill and decode step) and the VQ tokenizer (decode and encode), built as static graphs
//! of runtime ops from a config, with weights bound by their official state-dict names.
pub mod config;
pub mod gpt;
pub mod gpt_continuous;
pub mod gpt_graph;
pub mod rope_table;
pub mod vq;

pub use config::{GptConfig, ModelType, VqConfig};

/// `--dtype`: f32 is the bit-faithful reference; bf16 stores GPT weights and KV cache in bf16 (the official GPU
/// setting), accumulating in f32. The VQ tokenizer always runs in f32, as in the reference.
pub use crate::ops::Dtype;
