//! `rmsnorm_f32` / `rmsnorm_bf16` (kernels/rmsnorm.cu) against `backend::cpu::rmsnorm` over rows, widths and block
//! sizes, under the three schedules.
use half::bf16;
use llamagen::backend::cpu;
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::backend::cuda::rmsnorm;

use crate::support::devices::*;
use crate::support::emu_check::*;

pub(crate) const ROWS: [usize; 3] = [1, 3, 64];
pub(crate) const DIMS: [usize; 4] = [64, 100, 768, 1000];
pub(crate) const BLOCKS: [u32; 4] = [32, 96, 128, 256];
/// NMSE bounds, per op and dtype. Emulator worst cases over the sweep: rmsnorm f32 2.3e-14 (summation order),
/// everything else 0 (same libm, same roundings). The bounds leave room for the GPU's approximate rsqrtf/expf:
/// in f32 a few ulp (NMSE ~1e-13), in bf16 an occasional one-ulp flip of an output (2^-8 relative, NMSE ~1e-6 at
/// worst when many flip).
const RMSNORM_F32_NMSE: f64 = 1e-11;
const RMSNORM_BF16_NMSE: f64 = 1e-5;

fn rmsnorm_case<D: TestDevice>(dev: &D, rng: &mut Rng, rows: usize, d: usize, block: u32, bf: bool) -> f64 {
    let eps = 1e-5f32;
    let mut x: Vec<f32> = Vec::with_capacity(rows * d);
    for r in 0..rows {
        // Rows of very different magnitude (1e-3 .. 1e15): the output is normalised, so all stay O(1).
        let scale = [1.0f32, 1e-3, 1e3, 1e15, 0.5, 30.0, 1e-1][r % 7];
        x.extend((0..d).map(|_| rng.uniform(-2.0, 2.0) * scale));
    }
    let mut w: Vec<f32> = (0..d).map(|_| rng.uniform(0.5, 1.5)).collect();
    if bf {
        round_all(&mut x);
        round_all(&mut w);
    }
    let mut want = vec![0f32; rows * d];
    cpu::rmsnorm::rmsnorm(&x, d, &w, eps, bf, &mut want);

    let wb = dev.upload(&w, "w");
    let got = if bf {
        let xb = dev.upload(&to_bf16(&x), "x");
        let mut yb = dev.alloc::<bf16>(rows * d, "y");
        rmsnorm::rmsnorm(dev, xb.ptr(), wb.ptr(), yb.ptr_mut(), rows, d, eps, Some(block)).unwrap();
        xb.check_canaries().unwrap();
        yb.check_canaries().unwrap();
        from_bf16(&yb.to_vec())
    } else {
        let xb = dev.upload(&x, "x");
        let mut yb = dev.alloc::<f32>(rows * d, "y");
        rmsnorm::rmsnorm(dev, xb.ptr(), wb.ptr(), yb.ptr_mut(), rows, d, eps, Some(block)).unwrap();
        yb.check_canaries().unwrap();
        yb.to_vec()
    };
    wb.check_canaries().unwrap();
    let what = format!(
        "rmsnorm_{} rows={rows} d={d} block={block}",
        if bf { "bf16" } else { "f32" }
    );
    let (e, max) = nmse(&got, &want, &what);
    let bound = if bf { RMSNORM_BF16_NMSE } else { RMSNORM_F32_NMSE };
    assert!(e <= bound, "{what}: NMSE {e:.3e} > {bound:.0e} (max abs err {max:.3e})");
    e
}

#[test]
fn rmsnorm_matches_cpu() {
    rmsnorm_matches_cpu_on(&EmuDevice::new());
}

fn rmsnorm_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(1);
    let (mut worst_f32, mut worst_bf16, mut case) = (0f64, 0f64, 0usize);
    for &rows in &ROWS {
        for &d in &DIMS {
            for &block in &BLOCKS {
                for bf in [false, true] {
                    let dev = &dev.with_sched(SCHEDS[case % 3]);
                    case += 1;
                    let e = rmsnorm_case(dev, &mut rng, rows, d, block, bf);
                    if bf {
                        worst_bf16 = worst_bf16.max(e);
                    } else {
                        worst_f32 = worst_f32.max(e);
                    }
                }
            }
        }
    }
    println!("rmsnorm: {case} cases, worst NMSE f32 {worst_f32:.3e}, bf16 {worst_bf16:.3e}");
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_rmsnorm_matches_cpu() {
    rmsnorm_matches_cpu_on(&GpuTest::new());
}
