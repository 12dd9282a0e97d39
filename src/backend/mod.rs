//! Backends: one implementation of every op (`crate::ops`) per device. `cpu` is the engine for machines without a
//! GPU; `cuda` runs the kernels of `kernels/` on a GPU or, for `cuda-emu`, on the CPU under the emulator. Both are
//! tested against the plain references of `crate::ops`.
pub mod common;
pub mod cpu;
pub mod cuda;
