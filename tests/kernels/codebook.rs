//! kernels/codebook.cu on the CUDA emulator against `backend::cpu::codebook`: the decode lookup (`codebook_f32`,
//! with bad codes, dims up to 70: past the shared tile) and the encoder's nearest code (`quantize_f32`: codebooks
//! of 512 and 1003 codes, dim 8 and odd dims, non-square grids, exact ties, zero / huge / tiny / NaN latents), odd
//! block sizes, all schedules.

use llamagen::backend::cpu::codebook::{codebook_lookup, quantize};
use llamagen::backend::cuda::codebook as gpu;
use llamagen::backend::cuda::embed::bad_index;
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::model::vq::l2_normalize_rows;

use crate::support::devices::*;
use crate::support::emu_check::*;

// Both kernels are compared exactly: the lookup is a copy, and quantize_f32 evaluates every distance with the
// reference's operations in the reference's order (f64 norm, no FMA contraction), so its indices equal the CPU's
// even on near ties; an index mismatch fails the test.

fn normalized_codebook(rng: &mut Rng, size: usize, dim: usize) -> Vec<f32> {
    let mut cb: Vec<f32> = (0..size * dim).map(|_| rng.uniform(-1.0, 1.0)).collect();
    l2_normalize_rows(&mut cb, dim);
    cb
}

fn gpu_lookup<D: TestDevice>(
    dev: &D,
    codes: &[i32],
    cb: &[f32],
    size: usize,
    dim: usize,
    nhw: (usize, usize, usize),
    block: Option<u32>,
) -> (Vec<f32>, i32) {
    let (n, h, w) = nhw;
    let cbuf = dev.upload(codes, "codes");
    let cbb = dev.upload(cb, "codebook");
    let mut out = dev.alloc::<f32>(n * dim * h * w, "out");
    let mut err = dev.upload(&[0i32], "err");
    gpu::codebook(
        dev,
        cbuf.ptr(),
        cbb.ptr(),
        out.ptr_mut(),
        err.ptr_mut(),
        n,
        dim,
        h,
        w,
        size,
        block,
    )
    .unwrap();
    (out.to_vec(), err.to_vec()[0])
}

fn gpu_quantize<D: TestDevice>(
    dev: &D,
    z: &[f32],
    cb: &[f32],
    size: usize,
    dim: usize,
    nhw: (usize, usize, usize),
    block: Option<u32>,
) -> Vec<i32> {
    let (n, h, w) = nhw;
    let zb = dev.upload(z, "z");
    let cbb = dev.upload(cb, "codebook");
    let mut codes = dev.alloc::<i32>(n * h * w, "codes");
    gpu::quantize(dev, zb.ptr(), cbb.ptr(), codes.ptr_mut(), n, dim, h, w, size, block).unwrap();
    codes.to_vec()
}

fn cpu_quantize(z: &[f32], cb: &[f32], size: usize, dim: usize, (n, h, w): (usize, usize, usize)) -> Vec<i32> {
    let mut idx = vec![u32::MAX; n * h * w];
    let mut zq = vec![0f32; z.len()];
    quantize(z, n, dim, h, w, cb, size, &mut idx, &mut zq);
    idx.iter().map(|&i| i as i32).collect()
}

const SHAPES: [(usize, usize, usize); 5] = [(1, 1, 1), (1, 3, 5), (2, 4, 7), (1, 16, 16), (3, 2, 9)];
const BLOCKS: [Option<u32>; 5] = [None, Some(32), Some(96), Some(7), Some(1)];

#[test]
fn codebook_lookup_matches_cpu() {
    codebook_lookup_matches_cpu_on(&EmuDevice::new());
}

fn codebook_lookup_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(31);
    let mut case = 0;
    for &(size, dim) in &[(512usize, 8usize), (1003, 8), (17, 5), (3, 33), (9, 70)] {
        let cb = normalized_codebook(&mut rng, size, dim);
        for &(n, h, w) in &SHAPES {
            let codes: Vec<u32> = (0..n * h * w).map(|_| rng.below(size as u64) as u32).collect();
            let mut want = vec![f32::NAN; n * dim * h * w];
            codebook_lookup(&codes, &cb, size, dim, n, h, w, &mut want).unwrap();
            let codes: Vec<i32> = codes.iter().map(|&c| c as i32).collect();
            let block = BLOCKS[case % BLOCKS.len()];
            let (got, err) = gpu_lookup(
                &dev.with_sched(SCHEDS[case % 3]),
                &codes,
                &cb,
                size,
                dim,
                (n, h, w),
                block,
            );
            case += 1;
            let what = format!("codebook size={size} dim={dim} n={n} {h}x{w} block={block:?}");
            assert_eq!(err, 0, "{what}");
            let (e, m) = nmse(&got, &want, &what);
            assert!(e == 0.0, "{what}: NMSE {e:.3e} (max {m:.3e})");
        }
    }
}

