//! `gemm_swiglu` (kernels/gemm.cu: the bf16 GEMM kernels with their SwiGLU epilogue, W1 and W3 rows interleaved
//! in groups of 4) under the CPU emulator, against the CPU backend's unfused pair: `cpu::matmul::matmul` of w1|w3
//! (bf16-rounded outputs) then `cpu::swiglu::swiglu`. Every path: the small-m kernel, the three tensor-core tiles,
//! split-K.
//! `cargo test --release --test kernels matmul_swiglu -- --nocapture` prints the worst error.

use half::bf16;
use llamagen::backend::cpu;
use llamagen::backend::cpu::matmul::WeightRef;
use llamagen::backend::cpu::KernelFamily;
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::backend::cuda::gemm::{self, GemmPath, Tile};
use llamagen::backend::cuda::launch::DevPtrMut;

use crate::support::devices::*;
use crate::support::emu_check::*;

/// The GEMM's bound (tests/kernels/gemm.rs `BF16_NMSE`): the linear outputs a and b match the CPU's up to f32
/// summation order, so an output near a bf16 rounding boundary may flip by one ulp; silu(a)·b keeps that one-ulp
/// relative size (silu's slope is at most 1.1, and it is rounded again), so the same 1e-5 holds. A swapped W1/W3
/// half, a wrong column pairing or a row read from the other group gives NMSE ~1.
const NMSE: f64 = 1e-5;

/// (m, k, f).
type Shape = (usize, usize, usize);

/// One run: a shape on a path, with y `y_off` bf16 past an aligned address (1: the 16-, 8- and 4-byte stores'
/// fallbacks).
#[derive(Clone, Copy)]
struct Run {
    shape: Shape,
    path: GemmPath,
    split: Option<u32>,
    y_off: usize,
}

/// The CPU backend's unfused pair, portable family: w1|w3 matmul (`round`: bf16 outputs), then swiglu.
fn cpu_reference(x: &[f32], w: WeightRef, (m, k, f): Shape, round: bool) -> Vec<f32> {
    let (p, n) = (KernelFamily::Portable, 2 * f);
    let (mut ab, mut want) = (vec![0f32; m * n], vec![0f32; m * f]);
    cpu::matmul::matmul(p, x, m, k, w, n, None, round, &mut Default::default(), &mut ab);
    cpu::swiglu::swiglu(&ab, f, round, p, &mut want);
    want
}

/// Runs one case; returns (NMSE, outputs whose bf16 bits differ from the CPU's).
fn case<D: TestDevice>(dev: &D, rng: &mut Rng, run: Run) -> (f64, usize) {
    let Run {
        shape: (m, k, f),
        path,
        split,
        y_off,
    } = run;
    let n = 2 * f;
    // Rows of different magnitude, so a misplaced row shows; W3 larger than W1, so a swapped half shows.
    let mut x: Vec<f32> = (0..m * k)
        .map(|i| rng.uniform(-1.0, 1.0) * [1.0, 0.25, 3.0][(i / k) % 3])
        .collect();
    let mut w: Vec<f32> = (0..n * k)
        .map(|i| rng.uniform(-0.5, 0.5) * if i < f * k { 1.0 } else { 2.5 })
        .collect();
    round_all(&mut x);
    round_all(&mut w);
    let wb = to_bf16(&w);
    let want = cpu_reference(&x, WeightRef::Bf16(&wb), (m, k, f), true);

    let what = format!(
        "gemm_swiglu {path:?} split={split:?} m={m} k={k} f={f} y_off={y_off} sched={}",
        dev.sched_label()
    );
    let (xd, wd) = (dev.upload(&to_bf16(&x), "x"), dev.upload(&wb, "w"));
    let yd = dev.alloc::<bf16>(m * f + y_off, "y");
    // SAFETY: the buffer holds y_off + m·f elements.
    let y = unsafe { DevPtrMut::from_raw(yd.addr() + 2 * y_off as u64, m * f) };
    let mut part = dev.alloc::<f32>(split.map_or(1, |s| gemm::split_k_workspace_len(m, n, k, s)), "part");
    let split = split.map(|s| (s, part.ptr_mut()));
    gemm::gemm_swiglu(dev, xd.ptr(), wd.ptr(), y, (m, k, f), path, split).unwrap();
    let got = from_bf16(&yd.to_vec()[y_off..]);
    for b in [&xd, &wd] {
        b.check_canaries().unwrap();
    }
    yd.check_canaries().unwrap();
    part.check_canaries().unwrap();
    let (e, max) = nmse(&got, &want, &what);
    assert!(e <= NMSE, "{what}: NMSE {e:.3e} > {NMSE:.0e} (max abs err {max:.3e})");
    (
        e,
        got.iter()
            .zip(&want)
            .filter(|(g, w)| g.to_bits() != w.to_bits())
            .count(),
    )
}

