//! The `conv` kernels (kernels/conv.cu) on the CUDA emulator against the CPU backend: conv2d_f32 against
//! `cpu::conv::conv2d` / `conv2d_add`, upsample_conv_f32 against `cpu::conv::upsample_conv3x3` (and against a
//! conv of the explicitly upsampled image);
//! the three schedules on one case each; and the launchers' shape errors.

use llamagen::backend::cpu;
use llamagen::backend::cuda::conv::{self, Tile};
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::backend::cuda::launch::DevPtr;

use crate::support::devices::*;
use crate::support::emu_check::*;

/// Every case runs both SIMT kernel variants (bit-identical to each other) and the three tensor-core ones.
pub(crate) const TILES: [Tile; 5] = [Tile::T64, Tile::T128, Tile::Tf32x3, Tile::Tf32, Tile::Bf16];

/// NMSE bound of a tile's output against its CPU reference. The SIMT tiles: [`F32_NMSE`]. 3xTF32 splits each
/// operand into two TF32 halves and drops only small·small (2^-22 relative per product) besides f32 summation
/// order: the same bound holds (measured worst 7.1e-14 on the emulator, whose mma sums in f64). TF32 rounds each
/// operand to 10 mantissa bits (relative error ≤ 2^-11): measured worst NMSE 3.5e-7 on these cases; the bound 2e-6
/// is ~6× that and ~1000× below one wrong tap (1/K ≈ 2e-3). bf16 is checked against the CPU conv of the
/// bf16-rounded input and weights ([`reference_operands`]): bf16 × bf16 products are exact in f32, so only the
/// summation order differs and the f32 bound holds.
pub(crate) fn bound(tile: Tile) -> f64 {
    match tile {
        Tile::Tf32 => TF32_NMSE,
        _ => F32_NMSE,
    }
}

/// The operands a tile's CPU reference multiplies: the bf16 tile rounds x and the weights to bf16 (nearest even)
/// before its exact products; the others take them as they are.
fn reference_operands(tile: Tile, v: &[f32]) -> Vec<f32> {
    match tile {
        Tile::Bf16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}
const TF32_NMSE: f64 = 2e-6;

/// x, the weight, the bias and the residual of a conv case.
pub(crate) type ConvOperands<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>, Option<&'a [f32]>);

/// The CPU conv2d (+ residual) of `tile`'s reference operands: what the tile's output is held to.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_reference(
    tile: Tile,
    (x, wt, bias, residual): ConvOperands<'_>,
    (n, c_in, h, w): (usize, usize, usize, usize),
    (c_out, kh, kw): (usize, usize, usize),
    stride: usize,
    pad: [usize; 4],
    out_len: usize,
) -> Vec<f32> {
    let (x, wt) = (reference_operands(tile, x), reference_operands(tile, wt));
    let mut want = vec![0f32; out_len];
    match residual {
        Some(r) => cpu::conv::conv2d_add(&x, n, c_in, h, w, &wt, bias, c_out, kh, kw, stride, pad, r, &mut want),
        None => cpu::conv::conv2d(&x, n, c_in, h, w, &wt, bias, c_out, kh, kw, stride, pad, &mut want),
    }
    want
}

/// The CPU upsample conv of `tile`'s reference operands (bf16 rounds the folded phase weights the kernel
/// multiplies, and x).
fn upsample_reference(
    tile: Tile,
    x: &[f32],
    phases: &[f32],
    b: &[f32],
    (n, c_in, h, w): (usize, usize, usize, usize),
    c_out: usize,
) -> Vec<f32> {
    let mut want = vec![0f32; n * c_out * 4 * h * w];
    let (x, phases) = (reference_operands(tile, x), reference_operands(tile, phases));
    cpu::conv::upsample_conv3x3(&x, n, c_in, h, w, &phases, b, c_out, &mut want);
    want
}

