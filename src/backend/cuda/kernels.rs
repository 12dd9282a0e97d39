//! Generated from `kernels/llamagen_kernels.h` by `build.rs` (see its docs):
//!
//! - `#[repr(C)]` mirrors of the kernel parameter structs ([`RmsnormParams`], [`SwigluParams`], ...) and
//!   [`RUST_LAYOUTS`], checked against the C compiler's `sizeof`/`offsetof` ([`c_layouts`]) by a test;
//! - [`KERNELS`]: every kernel with its module, C declaration and argument signature;
//! - one typed launcher per kernel (`rmsnorm_f32(launcher, config, x, w, y, params)`), whose argument types follow
//!   the C declaration (`const T*` -> [`DevPtr`], `T*` -> [`DevPtrMut`]);
//! - [`MODULES`] and [`NVCC`]: the embedded GPU images, empty (with the reason) when nvcc was missing or failed.
#![allow(missing_docs)]
include!(concat!(env!("OUT_DIR"), "/kernels_gen.rs"));
