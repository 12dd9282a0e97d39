//! The convolutions against naive f64 references, every layout `prepare` picks, and (ignored) error and speed
//! measurements.
use super::*;
use crate::backend::cpu::testutil::{rand_vec, rel_l2};

/// One conv problem.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    s: usize,
    pad: [usize; 4],
}

impl Case {
    fn out_hw(&self) -> (usize, usize) {
        let p = self.pad;
        let oh = (self.h + p[0] + p[1] - self.kh) / self.s + 1;
        (oh, (self.w + p[2] + p[3] - self.kw) / self.s + 1)
    }

    /// Direct f64 loops over the definition of torch's Conv2d.
    fn naive(&self, x: &[f32], wt: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let Case {
            n,
            ci,
            co,
            h,
            w,
            kh,
            kw,
            s,
            pad,
        } = *self;
        let (oh, ow) = self.out_hw();
        let mut out = vec![0f64; n * co * oh * ow];
        for (idx, o) in out.iter_mut().enumerate() {
            let (b, oc) = (idx / (co * oh * ow), idx / (oh * ow) % co);
            let (oy, ox) = (idx / ow % oh, idx % ow);
            *o = bias.map_or(0.0, |bb| bb[oc] as f64);
            for i in 0..ci {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * s + ky) as isize - pad[0] as isize;
                        let ix = (ox * s + kx) as isize - pad[2] as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let xv = x[((b * ci + i) * h + iy as usize) * w + ix as usize];
                        *o += xv as f64 * wt[((oc * ci + i) * kh + ky) * kw + kx] as f64;
                    }
                }
            }
        }
        out
    }
}

/// (n, c_in, c_out, h, w)
const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1),
    (1, 3, 5, 3, 5),
    (3, 5, 3, 6, 10),
    (1, 33, 7, 7, 7),
    (3, 1, 33, 5, 3),
    (2, 16, 16, 9, 4),
    (1, 4, 2, 40, 3),
    (1, 8, 150, 4, 4),
    (1, 128, 160, 24, 20),
];

#[test]
fn conv2d_matches_naive() {
    conv2d_cases(false);
}

/// The AVX-512 packed weight layout (also reached through `prepared_matches_naive`), with every epilogue.
#[test]
#[cfg_attr(not(llamagen_cpu_avx512), ignore = "this CPU lacks AVX-512F + BW")]
fn packed_conv2d_matches_naive() {
    conv2d_cases(true);
}

