//! Shared test helpers: fixture paths and error metrics.
#![allow(dead_code)]
use llamagen::weights::safetensors::SafeTensorsFile;

pub mod cli;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod devices;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod emu_check;
pub mod golden;
use std::path::PathBuf;

/// `cpu_family_tests!(a, b, ..)`, for test functions `fn a(make: MakeBackend)` in the calling file: one module per
/// CPU kernel family (`portable::a`, `avx2::a`, `avx512::a`, `avx512bf16::a`), each test running `a` on the CPU
/// backend with that family. A family the build machine's CPU lacks is reported as ignored with the reason
/// (build.rs sets the `llamagen_cpu_*` cfgs), never as passed.
#[macro_export]
macro_rules! cpu_family_tests {
    ($($test:ident),+ $(,)?) => {
        $crate::cpu_family_tests!(@family portable, Portable, llamagen_cpu_portable, "unreachable"; $($test),+);
        $crate::cpu_family_tests!(@family avx2, Avx2, llamagen_cpu_avx2, "this CPU lacks AVX2 + FMA"; $($test),+);
        $crate::cpu_family_tests!(@family avx512, Avx512, llamagen_cpu_avx512, "this CPU lacks AVX-512F + BW"; $($test),+);
        $crate::cpu_family_tests!(@family avx512bf16, Avx512Bf16, llamagen_cpu_avx512bf16, "this CPU lacks AVX-512 BF16"; $($test),+);
    };
    (@family $m:ident, $family:ident, $cfg:ident, $why:literal; $($test:ident),+) => {
        mod $m {
            $(
                #[test]
                #[cfg_attr(not($cfg), ignore = $why)]
                fn $test() {
                    let make = crate::support::golden::cpu_family(llamagen::backend::cpu::KernelFamily::$family);
                    super::$test(&make)
                }
            )+
        }
    };
}

/// The source tree: `$LLAMAGEN_SRC_DIR` when set (test executables carried to another machine, see
/// scripts/gpu-check.sh), else the tree they were built from.
pub fn root() -> PathBuf {
    std::env::var_os("LLAMAGEN_SRC_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

pub fn data(name: &str) -> PathBuf {
    root().join("tests/data").join(name)
}

pub fn fixture(name: &str) -> SafeTensorsFile {
    SafeTensorsFile::open(&data(name)).expect("fixture present")
}

/// ‖a − b‖₂ / ‖b‖₂ in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

pub fn assert_finite(x: &[f32], what: &str) {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        panic!("{what}: non-finite value {} at {i}", x[i]);
    }
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}