/// A halo launch's output: within the tile's bound of its reference, and bit-identical to the gathers'.
fn check_halo(what: &str, tile: Tile, halo: &[f32], gather: &[f32], want: &[f32]) {
    let (e, max) = nmse(halo, want, what);
    assert!(e <= bound(tile), "{what}: NMSE {e:.3e} (max abs err {max:.3e})");
    let same = gather
        .iter()
        .zip(halo)
        .filter(|(a, b)| a.to_bits() == b.to_bits())
        .count();
    assert_eq!(same, halo.len(), "{what}: halo differs from the gathers");
}

/// NMSE bound for every f32 case. Each output is a sum of K = c_in·kh·kw ≤ 48·9 products, accumulated in f32 by
/// both sides but in different orders (the kernel: k = (ci, ky, kx) ascending, one fmaf each; the CPU: a blocked
/// GEMM per tap, taps summed in turn; the transposed-conv reference in f64). The rounding differences are ~√K·u
/// relative per output (u = 2^-24), NMSE ~K·u² ≈ 1e-12; 1e-10 leaves a 100× margin, while a single wrong or
/// missing term (one tap of K) gives NMSE ≳ 1/K ≈ 2e-3.
const F32_NMSE: f64 = 1e-10;

fn rand_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-scale, scale)).collect()
}

#[derive(Clone, Copy, Debug)]
struct ConvCase {
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: [usize; 4],
    residual: bool,
    bias: bool,
}

fn conv_case<D: TestDevice>(dev: &D, rng: &mut Rng, c: ConvCase) -> f64 {
    let ConvCase {
        n,
        c_in,
        c_out,
        h,
        w,
        kh,
        kw,
        stride,
        pad,
        residual,
        bias,
    } = c;
    let (oh, ow) = conv::conv2d_out_size(h, w, kh, kw, stride, pad).unwrap();
    let x = rand_vec(rng, n * c_in * h * w, 2.0);
    let wt = rand_vec(rng, c_out * c_in * kh * kw, 1.0);
    let b = rand_vec(rng, c_out, 0.5);
    let out_len = n * c_out * oh * ow;
    let r = rand_vec(rng, out_len, 1.0);
    let ops = (&x[..], &wt[..], bias.then_some(&b[..]), residual.then_some(&r[..]));
    let reference = |tile| conv_reference(tile, ops, (n, c_in, h, w), (c_out, kh, kw), stride, pad, out_len);
    let (want_f32, want_bf16) = (reference(Tile::T64), reference(Tile::Bf16));
    let (xb, wb, bb, rb) = (
        dev.upload(&x, "x"),
        dev.upload(&wt, "w"),
        dev.upload(&b, "bias"),
        dev.upload(&r, "residual"),
    );
    let mut worst = 0f64;
    let mut first: Option<Vec<f32>> = None;
    for tile in TILES {
        let mut ob = dev.alloc::<f32>(out_len, "out");
        conv::conv2d(
            dev,
            xb.ptr(),
            wb.ptr(),
            bias.then(|| bb.ptr()),
            residual.then(|| rb.ptr()),
            ob.ptr_mut(),
            (n, c_in, h, w),
            (c_out, kh, kw),
            stride,
            pad,
            Some(tile),
        )
        .unwrap();
        let want = if tile == Tile::Bf16 { &want_bf16 } else { &want_f32 };
        let (e, max) = nmse(&ob.to_vec(), want, &format!("{c:?} {tile:?}"));
        let b = bound(tile);
        assert!(
            e <= b,
            "conv2d {c:?} {tile:?}: NMSE {e:.3e} > {b:.0e} (max abs err {max:.3e})"
        );
        // both SIMT tiles sum each output over k in the same order with one fmaf per term: bit-identical
        match &first {
            None => first = Some(ob.to_vec()),
            Some(f) if tile == Tile::T128 => assert!(
                f.iter().zip(&ob.to_vec()).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{c:?}: T64 != T128"
            ),
            Some(_) => {}
        }
        worst = worst.max(e);
    }
    worst
}