fn conv2d_cases(packed: bool) {
    let kernels = [
        (3, 3, 1, [1, 1, 1, 1]),
        (1, 1, 1, [0; 4]),
        (3, 3, 2, [0, 1, 0, 1]),
        (2, 3, 1, [0, 2, 1, 0]),
        (1, 1, 2, [0; 4]),
        (3, 3, 3, [2, 2, 2, 2]),
    ];
    for (si, &(n, ci, co, h, w)) in SHAPES.iter().enumerate() {
        for (kh, kw, s, pad) in kernels {
            let c = Case {
                n,
                ci,
                co,
                h,
                w,
                kh,
                kw,
                s,
                pad,
            };
            if h + pad[0] + pad[1] < kh || w + pad[2] + pad[3] < kw {
                continue;
            }
            let seed = 10 * si as u64;
            let x = rand_vec(n * ci * h * w, seed);
            let (wt, b) = (rand_vec(co * ci * kh * kw, seed + 1), rand_vec(co, seed + 2));
            let want = c.naive(&x, &wt, Some(&b));
            let mut out = vec![f32::NAN; want.len()];
            let r = rand_vec(out.len(), seed + 3);
            let want_r: Vec<f64> = want.iter().zip(&r).map(|(&a, &b)| a + b as f64).collect();
            if packed {
                let pk = packed_weights(&wt, co, ci, kh, kw);
                let cw = ConvWeights::packed(&pk, co, ci, kh, kw);
                conv2d_with(&x, (n, h, w), cw, Some(&b), s, pad, Epilogue::Set, &mut out);
                let e = rel_l2(&out, &want);
                assert!(e < 1e-6, "packed {c:?}: rel {e}");
                let mut acc = r.clone();
                conv2d_with(&x, (n, h, w), cw, Some(&b), s, pad, Epilogue::Accumulate, &mut acc);
                assert!(rel_l2(&acc, &want_r) < 1e-6, "packed accumulate {c:?}");
                conv2d_with(&x, (n, h, w), cw, Some(&b), s, pad, Epilogue::Residual(&r), &mut out);
                assert!(rel_l2(&out, &want_r) < 1e-6, "packed residual {c:?}");
                continue;
            }
            conv2d(&x, n, ci, h, w, &wt, Some(&b), co, kh, kw, s, pad, &mut out);
            let e = rel_l2(&out, &want);
            assert!(e < 1e-6, "conv2d {c:?}: rel {e}");
            conv2d_add(&x, n, ci, h, w, &wt, Some(&b), co, kh, kw, s, pad, &r, &mut out);
            assert!(rel_l2(&out, &want_r) < 1e-6, "conv2d_add {c:?}");
            let (tm, mut acc) = (tap_major_weights(&wt, co, ci, kh, kw), r.clone());
            let cw = ConvWeights::tap_major(&tm, co, ci, kh, kw);
            conv2d_with(&x, (n, h, w), cw, Some(&b), s, pad, Epilogue::Accumulate, &mut acc);
            assert!(rel_l2(&acc, &want_r) < 1e-6, "accumulate {c:?}");
            conv2d(&x, n, ci, h, w, &wt, None, co, kh, kw, s, pad, &mut out);
            assert!(rel_l2(&out, &c.naive(&x, &wt, None)) < 1e-6, "no bias {c:?}");
        }
    }
}

/// Every layout `prepare` can choose for every kernel family this CPU has, through `conv_prepared`, with and
/// without a residual.
#[test]
fn prepared_matches_naive() {
    for family in KernelFamily::all_supported() {
        prepared_cases(family);
    }
}

fn prepared_cases(family: KernelFamily) {
    let kernels = [(3, 1, [1; 4]), (1, 1, [0; 4]), (3, 2, [0, 1, 0, 1])];
    for (si, &(n, ci, co, h, w)) in SHAPES
        .iter()
        .chain(&[(2, 24, 40, 7, 100), (1, 16, 8, 3, 64)])
        .enumerate()
    {
        for (k, s, pad) in kernels {
            let c = Case {
                n,
                ci,
                co,
                h,
                w,
                kh: k,
                kw: k,
                s,
                pad,
            };
            if h + pad[0] + pad[1] < k || w + pad[2] + pad[3] < k {
                continue;
            }
            let seed = 500 + 10 * si as u64;
            let x = rand_vec(n * ci * h * w, seed);
            let (wt, b) = (rand_vec(co * ci * k * k, seed + 1), rand_vec(co, seed + 2));
            let want = c.naive(&x, &wt, Some(&b));
            let r = rand_vec(want.len(), seed + 3);
            let want_r: Vec<f64> = want.iter().zip(&r).map(|(&a, &b)| a + b as f64).collect();
            for layout in [Layout::Plain, Layout::Conv, Layout::Winograd] {
                if layout == Layout::Winograd && (k, s, pad) != (3, 1, [1; 4]) {
                    continue;
                }
                let (prep, pw) = prepare(layout, &[co, ci, k, k], wt.clone(), family);
                let mut out = vec![f32::NAN; want.len()];
                let geo = (co, k, s, pad);
                conv_prepared(prep, &pw, &x, (n, ci, h, w), geo, Some(&b), None, &mut out).unwrap();
                let e = rel_l2(&out, &want);
                assert!(e < 2e-6, "{family} {prep:?} {c:?}: rel {e}");
                conv_prepared(prep, &pw, &x, (n, ci, h, w), geo, Some(&b), Some(&r), &mut out).unwrap();
                let e = rel_l2(&out, &want_r);
                assert!(e < 2e-6, "{family} {prep:?} residual {c:?}: rel {e}");
            }
        }
    }
}

