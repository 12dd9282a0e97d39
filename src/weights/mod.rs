pub mod safetensors;
pub mod synth;
pub mod torch_pt;