#[test]
fn conv2d_matches_cpu() {
    conv2d_matches_cpu_on(&EmuDevice::new());
}

fn conv2d_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(7);
    const CH: [usize; 4] = [3, 8, 17, 32];
    const SPATIAL: [(usize, usize); 4] = [(1, 1), (5, 7), (8, 8), (9, 6)];
    const PADS: [[usize; 4]; 3] = [[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]];
    let (mut worst, mut cases, mut pair) = (0f64, 0usize, 0usize);
    for &(h, w) in &SPATIAL {
        for k in [1, 3] {
            for stride in [1, 2] {
                for pad in PADS {
                    if conv::conv2d_out_size(h, w, k, k, stride, pad).is_none() {
                        continue; // the CPU reference (and torch) reject a kernel larger than the padded input
                    }
                    // two channel pairs per geometry, cycling through all 16 of CH × CH
                    for _ in 0..2 {
                        let c = ConvCase {
                            n: 1 + pair % 2,
                            c_in: CH[pair % 4],
                            c_out: CH[(pair / 4) % 4],
                            h,
                            w,
                            kh: k,
                            kw: k,
                            stride,
                            pad,
                            residual: (pair / 3) % 2 == 1,
                            bias: pair % 5 != 4,
                        };
                        pair += 1;
                        let dev = &dev.with_sched(SCHEDS[cases % 3]);
                        worst = worst.max(conv_case(dev, &mut rng, c));
                        cases += 1;
                    }
                }
            }
        }
    }
    // The runtime-size gather (kernels other than 1x1 and 3x3), two output-channel tiles, several K steps.
    for c in [
        ConvCase {
            n: 2,
            c_in: 5,
            c_out: 8,
            h: 6,
            w: 7,
            kh: 2,
            kw: 3,
            stride: 1,
            pad: [1, 0, 1, 1],
            residual: false,
            bias: true,
        },
        ConvCase {
            n: 1,
            c_in: 4,
            c_out: 3,
            h: 9,
            w: 6,
            kh: 3,
            kw: 1,
            stride: 2,
            pad: [0, 1, 2, 0],
            residual: true,
            bias: true,
        },
        ConvCase {
            n: 1,
            c_in: 48,
            c_out: 70,
            h: 12,
            w: 11,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: [1; 4],
            residual: true,
            bias: true,
        },
        ConvCase {
            n: 2,
            c_in: 40,
            c_out: 66,
            h: 9,
            w: 10,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: [0; 4],
            residual: false,
            bias: true,
        },
        // several 128 x 128 tiles in both dimensions, stride 2
        ConvCase {
            n: 2,
            c_in: 24,
            c_out: 140,
            h: 23,
            w: 22,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: [0, 1, 0, 1],
            residual: true,
            bias: true,
        },
    ] {
        worst = worst.max(conv_case(dev, &mut rng, c));
        cases += 1;
    }
    println!("conv2d_f32: {cases} cases, worst NMSE {worst:.3e}");
}

/// The encoder's Downsample exactly: 3x3 stride 2 with pad (0, 1, 0, 1), under the three schedules.
#[test]
fn conv2d_all_schedules() {
    conv2d_all_schedules_on(&EmuDevice::new());
}

fn conv2d_all_schedules_on<D: TestDevice>(dev: &D) {
    for s in SCHEDS {
        let mut rng = Rng(11);
        let c = ConvCase {
            n: 2,
            c_in: 17,
            c_out: 32,
            h: 8,
            w: 8,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: [0, 1, 0, 1],
            residual: true,
            bias: true,
        };
        let e = conv_case(&dev.with_sched(s), &mut rng, c);
        println!("conv2d_f32 {s:?}: NMSE {e:.3e}");
    }
}

/// out may be the residual buffer itself (the kernel reads each residual element in the thread that writes it).
#[test]
fn conv2d_residual_in_place() {
    conv2d_residual_in_place_on(&EmuDevice::new());
}