#[test]
fn downsample_halves_even_sizes() {
    let c = Case {
        n: 1,
        ci: 2,
        co: 2,
        h: 8,
        w: 6,
        kh: 3,
        kw: 3,
        s: 2,
        pad: [0, 1, 0, 1],
    };
    assert_eq!(c.out_hw(), (4, 3));
    let (x, wt) = (rand_vec(2 * 8 * 6, 7), rand_vec(2 * 2 * 9, 8));
    let mut out = vec![0.0; 2 * 4 * 3];
    conv2d(&x, 1, 2, 8, 6, &wt, None, 2, 3, 3, 2, [0, 1, 0, 1], &mut out);
    assert!(rel_l2(&out, &c.naive(&x, &wt, None)) < 1e-6);
}

/// Winograd for the 3x3 convs and upsamples whose transformed weight fits the cap, direct for the rest (and
/// for `conv_out`'s 3 output channels), with either family's layouts (`prepare` only moves data, so both
/// families' choices are checked on any CPU).
#[test]
fn prepare_picks_winograd_where_it_fits() {
    if std::env::var_os("LLAMAGEN_NO_WINOGRAD").is_some() {
        return;
    }
    let prep =
        |family, layout, co: usize, ci: usize| prepare(layout, &[co, ci, 3, 3], vec![0.5; co * ci * 9], family).0;
    let (avx2, avx512) = (KernelFamily::Avx2, KernelFamily::Avx512);
    assert_eq!(prep(avx2, Layout::Winograd, 128, 128), Prep::WinogradGemm);
    assert_eq!(prep(avx2, Layout::Winograd, 256, 256), Prep::WinogradGemm);
    assert_eq!(prep(avx2, Layout::Winograd, 512, 512), Prep::Torch);
    assert_eq!(prep(avx2, Layout::Winograd, 3, 128), Prep::Torch);
    assert_eq!(prep(avx2, Layout::Winograd, 128, 3), Prep::Torch);
    assert_eq!(prep(avx2, Layout::UpsamplePhases, 128, 128), Prep::UpsampleWinogradGemm);
    assert_eq!(prep(avx2, Layout::UpsamplePhases, 256, 256), Prep::UpsamplePhases);
    assert_eq!(prep(avx512, Layout::Winograd, 128, 128), Prep::Winograd);
    assert_eq!(prep(avx512, Layout::Winograd, 256, 256), Prep::Winograd);
    assert_eq!(prep(avx512, Layout::Winograd, 512, 512), Prep::Packed);
    assert_eq!(prep(avx512, Layout::Winograd, 128, 3), Prep::Packed);
    assert_eq!(prep(avx512, Layout::UpsamplePhases, 128, 128), Prep::UpsampleWinograd);
    assert_eq!(prep(avx512, Layout::UpsamplePhases, 512, 512), Prep::UpsamplePhases);
    let (p, w) = prepare(
        Layout::Winograd,
        &[16, 8, 3, 3],
        (0..16 * 8 * 9).map(|i| i as f32).collect(),
        KernelFamily::Avx2,
    );
    assert_eq!((p, w.len()), (Prep::WinogradGemm, winograd_gemm::weights_len(16, 8, 1)));
}

#[test]
fn tiling_covers_everything() {
    let cases = [
        (1, 256, 258, 128),
        (1, 16, 18, 512),
        (3, 7, 9, 33),
        (1, 1, 3, 1),
        (2, 32, 34, 256),
    ];
    for (n, oh, wq, co) in cases {
        let t = tiling(n, oh, wq, co);
        assert!(t.rows * t.row_tiles >= oh && (t.row_tiles - 1) * t.rows < oh, "{t:?}");
        assert!(
            t.co_block * t.co_blocks >= co && (t.co_blocks - 1) * t.co_block < co,
            "{t:?}"
        );
    }
}