#[test]
fn matmul_swiglu_matches_cpu() {
    matmul_swiglu_matches_cpu_on(&EmuDevice::new());
}

fn matmul_swiglu_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(41);
    let run = |shape, path, split| Run {
        shape,
        path,
        split,
        y_off: 0,
    };
    let mut runs = Vec::new();
    // Small-m kernel, (m, k, f): decode rows 1..64 (one block row) and past it (grid.y = 2, 3), k a multiple of 8
    // (16-byte weight loads) or not (the scalar tail), f from one block (4) to many, and GPT-B's FFN.
    for s in [
        (1, 64, 4),
        (2, 768, 64),
        (7, 40, 12),
        (16, 100, 20),
        (33, 96, 32),
        (64, 256, 48),
        (70, 72, 8),
        (2, 768, 2048),
    ] {
        runs.push(run(s, GemmPath::Small(None), None));
    }
    // Tensor-core tiles: f not a multiple of the tile's 32 or 64 outputs (partial last block with f % 8 == 4, the
    // scalar tail of the 8-wide stores, or f % 8 == 0), m past the tile, k % 8 != 0 (the register pipeline).
    for tile in Tile::ALL {
        for s in [(130, 96, 36), (65, 64, 64), (200, 40, 100), (17, 72, 20), (40, 48, 40)] {
            runs.push(run(s, GemmPath::Tiled(Some(tile)), None));
        }
    }
    // Split-K: the partials in the interleaved order, the reduce pairing them.
    for (i, tile) in Tile::ALL.into_iter().enumerate() {
        runs.push(run((130, 384, 48), GemmPath::Tiled(Some(tile)), Some(3)));
        runs.push(run((70, 300, 12 + 8 * i), GemmPath::Tiled(Some(tile)), Some(2)));
    }
    // y one bf16 off alignment on every path: the scalar / 2-byte store fallbacks.
    for (path, split) in [
        (GemmPath::Small(None), None),
        (GemmPath::Tiled(Some(Tile::T64x64)), None),
        (GemmPath::Tiled(Some(Tile::T64x64)), Some(2)),
    ] {
        runs.push(Run {
            y_off: 1,
            ..run((66, 320, 40), path, split)
        });
    }
    let (mut worst, mut flipped, mut total) = (0f64, 0, 0);
    for (i, &r) in runs.iter().enumerate() {
        let d = dev.with_sched(SCHEDS[i % 3]);
        let (e, off) = case(&d, &mut rng, r);
        worst = worst.max(e);
        flipped += off;
        total += r.shape.0 * r.shape.2;
    }
    println!(
        "matmul_swiglu: {} runs, worst NMSE {worst:.3e}, {flipped} of {total} outputs not bit-identical to the CPU",
        runs.len()
    );
}

/// f32 (the small-m kernel, `gemm_small_f32`): the CPU's f32 matmul (round = false) then swiglu. The sums differ
/// only in order and expf against Rust's exp by an ulp: the GEMM's f32 bound (tests/kernels/gemm.rs `F32_NMSE`).
#[test]
fn matmul_swiglu_f32_matches_cpu() {
    matmul_swiglu_f32_matches_cpu_on(&EmuDevice::new());
}