fn conv2d_residual_in_place_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(5);
    let (n, c_in, c_out, h, w) = (1, 8, 8, 5, 7);
    let x = rand_vec(&mut rng, n * c_in * h * w, 1.0);
    let wt = rand_vec(&mut rng, c_out * c_in * 9, 1.0);
    let b = rand_vec(&mut rng, c_out, 1.0);
    let r = rand_vec(&mut rng, n * c_out * h * w, 1.0);
    let mut want = vec![0f32; r.len()];
    cpu::conv::conv2d_add(&x, n, c_in, h, w, &wt, Some(&b), c_out, 3, 3, 1, [1; 4], &r, &mut want);
    let (xb, wb, bb) = (dev.upload(&x, "x"), dev.upload(&wt, "w"), dev.upload(&b, "b"));
    let mut io = dev.upload(&r, "residual/out");
    // SAFETY: the same live buffer seen twice; conv2d_f32's residual and out parameters are not __restrict__.
    let res = unsafe { DevPtr::<f32>::from_raw(io.addr(), io.len()) };
    let shape = (n, c_in, h, w);
    conv::conv2d(
        dev,
        xb.ptr(),
        wb.ptr(),
        Some(bb.ptr()),
        Some(res),
        io.ptr_mut(),
        shape,
        (c_out, 3, 3),
        1,
        [1; 4],
        None,
    )
    .unwrap();
    let (e, _) = nmse(&io.to_vec(), &want, "in place");
    assert!(e <= F32_NMSE, "in-place residual: NMSE {e:.3e}");
}

/// Nearest ×2 of (n, c, h, w).
fn upsample2(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut u = vec![0f32; n * c * 4 * h * w];
    for (i, v) in u.iter_mut().enumerate() {
        let (xx, y, pl) = (i % (2 * w), (i / (2 * w)) % (2 * h), i / (4 * h * w));
        *v = x[(pl * h + y / 2) * w + xx / 2];
    }
    u
}

fn upsample_case<D: TestDevice>(
    dev: &D,
    rng: &mut Rng,
    (n, c_in, c_out, h, w): (usize, usize, usize, usize, usize),
    bias: bool,
) -> f64 {
    let x = rand_vec(rng, n * c_in * h * w, 2.0);
    let wt = rand_vec(rng, c_out * c_in * 9, 1.0);
    let b = if bias {
        rand_vec(rng, c_out, 0.5)
    } else {
        vec![0.0; c_out]
    };
    let out_len = n * c_out * 4 * h * w;
    let phases = cpu::conv::upsample_phase_weights(&wt, c_out, c_in);
    let reference = |tile| upsample_reference(tile, &x, &phases, &b, (n, c_in, h, w), c_out);
    let (want_f32, want_bf16) = (reference(Tile::T64), reference(Tile::Bf16));
    // ... and the definition: a 3x3 pad-1 conv of the upsampled image (the fold rounds differently: same bound)
    let mut direct = vec![0f32; out_len];
    let u = upsample2(&x, n, c_in, h, w);
    cpu::conv::conv2d(
        &u,
        n,
        c_in,
        2 * h,
        2 * w,
        &wt,
        Some(&b),
        c_out,
        3,
        3,
        1,
        [1; 4],
        &mut direct,
    );

    let folded = conv::upsample_fold_weights(&wt, c_out, c_in);
    let (xb, wb, bb) = (
        dev.upload(&x, "x"),
        dev.upload(&folded, "folded"),
        dev.upload(&b, "bias"),
    );
    let mut worst = 0f64;
    for tile in TILES {
        let mut ob = dev.alloc::<f32>(out_len, "out");
        let shape = (n, c_in, h, w);
        conv::upsample_conv(
            dev,
            xb.ptr(),
            wb.ptr(),
            bias.then(|| bb.ptr()),
            ob.ptr_mut(),
            shape,
            c_out,
            Some(tile),
        )
        .unwrap();
        let what = format!("upsample_conv n={n} {c_in}->{c_out} {h}x{w} bias={bias} {tile:?}");
        let want = if tile == Tile::Bf16 { &want_bf16 } else { &want_f32 };
        let (e, max) = nmse(&ob.to_vec(), want, &what);
        let b = bound(tile);
        assert!(e <= b, "{what}: NMSE {e:.3e} (max abs err {max:.3e})");
        if tile == Tile::Bf16 {
            worst = worst.max(e);
            continue; // the definition's 3x3 weights round differently from their folded sums
        }
        let (e2, max2) = nmse(&ob.to_vec(), &direct, &what);
        assert!(
            e2 <= b,
            "{what} vs upsample-then-conv: NMSE {e2:.3e} (max abs err {max2:.3e})"
        );
        worst = worst.max(e).max(e2);
    }
    worst
}

