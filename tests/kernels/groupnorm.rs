//! kernels/groupnorm.cu on the CUDA emulator against `backend::cpu::groupnorm`: channels 32/64 in 32 groups and
//! other group counts, spatial 5×7, 16×16, 1×1, with and without swish, chunk sizes that split groups into many
//! blocks (the f64 merge), a large-mean case (|mean|/std up to 1e4), a constant group, odd block sizes, all schedules.

use llamagen::backend::cpu::groupnorm::groupnorm as cpu_groupnorm;
use llamagen::backend::cpu::KernelFamily;
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::backend::cuda::groupnorm::{groupnorm, groupnorm_workspace_len};

use crate::support::devices::*;
use crate::support::emu_check::*;

/// NMSE bound against the CPU. The statistics differ only in rounding (CPU: shifted f64 sums; kernel: centred f32
/// chunk sums merged in f64), i.e. rstd and the mean agree to a few f32 ulp; the normalisation may contract into FMA
/// and swish uses expf where the CPU uses its polynomial fast_exp (≤ 3e-7 relative). Together a few ulp per output:
/// NMSE ~1e-14 (measured worst is printed by the test); 1e-11 leaves room for the GPU's expf, and a real bug
/// (wrong group, channel or variance) is orders of magnitude above it.
const NMSE_BOUND: f64 = 1e-11;

struct Case {
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    mean: f32,
    spread: f32,
}

fn run_case<D: TestDevice>(
    dev: &D,
    rng: &mut Rng,
    k: &Case,
    silu: bool,
    chunk: Option<usize>,
    block: Option<u32>,
) -> f64 {
    let len = k.n * k.c * k.hw;
    let x: Vec<f32> = (0..len).map(|_| k.mean + k.spread * rng.uniform(-1.0, 1.0)).collect();
    let gamma: Vec<f32> = (0..k.c).map(|_| rng.uniform(0.5, 1.5)).collect();
    let beta: Vec<f32> = (0..k.c).map(|_| rng.uniform(-0.5, 0.5)).collect();
    let eps = 1e-6f32;
    let mut want = vec![0f32; len];
    cpu_groupnorm(
        &x,
        k.n,
        k.c,
        k.hw,
        k.groups,
        eps,
        &gamma,
        &beta,
        silu,
        KernelFamily::Portable,
        &mut want,
    );

    let xb = dev.upload(&x, "x");
    let gb = dev.upload(&gamma, "gamma");
    let bb = dev.upload(&beta, "beta");
    let mut yb = dev.alloc::<f32>(len, "y");
    let mut wb = dev.alloc::<f32>(groupnorm_workspace_len(k.n, k.c, k.hw, k.groups, chunk), "work");
    groupnorm(
        dev,
        xb.ptr(),
        gb.ptr(),
        bb.ptr(),
        yb.ptr_mut(),
        wb.ptr_mut(),
        k.n,
        k.c,
        k.hw,
        k.groups,
        eps,
        silu,
        chunk,
        block,
    )
    .unwrap();
    let what = format!(
        "groupnorm n={} c={} hw={} groups={} mean={} spread={} silu={silu} chunk={chunk:?} block={block:?}",
        k.n, k.c, k.hw, k.groups, k.mean, k.spread
    );
    let (e, m) = nmse(&yb.to_vec(), &want, &what);
    assert!(
        e <= NMSE_BOUND,
        "{what}: NMSE {e:.3e} > {NMSE_BOUND:.0e} (max abs err {m:.3e})"
    );
    e
}

#[test]
fn groupnorm_matches_cpu() {
    groupnorm_matches_cpu_on(&EmuDevice::new());
}

fn groupnorm_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(41);
    let shapes: &[(usize, usize, usize, usize)] = &[
        // (n, c, hw, groups)
        (1, 32, 35, 32),
        (2, 64, 256, 32),
        (1, 32, 1, 32),
        (2, 64, 1, 32),
        (1, 32, 35, 8),
        (2, 48, 35, 6),
        (1, 64, 256, 16),
        (3, 6, 9, 2),
        (1, 8, 256, 1),
    ];
    let chunks = [None, Some(16), Some(60), Some(5), Some(1)];
    let blocks = [None, Some(32), Some(96), Some(7)];
    let (mut case, mut worst) = (0usize, 0f64);
    for &(n, c, hw, groups) in shapes {
        for silu in [false, true] {
            for _ in 0..2 {
                let k = Case {
                    n,
                    c,
                    hw,
                    groups,
                    mean: 0.5,
                    spread: 3.0,
                };
                let chunk = chunks[case % chunks.len()];
                let block = blocks[(case / 2) % blocks.len()];
                let e = run_case(&dev.with_sched(SCHEDS[case % 3]), &mut rng, &k, silu, chunk, block);
                worst = worst.max(e);
                case += 1;
            }
        }
    }
    println!("groupnorm: {case} cases, worst NMSE {worst:.3e}");
}

