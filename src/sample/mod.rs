pub mod rng;
pub mod sampler;