#[test]
fn upsample_conv_matches_cpu() {
    upsample_conv_matches_cpu_on(&EmuDevice::new());
}

fn upsample_conv_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(3);
    let mut worst = 0f64;
    let mut cases = 0;
    for (h, w) in [(4, 4), (5, 3), (1, 1)] {
        for (n, c_in, c_out) in [(1, 3, 8), (2, 17, 3), (1, 32, 17), (2, 8, 32)] {
            let dev = &dev.with_sched(SCHEDS[cases % 3]);
            worst = worst.max(upsample_case(dev, &mut rng, (n, c_in, c_out, h, w), cases % 4 != 3));
            cases += 1;
        }
    }
    // two channel tiles and more than one pixel tile per phase
    worst = worst.max(upsample_case(dev, &mut rng, (2, 24, 70, 6, 7), true));
    worst = worst.max(upsample_case(dev, &mut rng, (2, 16, 130, 9, 8), true));
    println!("upsample_conv_f32: {} cases, worst NMSE {worst:.3e}", cases + 2);
}

#[test]
fn upsample_conv_all_schedules() {
    upsample_conv_all_schedules_on(&EmuDevice::new());
}

fn upsample_conv_all_schedules_on<D: TestDevice>(dev: &D) {
    for s in SCHEDS {
        let mut rng = Rng(13);
        let e = upsample_case(&dev.with_sched(s), &mut rng, (2, 17, 8, 5, 3), true);
        println!("upsample_conv_f32 {s:?}: NMSE {e:.3e}");
    }
}