#[test]
fn groupnorm_large_mean_is_accurate() {
    groupnorm_large_mean_is_accurate_on(&EmuDevice::new());
}

fn groupnorm_large_mean_is_accurate_on<D: TestDevice>(dev: &D) {
    // |mean| / std up to 1e4 over groups split into many chunks: the centred chunk sums and the f64 merge keep the
    // variance (a single-pass f32 E[x²] − E[x]² loses it entirely here).
    let mut rng = Rng(42);
    let mut worst = 0f64;
    for (i, &(mean, spread)) in [(1000.0f32, 1.0f32), (-1e4, 1.0), (300.0, 0.01)].iter().enumerate() {
        for silu in [false, true] {
            let k = Case {
                n: 2,
                c: 32,
                hw: 256,
                groups: 8,
                mean,
                spread,
            };
            let chunk = [None, Some(100), Some(64)][i];
            let e = run_case(&dev.with_sched(SCHEDS[i]), &mut rng, &k, silu, chunk, Some(128));
            worst = worst.max(e);
        }
    }
    println!("groupnorm large mean: worst NMSE {worst:.3e}");
}

#[test]
fn groupnorm_all_schedules_and_constant_groups() {
    groupnorm_all_schedules_and_constant_groups_on(&EmuDevice::new());
}

fn groupnorm_all_schedules_and_constant_groups_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(43);
    for s in SCHEDS {
        let k = Case {
            n: 2,
            c: 64,
            hw: 35,
            groups: 32,
            mean: -0.25,
            spread: 2.0,
        };
        run_case(&dev.with_sched(s), &mut rng, &k, true, Some(24), Some(33));
        // zero variance: the output is beta (then swish), as on the CPU
        let k = Case {
            n: 1,
            c: 8,
            hw: 12,
            groups: 4,
            mean: 2.5,
            spread: 0.0,
        };
        run_case(&dev.with_sched(s), &mut rng, &k, false, Some(8), None);
        run_case(&dev.with_sched(s), &mut rng, &k, true, None, Some(5));
    }
}

#[test]
fn groupnorm_launcher_rejects_bad_shapes() {
    let dev = EmuDevice::new();
    let x = dev.upload(&[1.0f32; 64], "x");
    let g = dev.upload(&[1.0f32; 8], "gamma");
    let mut y = dev.alloc::<f32>(64, "y");
    let mut w = dev.alloc::<f32>(3 * 4, "work");
    let mut e = |n, c, hw, groups, chunk: Option<usize>, block| {
        groupnorm(
            &dev,
            x.ptr(),
            g.ptr(),
            g.ptr(),
            y.ptr_mut(),
            w.ptr_mut(),
            n,
            c,
            hw,
            groups,
            1e-6,
            false,
            chunk,
            block,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(e(0, 8, 8, 4, None, None).contains("empty shape"));
    assert!(e(1, 8, 8, 3, None, None).contains("do not divide into 3 groups"));
    assert!(e(1, 8, 9, 4, None, None).contains("x has 64 elements, needs 72"));
    assert!(e(1, 16, 4, 4, None, None).contains("gamma has 8 elements, needs 16"));
    assert!(e(1, 8, 8, 4, Some(4), None).contains("work has 12 elements, needs 48"));
    assert!(e(1, 8, 8, 4, None, Some(2000)).contains("block size 2000"));
    assert_eq!(groupnorm_workspace_len(1, 8, 8, 4, None), 12);
    assert_eq!(groupnorm_workspace_len(2, 128, 65536, 32, None), 3 * 2 * 32 * 32);
}

/// The sweeps above on the GPU (scripts/gpu-check.sh); fails without one.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_groupnorm_matches_cpu() {
    let gpu = GpuTest::new();
    groupnorm_matches_cpu_on(&gpu);
    groupnorm_large_mean_is_accurate_on(&gpu);
    groupnorm_all_schedules_and_constant_groups_on(&gpu);
}
