//! `winograd` and `winograd_gemm` against naive f64 convolutions; the transforms' speed (ignored).
use super::*;
use crate::backend::cpu::testutil::{rand_vec, rel_l2};

/// f64 3x3 pad-1 conv.
fn naive(x: &[f32], (n, ci, h, w): (usize, usize, usize, usize), wt: &[f32], co: usize, bias: &[f32]) -> Vec<f64> {
    let mut out = vec![0f64; n * co * h * w];
    for b in 0..n {
        for o in 0..co {
            for y in 0..h {
                for xx in 0..w {
                    let mut acc = bias[o] as f64;
                    for i in 0..ci {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                acc += x[((b * ci + i) * h + iy as usize) * w + ix as usize] as f64
                                    * wt[((o * ci + i) * 3 + ky) * 3 + kx] as f64;
                            }
                        }
                    }
                    out[((b * co + o) * h + y) * w + xx] = acc;
                }
            }
        }
    }
    out
}

type Weights = fn(&[f32], usize, usize) -> Vec<f32>;
type Conv = fn(&[f32], (usize, usize, usize), &[f32], usize, usize, Option<&[f32]>, Epilogue, &mut [f32]);
type Upsample = fn(&[f32], (usize, usize, usize), &[f32], usize, usize, &[f32], &mut [f32]);

/// `weights` + `conv` against the f64 conv, with every epilogue.
fn check_conv(name: &str, weights: Weights, conv: Conv) {
    // (n, c_in, c_out, h, w): rows that fill vectors (w = 64, 128) and ragged ones
    for (si, &(n, ci, co, h, w)) in [
        (1, 1, 1, 1, 1),
        (1, 3, 5, 7, 9),
        (2, 16, 24, 8, 64),
        (1, 8, 9, 13, 64),
        (1, 5, 17, 9, 130),
        (2, 32, 40, 12, 12),
        (1, 24, 8, 5, 128),
        (1, 64, 48, 3, 6),
        // 25 rows of 3 tiles: two blocks, the last one partial
        (1, 8, 16, 100, 12),
    ]
    .iter()
    .enumerate()
    {
        let seed = 7 * si as u64;
        let x = rand_vec(n * ci * h * w, seed);
        let (wt, b) = (rand_vec(co * ci * 9, seed + 1), rand_vec(co, seed + 2));
        let want = naive(&x, (n, ci, h, w), &wt, co, &b);
        let u = weights(&wt, co, ci);
        let mut out = vec![f32::NAN; want.len()];
        conv(&x, (n, h, w), &u, co, ci, Some(&b), Epilogue::Set, &mut out);
        let e = rel_l2(&out, &want);
        assert!(e < 2e-6, "{name} {n}x{ci}->{co} {h}x{w}: rel {e}");
        let r = rand_vec(out.len(), seed + 3);
        let want_r: Vec<f64> = want.iter().zip(&r).map(|(&a, &b)| a + b as f64).collect();
        conv(&x, (n, h, w), &u, co, ci, Some(&b), Epilogue::Residual(&r), &mut out);
        assert!(rel_l2(&out, &want_r) < 2e-6, "{name} residual {n}x{ci}->{co} {h}x{w}");
        let mut acc = r.clone();
        conv(&x, (n, h, w), &u, co, ci, Some(&b), Epilogue::Accumulate, &mut acc);
        assert!(rel_l2(&acc, &want_r) < 2e-6, "{name} accumulate {n}x{ci}->{co} {h}x{w}");
    }
}

