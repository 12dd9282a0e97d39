//! gemm (tiled bf16 on tensor cores, small-m bf16, f32 via the strided kernel) and the strided batched f32 GEMM
//! under the CPU emulator, against the CPU backend (`cpu::matmul::matmul`) or, for the strided GEMM that the CPU
//! has no twin of, an f64 loop over its definition.
//! `cargo test --release --test kernels gemm -- --nocapture` prints the worst errors.

use half::bf16;
use llamagen::backend::cpu;
use llamagen::backend::cpu::matmul::WeightRef;
use llamagen::backend::cpu::KernelFamily;
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::backend::cuda::gemm::{self, GemmPath, Strided, Tile};

use crate::support::devices::*;
use crate::support::emu_check::*;

/// NMSE bounds.
/// f32: the kernels and the CPU sum the same exact products in different orders (and the CPU's AVX/FMA grouping
/// differs from fmaf chains), a relative error of ~√k·2^-24 per element: NMSE ~k·2^-48 ≈ 3e-12 at k = 768, less
/// at the smaller k; measured worst cases are printed. 1e-10 leaves room for the GPU's own order and still catches
/// any wrong element (one element off by 1% in a 1000-element output is NMSE ~1e-7).
const F32_NMSE: f64 = 1e-10;
/// bf16: products of bf16 values are exact in f32, so before rounding the outputs differ from the CPU only by
/// f32 summation order (~1e-7 relative). The output is then rounded to bf16 (twice with a residual), and an
/// output lying within that 1e-7 of a rounding boundary flips by one bf16 ulp (2^-8 relative, NMSE contribution
/// ~2^-16 ≈ 1.5e-5 per flipped element over the output's energy share). Flips hit ~1e-4 of the elements, so NMSE
/// stays ~1e-9; 1e-5 is the bound at which every element could flip once, far below a wrong fragment or tile
/// (NMSE ~1e-2 .. 1).
const BF16_NMSE: f64 = 1e-5;

#[allow(clippy::too_many_arguments)]
fn gemm_case<D: TestDevice>(
    dev: &D,
    rng: &mut Rng,
    m: usize,
    n: usize,
    k: usize,
    res: bool,
    bf: bool,
    path: GemmPath,
    split: Option<u32>,
) -> f64 {
    // Rows of different magnitude, so a misplaced row shows.
    let mut x: Vec<f32> = (0..m * k)
        .map(|i| rng.uniform(-1.0, 1.0) * [1.0, 0.1, 4.0][(i / k) % 3])
        .collect();
    let mut w: Vec<f32> = (0..n * k).map(|_| rng.uniform(-0.5, 0.5)).collect();
    let mut r: Vec<f32> = (0..m * n).map(|_| rng.uniform(-2.0, 2.0)).collect();
    if bf {
        round_all(&mut x);
        round_all(&mut w);
        round_all(&mut r);
    }
    let mut want = vec![0f32; m * n];
    let wb = to_bf16(&w);
    let wref = if bf { WeightRef::Bf16(&wb) } else { WeightRef::F32(&w) };
    cpu::matmul::matmul(
        KernelFamily::Portable,
        &x,
        m,
        k,
        wref,
        n,
        res.then_some(&r[..]),
        bf,
        &mut Default::default(),
        &mut want,
    );

    let got = if bf {
        let (xd, wd, rd) = (
            dev.upload(&to_bf16(&x), "x"),
            dev.upload(&wb, "w"),
            dev.upload(&to_bf16(&r), "r"),
        );
        let mut yd = dev.alloc::<bf16>(m * n, "y");
        let rp = res.then(|| rd.ptr());
        match split {
            None => gemm::gemm_with(dev, xd.ptr(), wd.ptr(), rp, yd.ptr_mut(), m, n, k, path).unwrap(),
            Some(splits) => {
                let GemmPath::Tiled(tile) = path else {
                    panic!("split-K runs the tiled kernels")
                };
                let mut part = dev.alloc::<f32>(gemm::split_k_workspace_len(m, n, k, splits), "part");
                let (x, w, y, part) = (xd.ptr(), wd.ptr(), yd.ptr_mut(), part.ptr_mut());
                gemm::gemm_split_k(dev, x, w, rp, y, (m, n, k), tile, splits, part).unwrap()
            }
        }
        from_bf16(&yd.to_vec())
    } else {
        let (xd, wd, rd) = (dev.upload(&x, "x"), dev.upload(&w, "w"), dev.upload(&r, "r"));
        let mut yd = dev.alloc::<f32>(m * n, "y");
        let rp = res.then(|| rd.ptr());
        gemm::gemm_with(dev, xd.ptr(), wd.ptr(), rp, yd.ptr_mut(), m, n, k, path).unwrap();
        yd.to_vec()
    };
    let what = format!(
        "gemm {} {path:?} split={split:?} m={m} n={n} k={k} residual={res} sched={}",
        if bf { "bf16" } else { "f32" },
        dev.sched_label()
    );
    let (e, max) = nmse(&got, &want, &what);
    let bound = if bf { BF16_NMSE } else { F32_NMSE };
    assert!(e <= bound, "{what}: NMSE {e:.3e} > {bound:.0e} (max abs err {max:.3e})");
    e
}

