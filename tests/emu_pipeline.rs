//! The emulator's sm_80 data-movement instructions that the tensor-core kernels are built on: `ldmatrix` (x1, x2,
//! x4, .trans) delivers each lane the fragment words the PTX ISA specifies, and `cp.async` lands its copies only
//! when waited for (forward schedule), at once (reverse) or at random (shuffle), so that a kernel missing the wait,
//! or missing the barrier before it re-fills a stage others still read, computes a wrong result under some schedule
//! while the correct kernel passes under all three. The `gpu_` twin runs the same probes on the hardware.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use half::bf16;
use llamagen::backend::cuda::emu::{EmuDevice, Sched};
use llamagen::backend::cuda::kernels;
use llamagen::backend::cuda::launch::LaunchConfig;

mod support;
use support::devices::*;
use support::emu_check::SCHEDS;

/// The words ldmatrix variant (`num` matrices, `trans`) gives `lane`, from the PTX ISA's description: matrix j's
/// row lane/4, columns 2(lane%4) and +1 (low half first), or with .trans column lane/4 of rows 2(lane%4) and +1.
fn ldmatrix_want(m: &[u16], num: usize, trans: bool, lane: usize) -> [u32; 4] {
    let mut r = [0u32; 4];
    let (q, c) = (lane / 4, 2 * (lane % 4));
    for (j, w) in r.iter_mut().enumerate().take(num) {
        let at = |row: usize, col: usize| m[j * 64 + row * 8 + col] as u32;
        *w = if trans {
            at(c, q) | at(c + 1, q) << 16
        } else {
            at(q, c) | at(q, c + 1) << 16
        };
    }
    r
}

#[test]
fn ldmatrix_fragments() {
    ldmatrix_fragments_on(&EmuDevice::new());
}

fn ldmatrix_fragments_on<D: TestDevice>(dev: &D) {
    // Distinct values, so any misplaced element shows: element e of the four matrices is bf16(e).
    let m: Vec<bf16> = (0..256).map(|e| bf16::from_f32(e as f32)).collect();
    let bits: Vec<u16> = m.iter().map(|b| b.to_bits()).collect();
    let input = dev.upload(&m, "in");
    let mut out = dev.alloc::<u32>(5 * 32 * 4, "out");
    kernels::selftest_ldmatrix(dev, LaunchConfig::linear(1, 32), input.ptr(), out.ptr_mut()).unwrap();
    let got = out.to_vec();
    for (v, (num, trans)) in [(4, false), (4, true), (2, false), (2, true), (1, false)]
        .into_iter()
        .enumerate()
    {
        for lane in 0..32 {
            let want = ldmatrix_want(&bits, num, trans, lane);
            let g = &got[(v * 32 + lane) * 4..][..4];
            assert_eq!(g, want, "ldmatrix x{num} trans={trans} lane {lane}");
        }
    }
}

/// out of selftest_cp_async for n threads, `in2` entries of threads t % 5 == 4 zero-filled.
fn cp_async_want(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut w = vec![0f32; 8 * n];
    for t in 0..n {
        let nb = (t + 1) % n;
        for j in 0..4 {
            w[8 * t + j] = a[4 * nb + j];
            w[8 * t + 4 + j] = if nb % 5 == 4 { 0.0 } else { b[4 * nb + j] };
        }
    }
    w
}

fn run_cp_async<D: TestDevice>(dev: &D, n: usize, flags: i32) -> bool {
    let a: Vec<f32> = (0..4 * n).map(|i| i as f32 + 0.5).collect();
    let b: Vec<f32> = (0..4 * n).map(|i| -(i as f32) - 1.0).collect();
    let (ad, bd) = (dev.upload(&a, "in"), dev.upload(&b, "in2"));
    let mut out = dev.alloc::<f32>(8 * n, "out");
    let cfg = LaunchConfig::linear(1, n as u32).with_shared((16 * n) as u32);
    kernels::selftest_cp_async(dev, cfg, ad.ptr(), bd.ptr(), out.ptr_mut(), flags).unwrap();
    out.to_vec() == cp_async_want(&a, &b, n)
}

#[test]
fn cp_async_waits_and_zero_fill() {
    cp_async_waits_and_zero_fill_on(&EmuDevice::new());
}

fn cp_async_waits_and_zero_fill_on<D: TestDevice>(dev: &D) {
    for n in [32, 96, 200] {
        for s in SCHEDS {
            assert!(
                run_cp_async(&dev.with_sched(s), n, 3),
                "correct probe, n = {n}, sched {s:?}"
            );
        }
    }
}