#[test]
fn launchers_reject_bad_shapes() {
    let dev = EmuDevice::new();
    let x = dev.upload(&[0.5f32; 2 * 3 * 5 * 7], "x"); // (2, 3, 5, 7)
    let w = dev.upload(&[0.5f32; 8 * 3 * 9], "w"); // (8, 3, 3, 3)
    let b = dev.upload(&[0.0f32; 8], "b");
    let mut out = dev.alloc::<f32>(2 * 8 * 5 * 7, "out");
    let err = |r: llamagen::Result<()>| r.unwrap_err().to_string();
    let x5 = (2, 3, 5, 7);

    // sanity: the good call works
    conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        Some(b.ptr()),
        None,
        out.ptr_mut(),
        x5,
        (8, 3, 3),
        1,
        [1; 4],
        None,
    )
    .unwrap();

    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        None,
        out.ptr_mut(),
        (0, 3, 5, 7),
        (8, 3, 3),
        1,
        [1; 4],
        None,
    ));
    assert!(e.contains("empty shape: n = 0"), "{e}");
    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        None,
        out.ptr_mut(),
        x5,
        (8, 3, 3),
        0,
        [1; 4],
        None,
    ));
    assert!(e.contains("stride = 0"), "{e}");
    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        None,
        out.ptr_mut(),
        (2, 3, 1, 1),
        (8, 3, 3),
        1,
        [0; 4],
        None,
    ));
    assert!(e.contains("kernel exceeds"), "{e}");
    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        None,
        out.ptr_mut(),
        (2, 4, 5, 7),
        (8, 3, 3),
        1,
        [1; 4],
        None,
    ));
    assert!(e.contains("x has 210 elements, needs 280"), "{e}");
    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        None,
        out.ptr_mut(),
        x5,
        (9, 3, 3),
        1,
        [1; 4],
        None,
    ));
    assert!(e.contains("weight has 216 elements, needs 243"), "{e}");
    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        None,
        out.ptr_mut(),
        x5,
        (8, 3, 3),
        1,
        [2; 4],
        None,
    ));
    assert!(e.contains("out has 560 elements, needs 1008"), "{e}");
    let short = dev.upload(&[0.0f32; 7], "short");
    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        Some(short.ptr()),
        None,
        out.ptr_mut(),
        x5,
        (8, 3, 3),
        1,
        [1; 4],
        None,
    ));
    assert!(e.contains("bias has 7 elements, needs 8"), "{e}");
    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        Some(short.ptr()),
        out.ptr_mut(),
        x5,
        (8, 3, 3),
        1,
        [1; 4],
        None,
    ));
    assert!(e.contains("residual has 7 elements, needs 560"), "{e}");
    let e = err(conv::conv2d(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        None,
        out.ptr_mut(),
        (1, 1, 1 << 16, 1 << 16),
        (1, 1, 1),
        1,
        [0; 4],
        None,
    ));
    assert!(e.contains("x has"), "{e}");

    // upsample_conv: folded weights are 16·c_out·c_in
    let e = err(conv::upsample_conv(
        &dev,
        x.ptr(),
        w.ptr(),
        None,
        out.ptr_mut(),
        (1, 3, 2, 2),
        8,
        None,
    ));
    assert!(e.contains("folded weight has 216 elements, needs 384"), "{e}");
    let fw = dev.upload(&[0.0f32; 16 * 8 * 3], "fw");
    let e = err(conv::upsample_conv(
        &dev,
        x.ptr(),
        fw.ptr(),
        None,
        out.ptr_mut(),
        (2, 3, 5, 7),
        8,
        None,
    ));
    assert!(e.contains("out has 560 elements, needs 2240"), "{e}");
    let e = err(conv::upsample_conv(
        &dev,
        x.ptr(),
        fw.ptr(),
        None,
        out.ptr_mut(),
        (1, 3, 0, 2),
        8,
        None,
    ));
    assert!(e.contains("empty shape: h = 0"), "{e}");
    let e = err(conv::upsample_conv(
        &dev,
        x.ptr(),
        fw.ptr(),
        Some(short.ptr()),
        out.ptr_mut(),
        (1, 3, 2, 2),
        8,
        None,
    ));
    assert!(e.contains("bias has 7 elements"), "{e}");
    conv::upsample_conv(
        &dev,
        x.ptr(),
        fw.ptr(),
        Some(b.ptr()),
        out.ptr_mut(),
        (1, 3, 2, 2),
        8,
        None,
    )
    .unwrap();

    for buf in [&x, &w, &b, &out, &short, &fw] {
        buf.check_canaries().unwrap();
    }
}

/// The halo path (input rows staged once per 16 channels) against the gathers: the same terms in the same order,
/// so every tile's output is bit-identical between the two loaders, and within the f32 / TF32 bound of the CPU.
/// Shapes: whole-row tiles of 8, 16, 32 and 64 columns, 32-column pieces of 96- and 128-wide rows, bands of rows that
/// run past the last image (n·h not a multiple of 128 / w) and bands that hold the boundary between two images
/// (h = 3 and 5 under bands of 4 and 16 rows), residual and bias on and off; upsample_conv's paired phases
/// (every tile: the SIMT tiles' lane-pair exchange, the tensor cores' interleaved epilogue) at the same widths,
/// with channel counts that leave a block's phase pair partly empty (70 = 2·32 + 6, 24 < 32).
#[test]
fn halo_matches_gather() {
    halo_matches_gather_on(&EmuDevice::new());
}

