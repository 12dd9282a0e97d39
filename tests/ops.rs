//! Every op, every backend, against the plain references of `llamagen::ops` (`ops::reference::RefBackend`): the
//! small cases of `bench::ops::reference_cases` (odd shapes, f32 and bf16 storage, residual epilogues, all conv
//! kinds, top-k and top-p) run through the same one-node `Session` as the engine, on
//!
//! - the CPU backend under every kernel family (one test per family: on a CPU that lacks a family its test is
//!   reported ignored, with the reason, never passed),
//! - the CUDA kernels on the emulator (`cuda-emu`), and on a GPU in `gpu_ops_match_the_references` (ignored unless
//!   asked for: scripts/gpu-check.sh).
//!
//! Bounds, from the arithmetic (normalised error ‖got − ref‖₂ / ‖ref‖₂; the references accumulate in f64):
//! - f32: 1e-5. Summation order over ≤ 1 000 terms costs ~1e-7; the Winograd F(4×4, 3×3) convs of the CPU and the
//!   fast exp of its groupnorm/softmax paths stay below 3e-6 (measured; see `conv::tests::winograd_error`).
//! - bf16: every output is a bf16 value (a lost rounding fails here), and each differs from the reference's by at
//!   most one bf16 ulp, in at most 5 % of the elements. The inputs are bf16 values and bf16 products are exact in
//!   f32, so a backend and the reference differ only in summation order (f32 vs f64, ~1e-7 relative) before each
//!   rounding: an output lands on the other bf16 neighbour only where the two sums straddle a rounding boundary,
//!   for a few elements in ten thousand (an op rounding at the wrong point differs in about half of them).
//! - Copies and lookups (embed, concat, take_last, codebook) and the integer outputs (quantize, sampling): exact.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod support;

use llamagen::backend::cpu::{CpuBackend, KernelFamily};
use llamagen::bench::ops::{examples, reference_cases, MakeBackend, OpBench};
use llamagen::ops::reference::RefBackend;
use llamagen::ops::Backend;
use llamagen::Result;
use support::rel_l2;

/// A case of the op named `op`: its id and how to build it on a backend.
struct Case {
    op: &'static str,
    id: String,
    build: Box<dyn Fn(MakeBackend) -> Result<OpBench>>,
}

/// The ops' own examples, then the cases of the ops that need a hand-built graph.
fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = examples()
        .into_iter()
        .map(|e| Case {
            op: e.op.name(),
            id: e.id(),
            build: Box::new(move |m| e.build_on(m)),
        })
        .collect();
    v.extend(reference_cases().into_iter().map(|c| Case {
        op: c.op,
        id: c.id(),
        build: Box::new(move |m| c.build_on(m)),
    }));
    v
}

fn bound(case: &Case, bf16: bool) -> f64 {
    match case.op {
        "embed" | "concat" | "take_last" | "codebook" | "quantize" | "sampling" => 0.0,
        // One bf16 ulp is at most 2⁻⁷ relative; with ≤ 5 % of elements off by one, rel L2 ≤ 2⁻⁷·√0.05.
        _ if bf16 => (0.05f64).sqrt() / 128.0,
        _ => 1e-5,
    }
}

/// The bf16 rules: `got` holds bf16 values only, each at most one bf16 ulp from `want` (plus the f32 summation
/// noise, 1e-5 of the output's rms, for outputs that are themselves near zero after cancellation), and few differ.
fn check_bf16(what: &str, got: &[f32], want: &[f32]) {
    use llamagen::ops::round_bf16;
    let rms = (want.iter().map(|&w| w as f64 * w as f64).sum::<f64>() / want.len().max(1) as f64).sqrt() as f32;
    let mut off = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let not_bf16 = "is not a bf16 value (a rounding is missing)";
        assert_eq!(round_bf16(g), g, "{what}: output {i} = {g} {not_bf16}");
        if g != w {
            off += 1;
            let ulp = (round_bf16(w.abs() * (1.0 + 1.0 / 128.0)) - w.abs()).abs();
            let far = "more than one bf16 ulp apart";
            assert!(
                (g - w).abs() <= ulp + 1e-5 * rms,
                "{what}: output {i} = {g}, reference {w}: {far} (rms {rms:e})"
            );
        }
    }
    let frac = off as f64 / got.len().max(1) as f64;
    let n = got.len();
    assert!(frac <= 0.05, "{what}: {off} of {n} outputs differ from the reference");
    println!("{what:>52}: bf16 values, {off} of {n} one ulp off");
}

/// Runs every case on `make`'s backend and on the reference; returns one line per case, failing on the first case
/// out of bounds (naming it, the backend and the error).
fn check_all(label: &str, make: &dyn Fn(bool) -> Result<Box<dyn Backend>>, skip: &dyn Fn(&Case) -> bool) {
    let mut checked = 0;
    for case in cases() {
        if skip(&case) {
            continue;
        }
        let mut reference = (case.build)(&|bf16| Ok(Box::new(RefBackend::new(bf16)))).unwrap();
        let mut got = (case.build)(make).unwrap_or_else(|e| panic!("{label} {}: {e}", case.id));
        reference.run().unwrap();
        got.run().unwrap_or_else(|e| panic!("{label} {}: {e}", case.id));
        let (g, w) = (got.output().unwrap(), reference.output().unwrap());
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{label} {}: non-finite output",
            case.id
        );
        // A case whose reference output is all zeros would compare nothing.
        assert!(
            w.iter().any(|&v| v != 0.0),
            "{} : the reference output is all zeros",
            case.id
        );
        let e = rel_l2(&g, &w);
        let b = bound(&case, got.bf16);
        if got.bf16 && b > 0.0 {
            check_bf16(&format!("{label} {}", case.id), &g, &w);
        }
        println!("{label:>16} {:<36} rel L2 {e:.2e} (bound {b:.0e})", case.id);
        assert!(e <= b, "{label} {}: rel L2 {e:.3e} > {b:e}", case.id);
        checked += 1;
    }
    assert!(checked >= 20, "{label}: only {checked} cases ran");
}