#[test]
fn upsample_conv_matches_naive() {
    for (si, &(n, ci, co, h, w)) in SHAPES.iter().enumerate() {
        let seed = 100 + 10 * si as u64;
        let x = rand_vec(n * ci * h * w, seed);
        let (wt, b) = (rand_vec(co * ci * 9, seed + 1), rand_vec(co, seed + 2));
        let (uh, uw) = (2 * h, 2 * w);
        let up: Vec<f32> = (0..n * ci * uh * uw)
            .map(|i| x[(i / (uh * uw) * h + i / uw % uh / 2) * w + i % uw / 2])
            .collect();
        let c = Case {
            n,
            ci,
            co,
            h: uh,
            w: uw,
            kh: 3,
            kw: 3,
            s: 1,
            pad: [1; 4],
        };
        let want = c.naive(&up, &wt, Some(&b));
        let pw = upsample_phase_weights(&wt, co, ci);
        let mut out = vec![f32::NAN; want.len()];
        upsample_conv3x3(&x, n, ci, h, w, &pw, &b, co, &mut out);
        let e = rel_l2(&out, &want);
        assert!(e < 1e-6, "upsample {c:?}: rel {e}");
    }
}

/// Process CPU seconds from /proc: on the shared dev box wall time alone misleads.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let tail = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = tail.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// Prints wall-clock GFLOP/s of `f`, and what its CPU time implies for an idle machine.
fn bench_one(name: &str, flops: f64, f: &mut dyn FnMut()) {
    f();
    let (t, c) = (std::time::Instant::now(), cpu_seconds());
    let mut reps = 0;
    while reps < 3 || t.elapsed().as_secs_f64() < 1.5 {
        f();
        reps += 1;
    }
    let wall = t.elapsed().as_secs_f64() / reps as f64;
    let cpu = (cpu_seconds() - c) / reps as f64;
    let idle = flops * rayon::current_num_threads() as f64 / cpu.max(1e-9) / 1e9;
    let gf = flops / wall / 1e9;
    println!("{name}: {:.2} ms, {gf:.1} GFLOP/s wall, ~{idle:.1} if idle", wall * 1e3);
}

/// Relative L2 error vs f64 of the direct conv and of Winograd F(4,3) at the decoder's shapes, on
/// uniform [-1, 1) data and on post-swish-like data (x >= -0.28, mean > 0), for 4 output channels.
/// `cargo test --release --lib conv::tests::winograd_error -- --ignored --nocapture`
#[test]
#[ignore]
fn winograd_error() {
    for (ci, co, hw) in [
        (128, 128, 256),
        (256, 128, 128),
        (256, 256, 64),
        (512, 512, 32),
        (512, 512, 16),
    ] {
        for swishy in [false, true] {
            let mut x = rand_vec(ci * hw * hw, 11);
            if swishy {
                x.iter_mut().for_each(|v| {
                    let y = 2.0 * *v + 0.5;
                    *v = y / (1.0 + (-y).exp())
                });
            }
            // torch's default init scale: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            let s = 1.0 / ((ci * 9) as f32).sqrt();
            let w: Vec<f32> = rand_vec(co * ci * 9, 12).iter().map(|v| v * s).collect();
            let b = rand_vec(co, 13);
            let mut direct = vec![0.0; co * hw * hw];
            let pk = tap_major_weights(&w, co, ci, 3, 3);
            let cw = ConvWeights::tap_major(&pk, co, ci, 3, 3);
            conv2d_with(&x, (1, hw, hw), cw, Some(&b), 1, [1; 4], Epilogue::Set, &mut direct);
            let mut wino = vec![0.0; co * hw * hw];
            if kernel::available() {
                let u = winograd::weights(&w, co, ci);
                winograd::conv3x3(&x, (1, hw, hw), &u, co, ci, Some(&b), Epilogue::Set, &mut wino);
            }
            let mut wg = vec![0.0; co * hw * hw];
            let u = winograd_gemm::weights(&w, co, ci);
            winograd_gemm::conv3x3(&x, (1, hw, hw), &u, co, ci, Some(&b), Epilogue::Set, &mut wg);
            let sub = 4;
            let c = Case {
                n: 1,
                ci,
                co: sub,
                h: hw,
                w: hw,
                kh: 3,
                kw: 3,
                s: 1,
                pad: [1; 4],
            };
            let want = c.naive(&x, &w[..sub * ci * 9], Some(&b[..sub]));
            let n = sub * hw * hw;
            println!(
                "{ci}->{co} at {hw}x{hw} ({}): direct {:.2e}, winograd F(4,3) avx512 {}, gemm crate {:.2e}",
                if swishy { "swish-like input" } else { "uniform input" },
                rel_l2(&direct[..n], &want),
                if kernel::available() {
                    format!("{:.2e}", rel_l2(&wino[..n], &want))
                } else {
                    "n/a".into()
                },
                rel_l2(&wg[..n], &want)
            );
        }
    }
}

