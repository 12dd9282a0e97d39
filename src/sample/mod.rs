//! Token sampling: classifier-free guidance, the official filtering rules and a counter-based RNG.
pub mod rng;
pub mod sampler;

pub use rng::{philox4x32_10, uniform};
pub use sampler::{cfg_mix, probabilities, sample, SamplerScratch, SamplingParams};