/// `weights` + `upsample` against nearest x2 then the f64 conv.
fn check_upsample(name: &str, weights: Weights, upsample: Upsample) {
    for (si, &(n, c, h, w)) in [
        (1, 1, 1, 1),
        (1, 5, 3, 5),
        (2, 16, 4, 32),
        (1, 9, 6, 7),
        (2, 8, 5, 64),
        (1, 3, 3, 130),
        // two blocks of tile rows (the last partial), and output channels split over tasks
        (1, 16, 100, 12),
        (1, 48, 10, 6),
    ]
    .iter()
    .enumerate()
    {
        let seed = 50 + 7 * si as u64;
        let x = rand_vec(n * c * h * w, seed);
        let (wt, b) = (rand_vec(c * c * 9, seed + 1), rand_vec(c, seed + 2));
        let (uh, uw) = (2 * h, 2 * w);
        let up: Vec<f32> = (0..n * c * uh * uw)
            .map(|i| x[(i / (uh * uw) * h + i / uw % uh / 2) * w + i % uw / 2])
            .collect();
        let want = naive(&up, (n, c, uh, uw), &wt, c, &b);
        let u = weights(&wt, c, c);
        let mut out = vec![f32::NAN; want.len()];
        upsample(&x, (n, h, w), &u, c, c, &b, &mut out);
        let e = rel_l2(&out, &want);
        assert!(e < 2e-6, "{name} upsample {n}x{c} {h}x{w}: rel {e}");
    }
}

#[test]
#[cfg_attr(not(llamagen_cpu_avx512), ignore = "this CPU lacks AVX-512F + BW")]
fn conv_matches_naive() {
    check_conv("winograd", weights, conv3x3);
}

#[test]
#[cfg_attr(not(llamagen_cpu_avx512), ignore = "this CPU lacks AVX-512F + BW")]
fn upsample_matches_naive() {
    check_upsample("winograd", upsample_weights, upsample_conv3x3);
}

#[test]
fn gemm_conv_matches_naive() {
    use super::super::winograd_gemm as wg;
    check_conv("winograd_gemm", wg::weights, wg::conv3x3);
}

#[test]
fn gemm_upsample_matches_naive() {
    use super::super::winograd_gemm as wg;
    check_upsample("winograd_gemm", wg::upsample_weights, wg::upsample_conv3x3);
}

mod bench {
    use super::*;

    /// Input and output transforms alone over a 128-channel 256x256 image, single-threaded.
    /// `cargo test --release --lib winograd::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn transforms() {
        if !kernel::available() {
            return;
        }
        let hw: usize = std::env::var("HW").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
        let (c, h, w) = (128, hw, hw);
        let x: Vec<f32> = (0..c * h * w).map(|i| (i % 97) as f32 * 0.01).collect();
        let res = x.clone();
        let mut out = vec![1f32; c * h * w];
        let g = Geom::new(h, w);
        let cols = BLOCK_GROUPS * 16;
        let mut v = vec![1f32; POS * c * cols];
        let m = vec![0.5f32; POS * c * cols];
        let pr = unsafe { perms() };
        let blocks = g.groups() / BLOCK_GROUPS;
        let reps = 256 * 256 / (h * w) * std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        let t = std::time::Instant::now();
        for b in 0..blocks * reps {
            let b = b % blocks;
            unsafe {
                input_block(
                    &x,
                    &g,
                    c,
                    (b * BLOCK_GROUPS, BLOCK_GROUPS),
                    &pr,
                    v.as_mut_ptr(),
                    c * cols,
                    cols,
                )
            };
        }
        let ti = t.elapsed().as_secs_f64();
        let mode = std::env::var("OUT_MODE").unwrap_or_default();
        let d = Dest {
            out: SendPtr(out.as_mut_ptr()),
            img: c * h * w,
            plane: h * w,
            ow: w,
            s: 1,
            bias: None,
            ep: if mode.contains("set") {
                Epilogue::Set
            } else {
                Epilogue::Residual(&res)
            },
        };
        let t = std::time::Instant::now();
        for b in 0..blocks * reps {
            let b = b % blocks;
            for r in 0..c {
                for gi in 0..BLOCK_GROUPS {
                    unsafe {
                        let y = output_tile(m[r * cols + gi * 16..].as_ptr(), c * cols);
                        write_group(y, &d, &g, 0, r, (0, 0), b * BLOCK_GROUPS + gi, &pr);
                    }
                }
            }
        }
        let to = t.elapsed().as_secs_f64();
        let units = (reps * blocks * BLOCK_GROUPS * c) as f64;
        println!(
            "input transform {:.2} ms ({:.0} ns per group-channel), output {:.2} ms ({:.0} ns)",
            ti * 1e3,
            ti / units * 1e9,
            to * 1e3,
            to / units * 1e9
        );
    }
}