#[test]
fn codebook_bad_codes_write_zeros_and_set_the_error_word() {
    codebook_bad_codes_write_zeros_and_set_the_error_word_on(&EmuDevice::new());
}

fn codebook_bad_codes_write_zeros_and_set_the_error_word_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(32);
    let (size, dim, n, h, w) = (512usize, 8usize, 2usize, 3usize, 5usize);
    let cb = normalized_codebook(&mut rng, size, dim);
    let hw = h * w;
    for (bad, recorded) in [
        (vec![(4usize, 512i32)], 512),
        (vec![(0, 7000), (29, -3)], -3),
        (vec![(17, i32::MIN)], i32::MIN),
    ] {
        let mut codes: Vec<i32> = (0..n * hw).map(|_| rng.below(size as u64) as i32).collect();
        for &(at, v) in &bad {
            codes[at] = v;
        }
        // The CPU refuses the call.
        let ucodes: Vec<u32> = codes.iter().map(|&c| c as u32).collect();
        assert!(codebook_lookup(&ucodes, &cb, size, dim, n, h, w, &mut vec![0.0; n * dim * hw]).is_err());
        for s in SCHEDS {
            let (got, err) = gpu_lookup(&dev.with_sched(s), &codes, &cb, size, dim, (n, h, w), Some(50));
            assert_eq!(bad_index(err), Some(recorded), "{bad:?}");
            for (pos, &code) in codes.iter().enumerate() {
                let (img, p) = (pos / hw, pos % hw);
                for c in 0..dim {
                    let v = got[(img * dim + c) * hw + p];
                    let want = if (0..size as i32).contains(&code) {
                        cb[code as usize * dim + c]
                    } else {
                        0.0
                    };
                    assert_eq!(v, want, "pos {pos} code {code} channel {c}");
                }
            }
        }
    }
}

#[test]
fn quantize_matches_cpu() {
    quantize_matches_cpu_on(&EmuDevice::new());
}

fn quantize_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(33);
    let mut case = 0;
    for &(size, dim) in &[(512usize, 8usize), (1003, 8), (17, 5), (1, 8), (40, 33)] {
        let cb = normalized_codebook(&mut rng, size, dim);
        for &(n, h, w) in &SHAPES {
            let len = n * dim * h * w;
            // Latents of several scales, including an all-zero vector and tiny / huge ones.
            let scale = [1.0f32, 1e3, 1e-20, 0.0, 30.0][case % 5];
            let mut z: Vec<f32> = (0..len).map(|_| rng.uniform(-2.0, 2.0) * scale).collect();
            if z.len() > 2 * dim {
                // the first position is the zero vector in every case (all distances ≈ ‖ê‖²: a near tie)
                let hw = h * w;
                for c in 0..dim {
                    z[c * hw] = 0.0;
                }
            }
            let want = cpu_quantize(&z, &cb, size, dim, (n, h, w));
            let block = BLOCKS[case % BLOCKS.len()];
            let got = gpu_quantize(&dev.with_sched(SCHEDS[case % 3]), &z, &cb, size, dim, (n, h, w), block);
            case += 1;
            assert_eq!(
                got, want,
                "quantize size={size} dim={dim} n={n} {h}x{w} scale={scale} block={block:?}"
            );
        }
    }
    println!("quantize: {case} cases, indices equal to the CPU's");
}

#[test]
fn quantize_ties_pick_the_lowest_index() {
    quantize_ties_pick_the_lowest_index_on(&EmuDevice::new());
}