/// `cargo test --release --lib conv::tests::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench() {
    let filter = std::env::var("CONV_BENCH").unwrap_or_default();
    let (m, k, nn) = (512, 4608, 1024);
    let (a, b, mut d) = (rand_vec(m * k, 1), rand_vec(k * nn, 2), vec![0.0; m * nn]);
    let (a, b, par) = (mat(&a, k, 1), mat(&b, nn, 1), Parallelism::Rayon(0));
    let flops = 2.0 * (m * nn * k) as f64;
    if filter.is_empty() {
        bench_one("plain gemm 512x4608x1024", flops, &mut || {
            sgemm((m, nn, k), &mut d, nn, false, a, b, 1.0, par)
        });
    }
    let (p1, p2, p0) = ([1; 4], [0, 1, 0, 1], [0; 4]);
    for (ci, co, hw, k, s, pad, layout) in [
        (128, 128, 256, 3, 1, p1, 2),
        (128, 128, 256, 3, 1, p1, 1),
        (256, 256, 64, 3, 1, p1, 2),
        (256, 256, 64, 3, 1, p1, 1),
        (512, 512, 16, 3, 1, p1, 2),
        (512, 512, 16, 3, 1, p1, 1),
        (512, 512, 32, 3, 1, p1, 2),
        (512, 512, 32, 3, 1, p1, 1),
        (128, 128, 256, 3, 1, p1, 0),
        (3, 128, 256, 3, 1, p1, 2),
        (128, 3, 256, 3, 1, p1, 2),
        (128, 3, 256, 3, 1, p1, 1),
        (128, 128, 256, 3, 2, p2, 2),
        (256, 128, 128, 1, 1, p0, 2),
        (256, 128, 128, 1, 1, p0, 1),
    ] {
        if layout == 2 && !kernel::available() {
            continue;
        }
        let (x, w) = (rand_vec(ci * hw * hw, 1), rand_vec(co * ci * k * k, 2));
        let tm = tap_major_weights(&w, co, ci, k, k);
        let pk = packed_weights(&w, co, ci, k, k);
        let wt = match layout {
            0 => ConvWeights::torch(&w, co, ci, k, k),
            1 => ConvWeights::tap_major(&tm, co, ci, k, k),
            _ => ConvWeights::packed(&pk, co, ci, k, k),
        };
        let bias = rand_vec(co, 3);
        let o = (hw + pad[0] + pad[1] - k) / s + 1;
        let mut out = vec![0.0; co * o * o];
        let layout = ["torch layout", "tap-major gemm crate", "packed avx512"][layout];
        let name = format!("conv{k}x{k}/s{s} {ci}->{co} {hw}x{hw} ({layout})");
        if !name.contains(&filter) {
            continue;
        }
        let flops = 2.0 * (ci * co * k * k * o * o) as f64;
        bench_one(&name, flops, &mut || {
            conv2d_with(&x, (1, hw, hw), wt, Some(&bias), s, pad, Epilogue::Set, &mut out)
        });
        if k == 1 && layout == "packed avx512" {
            bench_one(&format!("{name} in place"), flops, &mut || {
                let geo = (co, k, s, pad);
                conv_prepared(Prep::Packed, &pk, &x, (1, ci, hw, hw), geo, Some(&bias), None, &mut out).unwrap()
            });
        }
    }
    for avx512 in [true, false] {
        if avx512 && !kernel::available() {
            continue;
        }
        for (ci, co, hw) in [
            (128, 128, 256),
            (256, 128, 128),
            (128, 128, 128),
            (256, 256, 64),
            (512, 512, 32),
            (512, 256, 32),
            (256, 256, 32),
            (512, 512, 16),
            (256, 512, 16),
        ] {
            let (x, w) = (rand_vec(ci * hw * hw, 1), rand_vec(co * ci * 9, 2));
            let u = if avx512 {
                winograd::weights(&w, co, ci)
            } else {
                winograd_gemm::weights(&w, co, ci)
            };
            let (bias, r) = (rand_vec(co, 3), rand_vec(co * hw * hw, 4));
            let mut out = vec![0.0; co * hw * hw];
            let kind = if avx512 { "avx512" } else { "gemm crate" };
            let name = format!("conv3x3/s1 {ci}->{co} {hw}x{hw} (winograd F(4,3) {kind}, residual; as direct flops)");
            if !name.contains(&filter) {
                continue;
            }
            let flops = 2.0 * (ci * co * 9 * hw * hw) as f64;
            let ep = Epilogue::Residual(&r);
            bench_one(&name, flops, &mut || {
                if avx512 {
                    winograd::conv3x3(&x, (1, hw, hw), &u, co, ci, Some(&bias), ep, &mut out)
                } else {
                    winograd_gemm::conv3x3(&x, (1, hw, hw), &u, co, ci, Some(&bias), ep, &mut out)
                }
            });
        }
    }
    for (c, hw) in [(128, 128), (256, 64), (256, 32), (512, 16)] {
        let (x, b) = (rand_vec(c * hw * hw, 1), rand_vec(c, 3));
        let w = rand_vec(c * c * 9, 2);
        let pw = upsample_phase_weights(&w, c, c);
        let mut out = vec![0.0; c * 4 * hw * hw];
        let name = format!("upsample+conv3x3 {c} {hw}->{} (as 3x3 conv flops)", 2 * hw);
        let flops = 2.0 * (c * c * 9 * 4 * hw * hw) as f64;
        if name.contains(&filter) {
            bench_one(&name, flops, &mut || {
                upsample_conv3x3(&x, 1, c, hw, hw, &pw, &b, c, &mut out)
            });
        }
        let avx512 = format!("{name} winograd avx512");
        if kernel::available() && avx512.contains(&filter) {
            let u = winograd::upsample_weights(&w, c, c);
            bench_one(&avx512, flops, &mut || {
                winograd::upsample_conv3x3(&x, (1, hw, hw), &u, c, c, &b, &mut out)
            });
        }
        let gemm = format!("{name} winograd gemm crate");
        if gemm.contains(&filter) {
            let u = winograd_gemm::upsample_weights(&w, c, c);
            bench_one(&gemm, flops, &mut || {
                winograd_gemm::upsample_conv3x3(&x, (1, hw, hw), &u, c, c, &b, &mut out)
            });
        }
    }
}