#[test]
fn gemm_matches_cpu() {
    gemm_matches_cpu_on(&EmuDevice::new());
}

fn gemm_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(11);
    let (mut worst_f32, mut worst_bf16, mut cases) = (0f64, 0f64, 0usize);
    let mut run = |dev: &D, m, n, k, res, bf, path| {
        let e = gemm_case(dev, &mut rng, m, n, k, res, bf, path, None);
        if bf {
            worst_bf16 = worst_bf16.max(e);
        } else {
            worst_f32 = worst_f32.max(e);
        }
        cases += 1;
    };
    for (mi, &m) in [1usize, 2, 5, 16, 33, 70].iter().enumerate() {
        for (ki, &k) in [64usize, 100, 136].iter().enumerate() {
            for (ni, &n) in [8usize, 100, 257].iter().enumerate() {
                let res = (mi + ki + ni) % 2 == 0;
                run(dev, m, n, k, res, true, GemmPath::Tiled(None));
                run(dev, m, n, k, !res, true, GemmPath::Small(None));
                run(dev, m, n, k, res, false, GemmPath::Tiled(None));
                run(dev, m, n, k, !res, false, GemmPath::Small(None));
            }
        }
    }
    // k = 768 (the GPT-B width) once per path; the small kernel with 1, 3 and 8 warps splitting k; Auto.
    run(dev, 16, 100, 768, true, true, GemmPath::Tiled(None));
    run(dev, 16, 100, 768, true, true, GemmPath::Small(None));
    run(dev, 16, 100, 768, true, false, GemmPath::Tiled(None));
    run(dev, 16, 100, 768, true, false, GemmPath::Small(None));
    for warps in [1, 3, 8] {
        run(dev, 33, 24, 200, true, true, GemmPath::Small(Some(warps)));
        run(dev, 33, 24, 200, true, false, GemmPath::Small(Some(warps)));
    }
    run(dev, 3, 40, 96, false, true, GemmPath::Auto);
    run(dev, 65, 40, 96, true, true, GemmPath::Auto);
    run(dev, 3, 40, 96, true, false, GemmPath::Auto);
    // A missing barrier shows only under some orders.
    for s in SCHEDS {
        let d = dev.with_sched(s);
        run(&d, 70, 72, 80, true, true, GemmPath::Tiled(None));
        run(&d, 17, 16, 300, true, true, GemmPath::Small(Some(4)));
        run(&d, 70, 72, 40, true, false, GemmPath::Tiled(None));
        run(&d, 17, 16, 300, true, false, GemmPath::Small(Some(4)));
    }
    println!("gemm: {cases} cases, worst NMSE f32 {worst_f32:.3e}, bf16 {worst_bf16:.3e}");
}

/// Every tile of the tensor-core GEMM at shapes around its edges: partial tiles in m and n, k of one to nine
/// pipeline stages (the 3-stage ring wraps), k % 32 != 0 (the last stage zero-filled by cp.async) and k % 8 != 0
/// (the register-staged fallback); n % 8 != 0 for the scalar epilogue. The ring is the part a wrong wait or a
/// missing barrier breaks, and the three schedules land the copies late, early and at random.
#[test]
fn gemm_tiles_match_cpu() {
    gemm_tiles_match_cpu_on(&EmuDevice::new());
}

