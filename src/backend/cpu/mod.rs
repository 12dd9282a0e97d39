//! The CPU backend: the reference every kernel is checked against, and the engine for users without a GPU.
pub mod codebook;
pub mod conv;
pub mod groupnorm;
pub mod vq_attention;