fn cpu_family(family: KernelFamily) {
    let make = move |bf16| -> Result<Box<dyn Backend>> { Ok(Box::new(CpuBackend::with_kernels(bf16, family)?)) };
    check_all(&format!("cpu/{family}"), &make, &|_| false);
}

#[test]
#[cfg_attr(not(llamagen_cpu_portable), ignore = "unreachable")]
fn cpu_portable_matches_the_references() {
    cpu_family(KernelFamily::Portable);
}

#[test]
#[cfg_attr(not(llamagen_cpu_avx2), ignore = "this CPU lacks AVX2 + FMA")]
fn cpu_avx2_matches_the_references() {
    cpu_family(KernelFamily::Avx2);
}

#[test]
#[cfg_attr(not(llamagen_cpu_avx512), ignore = "this CPU lacks AVX-512F + BW")]
fn cpu_avx512_matches_the_references() {
    cpu_family(KernelFamily::Avx512);
}

#[test]
#[cfg_attr(not(llamagen_cpu_avx512bf16), ignore = "this CPU lacks AVX-512 BF16")]
fn cpu_avx512bf16_matches_the_references() {
    cpu_family(KernelFamily::Avx512Bf16);
}

/// The VQ ops exist in f32 only on the CUDA backend (as in the reference tokenizer); every case here is f32 for
/// them, so no case is skipped.
#[test]
fn emu_matches_the_references() {
    let make = |bf16| -> Result<Box<dyn Backend>> { Ok(support::devices::emu_backend(bf16)) };
    check_all("cuda-emu", &make, &|_| false);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_ops_match_the_references() {
    let make = |bf16| -> Result<Box<dyn Backend>> { Ok(support::devices::gpu_backend(bf16)) };
    check_all("cuda", &make, &|_| false);
}

/// The references are not vacuous: a wrong reference output is caught (a case compared with itself off by one
/// element's sign fails), and every op of the op set has at least one reference case.
#[test]
fn every_op_has_a_reference_case_and_a_wrong_output_is_caught() {
    let cases = cases();
    for op in llamagen::ops::NAMES {
        assert!(cases.iter().any(|c| c.op == *op), "no reference case for op `{op}`");
    }
    let case = cases.iter().find(|c| c.op == "rmsnorm").unwrap();
    let mut r = (case.build)(&|bf16| Ok(Box::new(RefBackend::new(bf16)))).unwrap();
    r.run().unwrap();
    let want = r.output().unwrap();
    let mut bad = want.clone();
    bad[3] = -bad[3] + 1.0;
    assert!(rel_l2(&bad, &want) > bound(case, false));
}

/// `Exec` is public, so the CPU backend checks what its arena views rely on before handing them out: every tensor
/// inside the arena at a 4-byte aligned offset, the output apart from the inputs, a scratch apart from both (or
/// exactly input 0).
#[test]
fn the_cpu_backend_refuses_unsound_tensor_slots() {
    use llamagen::ops::{gelu::Gelu, Args, Exec, Scalar, StepParams, TensorRef};
    let mut b = CpuBackend::new(false);
    b.reserve_arena(1024).unwrap();
    let t = |offset, numel| TensorRef {
        offset,
        numel,
        scalar: Scalar::F32,
    };
    let step = StepParams::default();
    let op = Gelu { n: 16 };
    let mut exec = |ins: &[TensorRef], out, scratch| {
        let args = Args {
            ins,
            out,
            step: &step,
            scratch,
        };
        b.exec(&op, &args)
    };
    // a scratch apart from the output and the inputs, or exactly input 0's bytes (the planner's reuse), nothing else
    let e = exec(&[t(0, 16)], t(64, 16), Some(t(96, 16))).unwrap_err().to_string();
    assert!(e.contains("scratch overlaps"), "{e}");
    let e = exec(&[t(0, 16)], t(64, 16), Some(t(32, 16))).unwrap_err().to_string();
    assert!(e.contains("scratch overlaps"), "{e}");
    let e = exec(&[t(0, 16), t(128, 16)], t(64, 16), Some(t(128, 16)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("scratch overlaps"), "{e}");
    exec(&[t(0, 16)], t(64, 16), Some(t(0, 16))).unwrap();
    exec(&[t(0, 16)], t(64, 16), Some(t(192, 16))).unwrap();
    let mut run = |ins: &[TensorRef], out| exec(ins, out, None);
    let e = run(&[t(0, 16)], t(32, 16)).unwrap_err().to_string();
    assert!(e.contains("overlaps"), "{e}");
    let e = run(&[t(0, 16)], t(1000, 16)).unwrap_err().to_string();
    assert!(e.contains("outside the arena"), "{e}");
    assert!(run(&[t(2, 16)], t(128, 16)).is_err(), "a misaligned input");
    assert!(
        run(&[t(0, 16)], t(usize::MAX - 3, 16)).is_err(),
        "an end past usize::MAX"
    );
    run(&[t(0, 16)], t(64, 16)).unwrap();
}