fn halo_matches_gather_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(17);
    let mut cases = 0;
    for (n, c_in, c_out, h, w, residual) in [
        (3, 16, 24, 3, 8, true),
        (2, 32, 8, 8, 16, false),
        (3, 16, 40, 5, 32, true),
        (1, 16, 12, 3, 64, false),
        (2, 16, 130, 2, 96, true),
        (1, 16, 20, 2, 128, true),
    ] {
        let dev = &dev.with_sched(SCHEDS[cases % 3]);
        let rw = conv::halo_width(c_in, w).expect("a halo shape");
        let x = rand_vec(&mut rng, n * c_in * h * w, 2.0);
        let wt = rand_vec(&mut rng, c_out * c_in * 9, 1.0);
        let b = rand_vec(&mut rng, c_out, 0.5);
        let r = rand_vec(&mut rng, n * c_out * h * w, 1.0);
        let len = r.len();
        let ops = (&x[..], &wt[..], Some(&b[..]), residual.then_some(&r[..]));
        let reference = |tile| conv_reference(tile, ops, (n, c_in, h, w), (c_out, 3, 3), 1, [1; 4], len);
        let (want_f32, want_bf16) = (reference(Tile::T64), reference(Tile::Bf16));
        let (xb, wb, bb, rb) = (
            dev.upload(&x, "x"),
            dev.upload(&wt, "w"),
            dev.upload(&b, "b"),
            dev.upload(&r, "r"),
        );
        for tile in TILES {
            let run = |loader| {
                let mut ob = dev.alloc::<f32>(len, "out");
                conv::conv2d_with(
                    dev,
                    xb.ptr(),
                    wb.ptr(),
                    Some(bb.ptr()),
                    residual.then(|| rb.ptr()),
                    ob.ptr_mut(),
                    (n, c_in, h, w),
                    (c_out, 3, 3),
                    1,
                    [1; 4],
                    Some(tile),
                    Some(loader),
                    None,
                )
                .unwrap();
                ob.to_vec()
            };
            let (gather, halo) = (run(conv::Loader::Gather), run(conv::Loader::Halo { rw }));
            let what = format!("conv2d n={n} {c_in}->{c_out} {h}x{w} {tile:?} halo {rw}");
            let want = if tile == Tile::Bf16 { &want_bf16 } else { &want_f32 };
            check_halo(&what, tile, &halo, &gather, want);
        }
        cases += 1;
    }
    for (n, c_in, c_out, h, w) in [
        (3, 16, 70, 3, 8),
        (2, 32, 8, 4, 16),
        (1, 16, 24, 3, 64),
        (1, 16, 8, 2, 96),
    ] {
        let dev = &dev.with_sched(SCHEDS[cases % 3]);
        let rw = conv::halo_width(c_in, w).expect("a halo shape");
        let x = rand_vec(&mut rng, n * c_in * h * w, 2.0);
        let wt = rand_vec(&mut rng, c_out * c_in * 9, 1.0);
        let b = rand_vec(&mut rng, c_out, 0.5);
        let len = n * c_out * 4 * h * w;
        let phases = cpu::conv::upsample_phase_weights(&wt, c_out, c_in);
        let reference = |tile| upsample_reference(tile, &x, &phases, &b, (n, c_in, h, w), c_out);
        let (want_f32, want_bf16) = (reference(Tile::T64), reference(Tile::Bf16));
        let folded = conv::upsample_fold_weights(&wt, c_out, c_in);
        let (xb, wb, bb) = (dev.upload(&x, "x"), dev.upload(&folded, "folded"), dev.upload(&b, "b"));
        for tile in TILES {
            let run = |loader| {
                let mut ob = dev.alloc::<f32>(len, "out");
                let shape = (n, c_in, h, w);
                conv::upsample_conv_with(
                    dev,
                    xb.ptr(),
                    wb.ptr(),
                    Some(bb.ptr()),
                    ob.ptr_mut(),
                    shape,
                    c_out,
                    Some(tile),
                    Some(loader),
                )
                .unwrap();
                ob.to_vec()
            };
            let (gather, halo) = (run(conv::Loader::Gather), run(conv::Loader::Halo { rw }));
            let what = format!("upsample_conv n={n} {c_in}->{c_out} {h}x{w} {tile:?} halo {rw}");
            let want = if tile == Tile::Bf16 { &want_bf16 } else { &want_f32 };
            check_halo(&what, tile, &halo, &gather, want);
        }
        cases += 1;
    }
    println!("halo: {cases} shapes, every tile bit-identical to its gathers");
}