fn matmul_swiglu_f32_matches_cpu_on<D: TestDevice>(dev: &D) {
    const F32_NMSE: f64 = 1e-10;
    let mut rng = Rng(43);
    let mut worst = 0f64;
    for (i, &(m, k, f)) in [
        (1, 64, 4),
        (2, 768, 64),
        (7, 42, 12),
        (16, 100, 20),
        (17, 96, 36),
        (40, 256, 8),
    ]
    .iter()
    .enumerate()
    {
        let d = dev.with_sched(SCHEDS[i % 3]);
        let n = 2 * f;
        let x: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| rng.uniform(-0.5, 0.5) * if i < f * k { 1.0 } else { 2.5 })
            .collect();
        let want = cpu_reference(&x, WeightRef::F32(&w), (m, k, f), false);
        let (xd, wd, mut yd) = (d.upload(&x, "x"), d.upload(&w, "w"), d.alloc::<f32>(m * f, "y"));
        gemm::gemm_swiglu(&d, xd.ptr(), wd.ptr(), yd.ptr_mut(), (m, k, f), GemmPath::Auto, None).unwrap();
        yd.check_canaries().unwrap();
        let what = format!("gemm_swiglu f32 m={m} k={k} f={f} sched={}", d.sched_label());
        let (e, max) = nmse(&yd.to_vec(), &want, &what);
        assert!(e <= F32_NMSE, "{what}: NMSE {e:.3e} (max abs err {max:.3e})");
        worst = worst.max(e);
    }
    println!("matmul_swiglu f32: worst NMSE {worst:.3e}");
    let (x, w, mut y) = (
        dev.alloc::<f32>(70 * 16, "x"),
        dev.alloc::<f32>(16 * 16, "w"),
        dev.alloc::<f32>(70 * 8, "y"),
    );
    let e = gemm::gemm_swiglu(dev, x.ptr(), w.ptr(), y.ptr_mut(), (70, 16, 8), GemmPath::Auto, None);
    assert!(
        e.unwrap_err().to_string().contains("small-m kernel only"),
        "f32 past 64 rows has no fused tile"
    );
}

#[test]
fn matmul_swiglu_rejects_bad_shapes() {
    let dev = EmuDevice::new();
    let x = dev.alloc::<bf16>(4 * 16, "x");
    let w = dev.alloc::<bf16>(16 * 16, "w");
    let mut y = dev.alloc::<bf16>(4 * 8, "y");
    let mut part = dev.alloc::<f32>(3 * 4 * 16, "part");
    let mut run = |(m, k, f), path, split: Option<u32>| {
        let split = split.map(|s| (s, part.ptr_mut()));
        gemm::gemm_swiglu(&dev, x.ptr(), w.ptr(), y.ptr_mut(), (m, k, f), path, split).map_err(|e| e.to_string())
    };
    let auto = GemmPath::Auto;
    assert!(run((4, 16, 6), auto, None).unwrap_err().contains("f % 4 == 0"));
    assert!(run((0, 16, 8), auto, None).is_err());
    assert!(run((4, 0, 8), auto, None).is_err());
    assert!(
        run((5, 16, 8), auto, None).unwrap_err().contains("x has"),
        "x too short"
    );
    assert!(
        run((4, 16, 12), auto, None).unwrap_err().contains("w has"),
        "w too short for 2f rows"
    );
    assert!(
        run((4, 8, 16), auto, None).unwrap_err().contains("y has"),
        "y too short"
    );
    let small = GemmPath::Small(None);
    assert!(
        run((4, 16, 8), small, Some(2)).unwrap_err().contains("tiled"),
        "split-K on the small kernel"
    );
    let tiled = GemmPath::Tiled(None);
    assert!(run((4, 16, 8), tiled, Some(1)).unwrap_err().contains("splits"));
    assert!(
        run((4, 16, 8), tiled, Some(2)).unwrap_err().contains("cannot split"),
        "k = 16 is one stage: 2 splits would leave one range and the reduce would read an unwritten workspace"
    );
    assert!(
        run((4, 96, 8), GemmPath::Tiled(None), Some(3)).is_err(),
        "x too short for k = 96"
    );
    run((4, 16, 8), auto, None).unwrap();
    run((4, 16, 8), tiled, None).unwrap();
}

/// The cases above on the GPU (scripts/gpu-check.sh); fails without one.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_matmul_swiglu_matches_cpu() {
    let g = GpuTest::new();
    matmul_swiglu_matches_cpu_on(&g);
    matmul_swiglu_f32_matches_cpu_on(&g);
}
