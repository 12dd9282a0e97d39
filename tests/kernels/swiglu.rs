//! `swiglu_f32` / `swiglu_bf16` (kernels/swiglu.cu) against `backend::cpu::swiglu` over rows, widths and block
//! sizes, under the three schedules.
use half::bf16;
use llamagen::backend::cpu;
use llamagen::backend::cpu::KernelFamily;
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::backend::cuda::swiglu;

use super::rmsnorm::{BLOCKS, DIMS, ROWS};
use crate::support::devices::*;
use crate::support::emu_check::*;

/// NMSE bounds: emulator worst case 0 (same libm, same roundings); room for the GPU's approximate expf (f32: a few
/// ulp; bf16: an occasional one-ulp flip of an output).
const SWIGLU_F32_NMSE: f64 = 1e-11;
const SWIGLU_BF16_NMSE: f64 = 1e-5;

fn swiglu_case<D: TestDevice>(dev: &D, rng: &mut Rng, rows: usize, f: usize, block: u32, bf: bool) -> f64 {
    let mut ab: Vec<f32> = Vec::with_capacity(rows * 2 * f);
    for _ in 0..rows {
        ab.extend((0..f).map(|_| rng.uniform(-8.0, 8.0)));
        ab.extend((0..f).map(|_| rng.uniform(-2.0, 2.0)));
    }
    if bf {
        round_all(&mut ab);
    }
    let mut want = vec![0f32; rows * f];
    cpu::swiglu::swiglu(&ab, f, bf, KernelFamily::Portable, &mut want);
    let got = if bf {
        let abb = dev.upload(&to_bf16(&ab), "ab");
        let mut ob = dev.alloc::<bf16>(rows * f, "out");
        swiglu::swiglu(dev, abb.ptr(), ob.ptr_mut(), rows, f, Some(block)).unwrap();
        abb.check_canaries().unwrap();
        ob.check_canaries().unwrap();
        from_bf16(&ob.to_vec())
    } else {
        let abb = dev.upload(&ab, "ab");
        let mut ob = dev.alloc::<f32>(rows * f, "out");
        swiglu::swiglu(dev, abb.ptr(), ob.ptr_mut(), rows, f, Some(block)).unwrap();
        ob.check_canaries().unwrap();
        ob.to_vec()
    };
    let what = format!(
        "swiglu_{} rows={rows} f={f} block={block}",
        if bf { "bf16" } else { "f32" }
    );
    let (e, max) = nmse(&got, &want, &what);
    let bound = if bf { SWIGLU_BF16_NMSE } else { SWIGLU_F32_NMSE };
    assert!(e <= bound, "{what}: NMSE {e:.3e} > {bound:.0e} (max abs err {max:.3e})");
    e
}

#[test]
fn swiglu_matches_cpu() {
    swiglu_matches_cpu_on(&EmuDevice::new());
}

fn swiglu_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(2);
    let (mut worst_f32, mut worst_bf16, mut case) = (0f64, 0f64, 0usize);
    for &rows in &ROWS {
        for &f in &DIMS {
            for &block in &BLOCKS {
                for bf in [false, true] {
                    let dev = &dev.with_sched(SCHEDS[case % 3]);
                    case += 1;
                    let e = swiglu_case(dev, &mut rng, rows, f, block, bf);
                    if bf {
                        worst_bf16 = worst_bf16.max(e);
                    } else {
                        worst_f32 = worst_f32.max(e);
                    }
                }
            }
        }
    }
    println!("swiglu: {case} cases, worst NMSE f32 {worst_f32:.3e}, bf16 {worst_bf16:.3e}");
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_swiglu_matches_cpu() {
    swiglu_matches_cpu_on(&GpuTest::new());
}