/// The halo applies only where its tiles do: forcing it elsewhere is an error naming the shape.
#[test]
fn halo_refused_where_it_does_not_apply() {
    let dev = EmuDevice::new();
    let x = dev.upload(&[0.5f32; 16 * 6 * 12], "x");
    let w = dev.upload(&[0.5f32; 8 * 16 * 9], "w");
    let mut out = dev.alloc::<f32>(8 * 6 * 12, "out");
    for (hw, stride, pad) in [((6, 12), 1, [1; 4]), ((6, 8), 2, [1; 4]), ((6, 8), 1, [0, 1, 0, 1])] {
        let e = conv::conv2d_with(
            &dev,
            x.ptr(),
            w.ptr(),
            None,
            None,
            out.ptr_mut(),
            (1, 16, hw.0, hw.1),
            (8, 3, 3),
            stride,
            pad,
            Some(Tile::T64),
            Some(conv::Loader::Halo { rw: 8 }),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("halo tiles of 8 columns do not apply"), "{e}");
    }
    assert_eq!(conv::halo_width(16, 12), None);
    assert_eq!(conv::halo_width(24, 16), None);
    assert_eq!(conv::halo_width(16, 64), Some(64));
    assert_eq!(conv::halo_width(16, 128), Some(32));
    assert_eq!(conv::halo_width(16, 256), Some(32));
    let fw = dev.upload(&[0.5f32; 16 * 8 * 16], "folded");
    let mut up = dev.alloc::<f32>(8 * 4 * 6 * 12, "up");
    for tile in [Tile::T64, Tile::T128, Tile::Tf32] {
        let e = conv::upsample_conv_with(
            &dev,
            x.ptr(),
            fw.ptr(),
            None,
            up.ptr_mut(),
            (1, 16, 6, 12),
            8,
            Some(tile),
            Some(conv::Loader::Halo { rw: 8 }),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("do not apply"), "{tile:?}: {e}");
    }
}

#[test]
fn tile_choice() {
    // VQ-16 decoder at 256x256 (128 ch) and the encoder's first stage: the big tile; 16x16 stages, conv_out and the
    // test shapes: the small one
    assert_eq!(Tile::pick(256 * 256, 128), Tile::T128);
    assert_eq!(Tile::pick(128 * 128, 256), Tile::T128);
    assert_eq!(Tile::pick(16 * 16, 512), Tile::T64);
    assert_eq!(Tile::pick(256 * 256, 3), Tile::T64);
    assert_eq!(Tile::pick(2 * 8 * 8, 32), Tile::T64);
    assert_eq!(Tile::T64.shared_bytes(), 8448);
    assert_eq!(Tile::T128.shared_bytes(), 8320);
}

/// The cases above on the GPU (scripts/gpu-check.sh); fails without one.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_conv_matches_cpu() {
    let g = GpuTest::new();
    conv2d_matches_cpu_on(&g);
    conv2d_all_schedules_on(&g);
    conv2d_residual_in_place_on(&g);
    upsample_conv_matches_cpu_on(&g);
    upsample_conv_all_schedules_on(&g);
    halo_matches_gather_on(&g);
}