fn gemm_tiles_match_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(23);
    let mut worst = 0f64;
    for (i, tile) in Tile::ALL.into_iter().enumerate() {
        let (bm, bn) = tile.dims();
        let shapes = [
            (1, 8, 32),
            (bm - 1, bn + 8, 200),
            (bm + 3, 2 * bn - 5, 96),
            (2 * bm, bn, 288),
            (17, 40, 100),
            (bm + 1, 24, 36),
        ];
        for (j, &(m, n, k)) in shapes.iter().enumerate() {
            let d = dev.with_sched(SCHEDS[(i + j) % 3]);
            let e = gemm_case(
                &d,
                &mut rng,
                m,
                n,
                k,
                j % 2 == 0,
                true,
                GemmPath::Tiled(Some(tile)),
                None,
            );
            worst = worst.max(e);
        }
        for s in SCHEDS {
            let e = gemm_case(
                &dev.with_sched(s),
                &mut rng,
                bm + 5,
                bn + 16,
                160,
                true,
                true,
                GemmPath::Tiled(Some(tile)),
                None,
            );
            worst = worst.max(e);
        }
    }
    println!("gemm tiles: worst NMSE {worst:.3e}");
}

/// Split-K: every tile with 2..8 splits, k ranges that end mid-stage (k = 300 in chunks of 160), k % 8 != 0 (the
/// register-staged loads), odd n (the partial tile's scalar stores, the reduce's scalar tail), residual on and off,
/// under the three schedules; against the CPU at the tiled path's bound (only the f32 summation order differs).
#[test]
fn gemm_split_k_matches_cpu() {
    gemm_split_k_matches_cpu_on(&EmuDevice::new());
}

fn gemm_split_k_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(29);
    let mut worst = 0f64;
    let shapes = [
        (70, 100, 300, 2),
        (33, 257, 768, 6),
        (128, 72, 136, 2),
        (5, 8, 1000, 8),
        (17, 40, 100, 3),
    ];
    for (i, tile) in Tile::ALL.into_iter().enumerate() {
        for (j, &(m, n, k, splits)) in shapes.iter().enumerate() {
            let d = dev.with_sched(SCHEDS[(i + j) % 3]);
            let path = GemmPath::Tiled(Some(tile));
            worst = worst.max(gemm_case(&d, &mut rng, m, n, k, j % 2 == 0, true, path, Some(splits)));
        }
    }
    println!("gemm split-k: worst NMSE {worst:.3e}");
}

