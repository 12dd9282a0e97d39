pub mod npy;
pub mod npz;
pub mod png;
