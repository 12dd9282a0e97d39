//! `gelu_f32` / `gelu_bf16` (kernels/gelu.cu) and `copy_rows` (kernels/copy_rows.cu, the kernel of `concat` and
//! `take_last`) against the CPU definitions.
use half::bf16;
use llamagen::backend::cpu;
use llamagen::backend::cuda::emu::EmuDevice;

use crate::support::devices::*;
use crate::support::emu_check::*;

/// gelu (t2i caption MLP) and the row copies of concat / take_last, against the CPU definitions. The f32 kernel
/// uses the same libm tanhf and one rounding, so they agree to the ulp (bound 1e-12); bf16 outputs flip by one bf16
/// ulp where the f32 results differ by an ulp at a rounding boundary (bound 1e-6).
#[test]
fn gelu_copy_rows_match_cpu() {
    gelu_copy_rows_match_cpu_on(&EmuDevice::new());
}

fn gelu_copy_rows_match_cpu_on<D: TestDevice>(dev: &D) {
    use llamagen::backend::cuda::{copy_rows, gelu};
    let mut rng = Rng(7);
    for (case, &n) in [1usize, 5, 100, 1000, 4099].iter().enumerate() {
        let dev = &dev.with_sched(SCHEDS[case % 3]);
        let x: Vec<f32> = (0..n).map(|_| rng.uniform(-6.0, 6.0)).collect();
        for bf in [false, true] {
            // The CPU definition on the kernel's inputs (rounded to bf16 for the bf16 kernel).
            let xr = if bf { from_bf16(&to_bf16(&x)) } else { x.clone() };
            let mut want_g = vec![0f32; n];
            cpu::gelu::gelu_tanh(&xr, bf, &mut want_g);
            let got_g = if bf {
                let bx = dev.upload(&to_bf16(&x), "x");
                let mut og = dev.alloc::<bf16>(n, "gelu");
                gelu::gelu(dev, bx.ptr(), og.ptr_mut(), n).unwrap();
                from_bf16(&og.to_vec())
            } else {
                let bx = dev.upload(&x, "x");
                let mut og = dev.alloc::<f32>(n, "gelu");
                gelu::gelu(dev, bx.ptr(), og.ptr_mut(), n).unwrap();
                og.to_vec()
            };
            let (eg, _) = nmse(&got_g, &want_g, "gelu");
            assert!(eg <= if bf { 1e-6 } else { 1e-12 }, "gelu bf16={bf} n={n}: NMSE {eg:e}");
        }
    }
    // Rows of a [3, 5, 7] tensor: the last position (take_last), and a concat along the sequence axis.
    let (b, l, d) = (3usize, 5usize, 7usize);
    let x: Vec<f32> = (0..b * l * d).map(|i| i as f32).collect();
    let xb = dev.upload(&x, "x");
    let mut last = dev.alloc::<f32>(b * d, "last");
    let src = unsafe {
        llamagen::backend::cuda::launch::DevPtr::<f32>::from_raw(
            xb.addr() + 4 * ((l - 1) * d) as u64,
            x.len() - (l - 1) * d,
        )
    };
    copy_rows::copy_rows(dev, src, l * d, last.ptr_mut(), d, b, d).unwrap();
    let want: Vec<f32> = (0..b)
        .flat_map(|i| x[(i * l + l - 1) * d..(i * l + l) * d].to_vec())
        .collect();
    assert_eq!(last.to_vec(), want);
    let hb: Vec<bf16> = to_bf16(&x);
    let hbuf = dev.upload(&hb, "xb");
    let mut cat = dev.alloc::<bf16>(b * (l + 2) * d, "cat");
    let cat_addr = cat.addr();
    copy_rows::copy_rows(dev, hbuf.ptr(), l * d, cat.ptr_mut(), (l + 2) * d, b, l * d).unwrap();
    let tail = unsafe {
        llamagen::backend::cuda::launch::DevPtrMut::<bf16>::from_raw(
            cat_addr + 2 * (l * d) as u64,
            b * (l + 2) * d - l * d,
        )
    };
    copy_rows::copy_rows(dev, hbuf.ptr(), l * d, tail, (l + 2) * d, b, 2 * d).unwrap();
    let got = from_bf16(&cat.to_vec());
    for i in 0..b {
        let row = &got[i * (l + 2) * d..(i + 1) * (l + 2) * d];
        assert_eq!(&row[..l * d], &x[i * l * d..(i + 1) * l * d], "concat head of row {i}");
        assert_eq!(
            &row[l * d..],
            &x[i * l * d..i * l * d + 2 * d],
            "concat tail of row {i}"
        );
    }
    assert!(
        copy_rows::copy_rows(dev, xb.ptr(), 0, last.ptr_mut(), d, b + 1, d).is_err(),
        "short destination"
    );
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_gelu_copy_rows_match_cpu() {
    gelu_copy_rows_match_cpu_on(&GpuTest::new());
}