/// Each bug shows under the schedule built to expose it (and the correct probe passes under all of them, above).
#[test]
fn cp_async_bugs_show() {
    let dev = EmuDevice::new();
    // No wait: under forward the copies have not landed at the barrier (the poisoned buffer is read).
    assert!(
        !run_cp_async(&dev.with_sched(Sched::Forward), 64, 2),
        "a missing cp.async wait went unnoticed"
    );
    // No barrier before the refill: under reverse the last thread's refill lands before its neighbour's first read.
    assert!(
        !run_cp_async(&dev.with_sched(Sched::Reverse), 64, 1),
        "a missing barrier before a refill went unnoticed"
    );
    // Shuffle lands each copy at a random time: over a few seeds both bugs show.
    let shuffle = dev.with_sched(Sched::Shuffle);
    let seeds_catch = |flags| (0..8).any(|seed| !run_cp_async(&shuffle.with_seed(seed), 64, flags));
    assert!(
        seeds_catch(2) && seeds_catch(1),
        "shuffle never exposed a pipeline bug in 8 seeds"
    );
}

#[test]
fn mma_tf32_tile() {
    mma_tf32_tile_on(&EmuDevice::new());
}

/// The m16n8k8 TF32 fragment layout: values are multiples of 1/4 (exact in TF32, products and sums exact in f32),
/// distinct and asymmetric, so a swapped or transposed fragment cannot cancel out; then to_tf32's rounding
/// (cvt.rna: to nearest, ties away from zero) through an identity product.
fn mma_tf32_tile_on<D: TestDevice>(dev: &D) {
    let mut s = 17u32;
    let mut q = || {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        ((s >> 16) % 33) as f32 * 0.25 - 4.0
    };
    let a: Vec<f32> = (0..16 * 8).map(|_| q()).collect();
    let bt: Vec<f32> = (0..8 * 8).map(|_| q()).collect();
    let c: Vec<f32> = (0..16 * 8).map(|_| q()).collect();
    let mut want = vec![0f32; 16 * 8];
    for m in 0..16 {
        for n in 0..8 {
            let dot: f32 = (0..8).map(|k| a[m * 8 + k] * bt[n * 8 + k]).sum();
            want[m * 8 + n] = dot + c[m * 8 + n];
        }
    }
    let (ab, bb, cb) = (dev.upload(&a, "a"), dev.upload(&bt, "bt"), dev.upload(&c, "c"));
    let mut d = dev.alloc::<f32>(16 * 8, "d");
    kernels::selftest_mma_tf32(
        dev,
        LaunchConfig::linear(1, 32),
        ab.ptr(),
        bb.ptr(),
        cb.ptr(),
        d.ptr_mut(),
    )
    .unwrap();
    assert_eq!(d.to_vec(), want);
    // Rounding: A = I·(1 + 2^-12) rounds to 1 (below half an ulp), 1 + 3·2^-12 to 1 + 2^-10, and the tie
    // 1 + 2^-11 away from zero to 1 + 2^-10; B = I, C = 0, so d reads back to_tf32 of the diagonal.
    let vals = [
        1.0 + 2f32.powi(-12),
        1.0 + 3.0 * 2f32.powi(-12),
        1.0 + 2f32.powi(-11),
        -(1.0 + 2f32.powi(-11)),
    ];
    let rounded = [1.0, 1.0 + 2f32.powi(-10), 1.0 + 2f32.powi(-10), -(1.0 + 2f32.powi(-10))];
    let mut a = vec![0f32; 16 * 8];
    for (i, v) in vals.iter().enumerate() {
        a[i * 8 + i] = *v;
    }
    let eye: Vec<f32> = (0..64).map(|i| if i % 9 == 0 { 1.0 } else { 0.0 }).collect();
    let (ab, bb, cb) = (
        dev.upload(&a, "a"),
        dev.upload(&eye, "bt"),
        dev.upload(&vec![0f32; 128], "c"),
    );
    kernels::selftest_mma_tf32(
        dev,
        LaunchConfig::linear(1, 32),
        ab.ptr(),
        bb.ptr(),
        cb.ptr(),
        d.ptr_mut(),
    )
    .unwrap();
    let got = d.to_vec();
    for (i, r) in rounded.iter().enumerate() {
        assert_eq!(got[i * 8 + i], *r, "to_tf32({})", vals[i]);
    }
}

/// The probes on the GPU (scripts/gpu-check.sh): confirms the fragment reading and cp.async's zero fill there.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_ldmatrix_and_cp_async() {
    let g = GpuTest::new();
    ldmatrix_fragments_on(&g);
    cp_async_waits_and_zero_fill_on(&g);
    mma_tf32_tile_on(&g);
}