#[test]
fn gemm_split_k_choice() {
    // GPT-B at batch 64 with CFG (m = 128): the 64x64 grid leaves SMs idle
    assert_eq!(gemm::split_k(128, 2304, 768, Tile::T64x64), Some(2));
    assert_eq!(gemm::split_k(128, 768, 768, Tile::T64x64), Some(6));
    assert_eq!(gemm::split_k(128, 768, 2048, Tile::T64x64), Some(6));
    assert_eq!(gemm::split_k(128, 4096, 768, Tile::T64x64), Some(2));
    // a full grid, or k too short to split
    assert_eq!(gemm::split_k(1920, 2304, 768, Tile::T128x128), None);
    assert_eq!(gemm::split_k(128, 768, 128, Tile::T64x64), None);
    assert_eq!(gemm::split_k_workspace_len(128, 768, 768, 6), 6 * 128 * 768);
    let dev = EmuDevice::new();
    let (x, w) = (dev.alloc::<bf16>(64 * 64, "x"), dev.alloc::<bf16>(64 * 64, "w"));
    let (mut y, mut part) = (dev.alloc::<bf16>(64 * 64, "y"), dev.alloc::<f32>(64 * 64, "part"));
    let e = gemm::gemm_split_k(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        y.ptr_mut(),
        (64, 64, 64),
        None,
        2,
        part.ptr_mut(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("part has 4096 elements, needs 8192"), "{e}");
}

#[test]
fn gemm_tile_choice() {
    // The biggest tile that still gives the 132 SMs of an H100 a block each, else 64×64.
    assert_eq!(gemm::pick_tile(1920, 2304), Tile::T128x128);
    assert_eq!(gemm::pick_tile(1024, 2304), Tile::T128x128);
    assert_eq!(gemm::pick_tile(512, 2304), Tile::T128x64);
    assert_eq!(gemm::pick_tile(128, 2304), Tile::T64x64);
    assert_eq!(gemm::pick_tile(65, 768), Tile::T64x64);
    for t in Tile::ALL {
        assert!(t.blocks(1920, 2304) >= gemm::TARGET_SMS);
    }
}

#[test]
fn gemm_auto_path_and_unaligned_fallback() {
    use llamagen::backend::cuda::launch::Dtype;
    assert_eq!(gemm::auto_path(Dtype::Bf16, 64), GemmPath::Small(None));
    assert_eq!(gemm::auto_path(Dtype::Bf16, 65), GemmPath::Tiled(None));
    assert_eq!(gemm::auto_path(Dtype::F32, 16), GemmPath::Small(None));
    assert_eq!(gemm::auto_path(Dtype::F32, 65), GemmPath::Tiled(None));
    assert_eq!(gemm::small_warps(768, 768), 8);
    assert_eq!(gemm::small_warps(16384, 768), 1);
    assert_eq!(gemm::small_warps(8, 40), 2);
    gemm_unaligned_fallback_on(&EmuDevice::new());
}

fn gemm_unaligned_fallback_on<D: TestDevice>(dev: &D) {
    // x one element past a 16-byte boundary: the kernels must take their scalar loads.
    let mut rng = Rng(5);
    let (m, n, k) = (5, 20, 64);
    let x: Vec<f32> = (0..m * k + 1)
        .map(|_| cpu::round_bf16(rng.uniform(-1.0, 1.0)))
        .collect();
    let w: Vec<f32> = (0..n * k).map(|_| cpu::round_bf16(rng.uniform(-1.0, 1.0))).collect();
    let mut want = vec![0f32; m * n];
    let wb = to_bf16(&w);
    cpu::matmul::matmul(
        KernelFamily::Portable,
        &x[1..],
        m,
        k,
        WeightRef::Bf16(&wb),
        n,
        None,
        true,
        &mut Default::default(),
        &mut want,
    );
    let xd = dev.upload(&to_bf16(&x), "x");
    let wd = dev.upload(&wb, "w");
    for path in [GemmPath::Tiled(None), GemmPath::Small(None)] {
        let mut yd = dev.alloc::<bf16>(m * n, "y");
        // SAFETY: one element into the live buffer, m·k elements remain.
        let xs = unsafe { llamagen::backend::cuda::launch::DevPtr::from_raw(xd.addr() + 2, m * k) };
        gemm::gemm_with(dev, xs, wd.ptr(), None, yd.ptr_mut(), m, n, k, path).unwrap();
        let (e, _) = nmse(&from_bf16(&yd.to_vec()), &want, "unaligned x");
        assert!(e <= BF16_NMSE, "unaligned x, {path:?}: NMSE {e:.3e}");
    }
    // The same in f32 (4 bytes past the boundary).
    cpu::matmul::matmul(
        KernelFamily::Portable,
        &x[1..],
        m,
        k,
        WeightRef::F32(&w),
        n,
        None,
        false,
        &mut Default::default(),
        &mut want,
    );
    let xd = dev.upload(&x, "x");
    let wd = dev.upload(&w, "w");
    for path in [GemmPath::Tiled(None), GemmPath::Small(None)] {
        let mut yd = dev.alloc::<f32>(m * n, "y");
        // SAFETY: one element into the live buffer, m·k elements remain.
        let xs = unsafe { llamagen::backend::cuda::launch::DevPtr::from_raw(xd.addr() + 4, m * k) };
        gemm::gemm_with(dev, xs, wd.ptr(), None, yd.ptr_mut(), m, n, k, path).unwrap();
        let (e, _) = nmse(&yd.to_vec(), &want, "unaligned x f32");
        assert!(e <= F32_NMSE, "unaligned x f32, {path:?}: NMSE {e:.3e}");
    }
}

#[test]
fn gemm_rejects_bad_shapes() {
    let dev = EmuDevice::new();
    let x = dev.alloc::<bf16>(4 * 16, "x");
    let w = dev.alloc::<bf16>(8 * 16, "w");
    let r = dev.alloc::<bf16>(4 * 8 - 1, "r");
    let mut y = dev.alloc::<bf16>(4 * 8, "y");
    let g = |m, n, k, res: bool, path, y: &mut llamagen::backend::cuda::emu::EmuBuffer<bf16>| {
        gemm::gemm_with(&dev, x.ptr(), w.ptr(), res.then(|| r.ptr()), y.ptr_mut(), m, n, k, path)
    };
    assert!(g(0, 8, 16, false, GemmPath::Auto, &mut y).is_err());
    assert!(g(4, 8, 0, false, GemmPath::Auto, &mut y).is_err());
    assert!(g(5, 8, 16, false, GemmPath::Auto, &mut y).is_err(), "x too short");
    assert!(
        g(4, 9, 16, false, GemmPath::Tiled(None), &mut y).is_err(),
        "w too short"
    );
    assert!(g(4, 8, 16, true, GemmPath::Auto, &mut y).is_err(), "residual too short");
    assert!(g(4, 8, 16, false, GemmPath::Small(Some(0)), &mut y).is_err());
    assert!(g(4, 8, 16, false, GemmPath::Small(Some(9)), &mut y).is_err());
    g(4, 8, 16, false, GemmPath::Small(Some(2)), &mut y).unwrap();
    let xf = dev.alloc::<f32>(4 * 16, "xf");
    let wf = dev.alloc::<f32>(8 * 16, "wf");
    let mut yf = dev.alloc::<f32>(4 * 8, "yf");
    let small_f32 = gemm::gemm_with(
        &dev,
        xf.ptr(),
        wf.ptr(),
        None,
        yf.ptr_mut(),
        4,
        8,
        16,
        GemmPath::Small(Some(9)),
    );
    assert!(small_f32.is_err(), "9 warps");
    let short_y = gemm::gemm_with(
        &dev,
        xf.ptr(),
        wf.ptr(),
        None,
        yf.ptr_mut(),
        4,
        9,
        16,
        GemmPath::Tiled(None),
    );
    assert!(short_y.is_err(), "w and y too short for n = 9");

    let a = dev.alloc::<f32>(12, "a");
    let mut c = dev.alloc::<f32>(12, "c");
    let s = Strided {
        m: 3,
        n: 4,
        k: 4,
        batch: 1,
        a: (4, 1, 0),
        b: (4, 1, 0),
        c: (4, 1, 0),
        alpha: 1.0,
    };
    assert!(
        gemm::gemm_strided(&dev, a.ptr(), a.ptr(), None, None, c.ptr_mut(), &s).is_err(),
        "b too short"
    );
    let s1 = Strided {
        k: 3,
        b: (4, 1, 0),
        ..s
    };
    gemm::gemm_strided(
        &dev,
        a.ptr(),
        a.ptr(),
        None,
        None,
        c.ptr_mut(),
        &Strided { a: (3, 1, 0), ..s1 },
    )
    .unwrap();
    let s2 = Strided {
        batch: 2,
        c: (4, 1, 1),
        a: (3, 1, 0),
        ..s1
    };
    assert!(
        gemm::gemm_strided(&dev, a.ptr(), a.ptr(), None, None, c.ptr_mut(), &s2).is_err(),
        "c too short"
    );
    let s3 = Strided { batch: 0, ..s1 };
    assert!(
        gemm::gemm_strided(&dev, a.ptr(), a.ptr(), None, None, c.ptr_mut(), &s3).is_err(),
        "empty batch"
    );
    let bias = dev.alloc::<f32>(2, "bias");
    let s4 = Strided { a: (3, 1, 0), ..s1 };
    assert!(gemm::gemm_strided(&dev, a.ptr(), a.ptr(), Some(bias.ptr()), None, c.ptr_mut(), &s4).is_err());
}

/// C[b](i, j) = alpha Σ A B + bias + R in f64, over the same strides the kernel gets.
#[allow(clippy::too_many_arguments)]
fn strided_ref(a: &[f32], b: &[f32], bias: Option<&[f32]>, r: Option<&[f32]>, c: &mut [f32], s: &Strided) {
    for bt in 0..s.batch {
        for i in 0..s.m {
            for j in 0..s.n {
                let dot: f64 = (0..s.k)
                    .map(|kk| {
                        a[bt * s.a.2 + i * s.a.0 + kk * s.a.1] as f64 * b[bt * s.b.2 + kk * s.b.0 + j * s.b.1] as f64
                    })
                    .sum();
                let o = bt * s.c.2 + i * s.c.0 + j * s.c.1;
                let mut v = s.alpha as f64 * dot + bias.map_or(0.0, |bi| bi[i] as f64);
                if let Some(r) = r {
                    v += r[o] as f64;
                }
                c[o] = v as f32;
            }
        }
    }
}

#[test]
fn gemm_strided_matches_reference() {
    gemm_strided_matches_reference_on(&EmuDevice::new());
}

fn gemm_strided_matches_reference_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(21);
    let mut worst = 0f64;
    let (co, ci, hw) = (13, 20, 35);
    let cases: Vec<(&str, Strided, bool, bool)> = vec![
        // 1×1 conv on NCHW, batch 2: A = W[co, ci], B = x[b][ci, hw], C = y[b][co, hw]
        (
            "conv1x1",
            Strided {
                m: co,
                n: hw,
                k: ci,
                batch: 2,
                a: (ci, 1, 0),
                b: (hw, 1, ci * hw),
                c: (hw, 1, co * hw),
                alpha: 1.0,
            },
            true,
            true,
        ),
        // every operand transposed (column-major), several tiles in m and n, alpha
        (
            "transposed",
            Strided {
                m: 70,
                n: 65,
                k: 33,
                batch: 1,
                a: (1, 70, 0),
                b: (1, 33, 0),
                c: (1, 70, 0),
                alpha: 0.37,
            },
            true,
            false,
        ),
        // padded rows, B broadcast over the batch (stride 0), 3 batches, residual only
        (
            "padded",
            Strided {
                m: 9,
                n: 17,
                k: 40,
                batch: 3,
                a: (43, 1, 9 * 43),
                b: (19, 1, 0),
                c: (20, 1, 9 * 20),
                alpha: -1.5,
            },
            false,
            true,
        ),
        // k = 1 and m = 1 degenerate shapes
        (
            "k1",
            Strided {
                m: 5,
                n: 7,
                k: 1,
                batch: 1,
                a: (1, 1, 0),
                b: (7, 1, 0),
                c: (7, 1, 0),
                alpha: 1.0,
            },
            true,
            true,
        ),
        (
            "m1",
            Strided {
                m: 1,
                n: 130,
                k: 50,
                batch: 2,
                a: (50, 1, 50),
                b: (130, 1, 50 * 130),
                c: (130, 1, 130),
                alpha: 1.0,
            },
            false,
            false,
        ),
    ];
    let mut case = 0;
    for (name, s, has_bias, has_res) in cases {
        let len = |rows: usize, cols: usize, (sr, sc, sb): (usize, usize, usize)| {
            (rows - 1) * sr + (cols - 1) * sc + (s.batch - 1) * sb + 1
        };
        let a: Vec<f32> = (0..len(s.m, s.k, s.a)).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let b: Vec<f32> = (0..len(s.k, s.n, s.b)).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let bias: Vec<f32> = (0..s.m).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let clen = len(s.m, s.n, s.c);
        let r: Vec<f32> = (0..clen).map(|_| rng.uniform(-1.0, 1.0)).collect();
        // Elements of C the strides skip must stay as they were: start both sides from the same sentinel.
        let mut want = vec![7.25f32; clen];
        strided_ref(
            &a,
            &b,
            has_bias.then_some(&bias[..]),
            has_res.then_some(&r[..]),
            &mut want,
            &s,
        );
        for sched in SCHEDS {
            let d = dev.with_sched(sched);
            let (ad, bd, biasd, rd) = (
                d.upload(&a, "a"),
                d.upload(&b, "b"),
                d.upload(&bias, "bias"),
                d.upload(&r, "r"),
            );
            let mut cd = d.upload(&vec![7.25f32; clen], "c");
            let bp = has_bias.then(|| biasd.ptr());
            let rp = has_res.then(|| rd.ptr());
            gemm::gemm_strided(&d, ad.ptr(), bd.ptr(), bp, rp, cd.ptr_mut(), &s).unwrap();
            let what = format!("gemm_strided {name} {sched:?}");
            let (e, max) = nmse(&cd.to_vec(), &want, &what);
            assert!(e <= F32_NMSE, "{what}: NMSE {e:.3e} (max abs err {max:.3e})");
            worst = worst.max(e);
            case += 1;
        }
    }
    println!("gemm_strided: {case} cases, worst NMSE {worst:.3e}");
}

/// The cases above on the GPU (scripts/gpu-check.sh); fails without one.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_gemm_matches_cpu() {
    let g = GpuTest::new();
    gemm_matches_cpu_on(&g);
    gemm_tiles_match_cpu_on(&g);
    gemm_split_k_matches_cpu_on(&g);
    gemm_unaligned_fallback_on(&g);
    gemm_strided_matches_reference_on(&g);
}