fn quantize_ties_pick_the_lowest_index_on<D: TestDevice>(dev: &D) {
    // Codes j and j + 300 (and 700) are identical; each latent is a scaled copy of one of them, so the copies are at the
    // same (smallest) distance and the lower index must win, whichever thread or warp sees it first (block 100: the
    // copies meet in one thread; 33 and 256: in different threads and warps).
    let mut rng = Rng(34);
    let (size, dim) = (1000usize, 8usize);
    let mut cb = normalized_codebook(&mut rng, size, dim);
    for j in 300..600 {
        let (a, b) = cb.split_at_mut(j * dim);
        b[..dim].copy_from_slice(&a[(j - 300) * dim..][..dim]);
    }
    for j in 700..1000 {
        let (a, b) = cb.split_at_mut(j * dim);
        b[..dim].copy_from_slice(&a[(j - 400) * dim..][..dim]);
    }
    let (n, h, w) = (2usize, 3usize, 7usize);
    let hw = h * w;
    let mut z = vec![0f32; n * dim * hw];
    let mut chosen = Vec::new();
    for pos in 0..n * hw {
        let j = 300 + rng.below(300) as usize; // a duplicated code, in its second copy
        chosen.push((j - 300) as i32);
        let (img, p) = (pos / hw, pos % hw);
        for c in 0..dim {
            z[(img * dim + c) * hw + p] = cb[j * dim + c] * 2.5;
        }
    }
    let want = cpu_quantize(&z, &cb, size, dim, (n, h, w));
    for (s, block) in SCHEDS.iter().zip([Some(100), Some(33), None]) {
        let got = gpu_quantize(&dev.with_sched(*s), &z, &cb, size, dim, (n, h, w), block);
        assert_eq!(got, want, "{s:?}");
    }
    // The reference itself picks the first copy here (the exact tie is the point of the case).
    assert_eq!(want, chosen);
}

#[test]
fn quantize_nan_latent_gets_index_zero() {
    quantize_nan_latent_gets_index_zero_on(&EmuDevice::new());
}

fn quantize_nan_latent_gets_index_zero_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(35);
    let (size, dim, n, h, w) = (64usize, 8usize, 1usize, 2usize, 3usize);
    let cb = normalized_codebook(&mut rng, size, dim);
    let mut z: Vec<f32> = (0..n * dim * h * w).map(|_| rng.uniform(-1.0, 1.0)).collect();
    z[2 * h * w + 4] = f32::NAN; // channel 2 of position 4
    let want = cpu_quantize(&z, &cb, size, dim, (n, h, w));
    assert_eq!(want[4], 0);
    assert_eq!(gpu_quantize(dev, &z, &cb, size, dim, (n, h, w), None), want);
}

#[test]
fn codebook_launchers_reject_bad_shapes() {
    let dev = EmuDevice::new();
    let codes = dev.upload(&[0i32; 6], "codes");
    let cb = dev.upload(&[0.5f32; 32], "codebook");
    let z = dev.upload(&[0.5f32; 48], "z");
    let mut out = dev.alloc::<f32>(48, "out");
    let mut err = dev.alloc::<i32>(1, "err");
    let mut lookup = |n, dim, h, w, size, block| {
        gpu::codebook(
            &dev,
            codes.ptr(),
            cb.ptr(),
            out.ptr_mut(),
            err.ptr_mut(),
            n,
            dim,
            h,
            w,
            size,
            block,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(lookup(0, 8, 2, 3, 4, None).contains("empty shape"));
    assert!(lookup(1, 8, 2, 4, 4, None).contains("codes has 6 elements, needs 8"));
    assert!(lookup(1, 8, 2, 3, 5, None).contains("codebook has 32 elements, needs 40"));
    assert!(lookup(1, 16, 2, 3, 2, None).contains("out has 48 elements, needs 96"));
    assert!(lookup(1, 8, 2, 3, 4, Some(0)).contains("block size 0"));
    let mut idx = dev.alloc::<i32>(6, "idx");
    let mut quant = |n, dim, h, w, size| {
        gpu::quantize(&dev, z.ptr(), cb.ptr(), idx.ptr_mut(), n, dim, h, w, size, None)
            .unwrap_err()
            .to_string()
    };
    assert!(quant(1, 8, 2, 3, 0).contains("empty shape"));
    assert!(quant(1, 8, 3, 3, 4).contains("z has 48 elements, needs 72"));
    assert!(quant(1, 8, 2, 3, 5).contains("codebook has 32 elements, needs 40"));
    assert!(quant(1, 4000, 1, 1, 1).contains("shared memory"));
    assert!(quant(2, 4, 2, 3, 8).contains("codes has 6 elements, needs 12"));
}

/// The cases above on the GPU (scripts/gpu-check.sh); fails without one.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_codebook_matches_cpu() {
    let g = GpuTest::new();
    codebook_lookup_matches_cpu_on(&g);
    codebook_bad_codes_write_zeros_and_set_the_error_word_on(&g);
    quantize_matches_cpu_on(&g);
    quantize_ties_pick_the_lowest_index_on(&g);
    quantize_nan_latent_gets_index_zero_on(&g);
}
