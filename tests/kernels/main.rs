//! The op kernels of `kernels/` on the CUDA emulator against the CPU backend, one module per kernel file
//! (`kernels/<op>.cu` ↔ `tests/kernels/<op>.rs`): shape sweeps at LlamaGen and odd edge shapes, the three emulator
//! schedules, canaries around every buffer, and each module's `gpu_*` twins that run the same cases on a GPU
//! (ignored unless asked for: scripts/gpu-check.sh). One test binary for all of them, so a change relinks once.
//! `cargo test --release --test kernels -- --nocapture` prints the errors.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

#[path = "../support/mod.rs"]
mod support;

mod attention;
mod codebook;
mod conv;
mod embed;
mod gelu;
mod gemm;
mod groupnorm;
mod groupnorm_conv;
mod matmul_swiglu;
mod rmsnorm;
mod rope;
mod sampling;
mod swiglu;
mod vq_attention;
