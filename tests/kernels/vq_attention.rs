//! vq_attention (the VQ decoder's single-head self-attention: 1×1 projections as GEMMs, a row softmax, the output
//! projection and the residual) and its softmax kernel under the CPU emulator, against the CPU backend
//! (`cpu::vq_attention`) and an f64-summed softmax.
//! `cargo test --release --test kernels vq_attention -- --nocapture` prints the worst errors.

use llamagen::backend::cpu;
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::backend::cuda::kernels::{self, SoftmaxRowsParams};
use llamagen::backend::cuda::launch::{DevPtrMut, LaunchConfig};
use llamagen::backend::cuda::vq_attention::{vq_attention, vq_attention_workspace_len};

use crate::support::devices::*;
use crate::support::emu_check::*;

/// vq_attention (f32): five GEMMs and an exp, the softmax sum in f32 instead of the CPU's f64: the kernels and the
/// CPU sum the same products in different orders, ~√k·2^-24 relative per element (NMSE ~k·2^-48); 1e-10 still
/// catches any wrong element.
const VQ_NMSE: f64 = 1e-10;

#[test]
fn softmax_rows_match_cpu_formula() {
    softmax_rows_match_cpu_formula_on(&EmuDevice::new());
}

fn softmax_rows_match_cpu_formula_on<D: TestDevice>(dev: &D) {
    // Rows longer than the largest block (1024), so each thread strides; more rows than blocks (grid-stride).
    let mut rng = Rng(31);
    for (rows, len, grid) in [(3usize, 2100usize, 2u32), (5, 35, 5), (2, 1, 2)] {
        let s: Vec<f32> = (0..rows * len).map(|_| rng.uniform(-20.0, 20.0)).collect();
        let mut want = s.clone();
        cpu::vq_attention::softmax_rows(&mut want, len);
        for sched in SCHEDS {
            let d = dev.with_sched(sched);
            let mut sd = d.upload(&s, "s");
            let threads = (len.div_ceil(32) * 32).clamp(32, 1024) as u32;
            let p = SoftmaxRowsParams {
                rows: rows as i32,
                len: len as i32,
            };
            kernels::vq_attention_softmax_f32(&d, LaunchConfig::linear(grid, threads), sd.ptr_mut(), p).unwrap();
            let (e, max) = nmse(&sd.to_vec(), &want, "softmax");
            assert!(
                e <= VQ_NMSE,
                "softmax rows={rows} len={len} {sched:?}: NMSE {e:.3e} max {max:.3e}"
            );
        }
    }
}

fn vq_case<D: TestDevice>(dev: &D, rng: &mut Rng, n: usize, c: usize, hw: usize) -> f64 {
    let img = n * c * hw;
    let x: Vec<f32> = (0..img).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let normed: Vec<f32> = (0..img).map(|_| rng.uniform(-2.0, 2.0)).collect();
    // Weights scaled like a trained conv (~1/√c) but large enough that the softmax is far from uniform.
    let ws = 2.0 / (c as f32).sqrt();
    let p: Vec<Vec<f32>> = (0..8)
        .map(|i| {
            let len = if i % 2 == 0 { c * c } else { c };
            (0..len).map(|_| rng.uniform(-ws, ws)).collect()
        })
        .collect();
    let mut want = vec![0f32; img];
    cpu::vq_attention::vq_attention(
        &x, &normed, n, c, hw, &p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6], &p[7], &mut want,
    );
    let xd = dev.upload(&x, "x");
    let nd = dev.upload(&normed, "normed");
    let pd: Vec<_> = p
        .iter()
        .enumerate()
        .map(|(i, v)| dev.upload(v, &format!("p{i}")))
        .collect();
    let mut out = dev.alloc::<f32>(img, "out");
    let mut wsd = dev.alloc::<f32>(vq_attention_workspace_len(n, c, hw), "workspace");
    vq_attention(
        dev,
        xd.ptr(),
        nd.ptr(),
        pd[0].ptr(),
        pd[1].ptr(),
        pd[2].ptr(),
        pd[3].ptr(),
        pd[4].ptr(),
        pd[5].ptr(),
        pd[6].ptr(),
        pd[7].ptr(),
        out.ptr_mut(),
        wsd.ptr_mut(),
        n,
        c,
        hw,
    )
    .unwrap();
    let what = format!("vq_attention n={n} c={c} hw={hw} {}", dev.sched_label());
    let (e, max) = nmse(&out.to_vec(), &want, &what);
    assert!(
        e <= VQ_NMSE,
        "{what}: NMSE {e:.3e} > {VQ_NMSE:.0e} (max abs err {max:.3e})"
    );
    e
}

#[test]
fn vq_attention_matches_cpu() {
    vq_attention_matches_cpu_on(&EmuDevice::new());
}

fn vq_attention_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(41);
    let mut worst = 0f64;
    let mut case = 0;
    for &(n, c, hw) in &[(1, 8, 16), (2, 13, 35), (1, 32, 35), (2, 32, 16), (1, 20, 70)] {
        let d = dev.with_sched(SCHEDS[case % 3]);
        worst = worst.max(vq_case(&d, &mut rng, n, c, hw));
        case += 1;
    }
    for s in SCHEDS {
        worst = worst.max(vq_case(&dev.with_sched(s), &mut rng, 2, 8, 35));
        case += 1;
    }
    println!("vq_attention: {case} cases, worst NMSE {worst:.3e}");
}

#[test]
fn vq_attention_rejects_bad_shapes() {
    let dev = EmuDevice::new();
    let (n, c, hw) = (1, 4, 6);
    let a = dev.alloc::<f32>(n * c * hw, "a");
    let w = dev.alloc::<f32>(c * c, "w");
    let b = dev.alloc::<f32>(c, "b");
    let mut out = dev.alloc::<f32>(n * c * hw, "out");
    let wsl = vq_attention_workspace_len(n, c, hw);
    let mut ws = dev.alloc::<f32>(wsl, "ws");
    let mut short = dev.alloc::<f32>(wsl - 1, "short");
    let (x, wp, bp) = (a.ptr(), w.ptr(), b.ptr());
    // The same weights for all four 1×1 convs; only the workspace and the shape vary.
    let mut run = |ws: DevPtrMut<'_, f32>, n: usize, c: usize| {
        vq_attention(&dev, x, x, wp, bp, wp, bp, wp, bp, wp, bp, out.ptr_mut(), ws, n, c, hw)
    };
    assert!(run(short.ptr_mut(), n, c).is_err(), "workspace too short");
    assert!(run(ws.ptr_mut(), n, c + 1).is_err(), "inputs too short for c + 1");
    assert!(run(ws.ptr_mut(), 0, c).is_err(), "n = 0");
    run(ws.ptr_mut(), n, c).unwrap();
}

/// The cases above on the GPU (scripts/gpu-check.sh); fails without one.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_vq_attention_matches_cpu() {
    let g = GpuTest::new();
    softmax_rows_match_cpu_formula_on(&g);
    vq_attention_matches_cpu_on(&g);
}
