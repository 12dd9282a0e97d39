//! `matmul`: y[M, N] = x[M, K] · Wᵀ (+ residual), W stored `[N, K]` row-major like `nn.Linear`.
//!
//! The GPT's products have few rows per step (2·batch in a decode step), so they are bound by one pass over the
//! weights: each weight row is streamed once and dotted with every x row while it is hot. Rows are processed in
//! chunks of `CHUNK_M` and every row's dot products have a fixed summation order, so a row's result never depends
//! on how many other rows (images) share the batch: the same seed gives the same image at any batch size.
//! bf16 weights are read as bf16 (never widened into a full copy); with AVX-512 BF16 they go through `vdpbf16ps`.
use super::team::Team;
use super::{matmul_avx2, matmul_avx512, round_bf16, KernelFamily, OutPtr};
use half::bf16;

pub enum WeightRef<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// Weight rows per parallel task: 64 rows × K = 768 × 2 B = 96 KiB, an L2-sized slab.
const TILE_N: usize = 64;
/// x rows per pass over the weights: 32 rows × K = 768 × 4 B = 96 KiB of activations stay in L2.
const CHUNK_M: usize = 32;

/// Buffers a product reuses from call to call (x in the layout a kernel reads), so a decode step allocates nothing.
#[derive(Default)]
pub struct Scratch {
    /// x rounded to bf16 (`matmul_avx512`).
    bits: Vec<u16>,
    /// x deinterleaved (`matmul_avx2::deinterleave`).
    x: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
pub fn matmul(
    kernels: KernelFamily,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef,
    n: usize,
    residual: Option<&[f32]>,
    round: bool,
    scratch: &mut Scratch,
    y: &mut [f32],
) {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(y.len(), m * n);
    // `KernelFamily::checked` made sure the CPU has what the family needs.
    let avx512 = matches!(w, WeightRef::Bf16(_)) && kernels >= KernelFamily::Avx512Bf16;
    let avx2 = kernels >= KernelFamily::Avx2;
    for (xc, yc) in x.chunks(CHUNK_M * k).zip(y.chunks_mut(CHUNK_M * n)) {
        let mc = xc.len() / k.max(1);
        match w {
            WeightRef::F32(w) if avx2 => matvec_avx2(xc, mc, k, w, n, &mut scratch.x, yc),
            WeightRef::F32(w) => matvec(xc, mc, k, w, n, yc),
            WeightRef::Bf16(w) if avx512 => matmul_avx512::matvec(xc, mc, k, w, n, TILE_N, &mut scratch.bits, yc),
            WeightRef::Bf16(w) if avx2 => matvec_avx2(xc, mc, k, w, n, &mut scratch.x, yc),
            WeightRef::Bf16(w) => matvec(xc, mc, k, w, n, yc),
        }
    }
    // The reference rounds the linear output to bf16 before the residual add (itself rounded): two roundings.
    match (residual, round) {
        (Some(r), true) => y
            .iter_mut()
            .zip(r)
            .for_each(|(y, r)| *y = round_bf16(*r + round_bf16(*y))),
        (Some(r), false) => y.iter_mut().zip(r).for_each(|(y, r)| *y += *r),
        (None, true) => y.iter_mut().for_each(|y| *y = round_bf16(*y)),
        (None, false) => {}
    }
}

#[inline]
fn widen(w: bf16) -> f32 {
    f32::from_bits((w.to_bits() as u32) << 16)
}

/// Dot product with 16 independent accumulators, so the loop vectorises into one AVX-512 register of partial sums.
#[inline]
pub fn dot_bf16(x: &[f32], w: &[bf16]) -> f32 {
    let mut acc = [0f32; 16];
    let mut xc = x.chunks_exact(16);
    let mut wc = w.chunks_exact(16);
    for (xs, ws) in (&mut xc).zip(&mut wc) {
        for i in 0..16 {
            acc[i] += xs[i] * widen(ws[i]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in xc.remainder().iter().zip(wc.remainder()) {
        s += a * widen(*b);
    }
    s
}

/// f32 twin of `dot_bf16`.
#[inline]
pub fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut xc = x.chunks_exact(16);
    let mut wc = w.chunks_exact(16);
    for (xs, ws) in (&mut xc).zip(&mut wc) {
        for i in 0..16 {
            acc[i] += xs[i] * ws[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in xc.remainder().iter().zip(wc.remainder()) {
        s += a * b;
    }
    s
}

/// Few rows (a decode step): one pass over the weights, every row of x dotted with each weight row while it is hot.
fn matvec<W: Sync>(x: &[f32], m: usize, k: usize, w: &[W], n: usize, y: &mut [f32])
where
    [W]: Dot,
{
    let out = OutPtr(y.as_mut_ptr());
    Team::global().run(n.div_ceil(TILE_N), &|t| {
        let out = out;
        for nn in t * TILE_N..((t + 1) * TILE_N).min(n) {
            let wr = &w[nn * k..(nn + 1) * k];
            for r in 0..m {
                let v = wr.dot(&x[r * k..(r + 1) * k]);
                // SAFETY: r < m and nn < n, so r·n + nn is inside y; column nn belongs to this task only.
                unsafe { *out.0.add(r * n + nn) = v };
            }
        }
    });
}

/// `matvec` through the AVX2 + FMA kernel (the caller's kernel family includes AVX2 + FMA). `xd` holds x
/// deinterleaved for bf16 weights.
fn matvec_avx2<W: matmul_avx2::Lanes + Sync>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    xd: &mut Vec<f32>,
    y: &mut [f32],
) {
    let x = if W::DEINTERLEAVED {
        matmul_avx2::deinterleave(x, k, xd);
        &xd[..]
    } else {
        x
    };
    let out = OutPtr(y.as_mut_ptr());
    Team::global().run(n.div_ceil(TILE_N), &|t| {
        let out = out;
        let (n0, n1) = (t * TILE_N, ((t + 1) * TILE_N).min(n));
        // SAFETY: the caller checked AVX2 + FMA; x holds m·k, w n·k and y m·n elements, and this task alone writes
        // columns n0..n1.
        unsafe { matmul_avx2::tile_rows(x, m, k, w, n, n0, n1, out.0) };
    });
}

pub trait Dot {
    fn dot(&self, x: &[f32]) -> f32;
}
impl Dot for [f32] {
    fn dot(&self, x: &[f32]) -> f32 {
        dot_f32(x, self)
    }
}
impl Dot for [bf16] {
    fn dot(&self, x: &[f32]) -> f32 {
        dot_bf16(x, self)
    }
}

impl crate::ops::Exec<crate::ops::matmul::Matmul> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::matmul::Matmul, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let residual = op.residual.then(|| v.f32(a.ins[1]));
        let wt = &self.weights[op.w.0 as usize];
        let (x, y) = (v.f32(a.ins[0]), v.f32_mut(a.out));
        matmul(
            self.kernels,
            x,
            op.m,
            op.k,
            wt.as_ref(),
            op.n,
            residual,
            self.round,
            &mut self.mm,
            y,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                y[r * n + c] = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64).sum();
            }
        }
        y
    }

    fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
        let den: f64 = b.iter().map(|b| b * b).sum();
        (num / den).sqrt()
    }

    #[test]
    fn f32_and_bf16_paths_match_a_naive_product() {
        for fam in KernelFamily::all_supported() {
            for &(m, k, n) in &[(1, 5, 3), (2, 64, 130), (7, 100, 65), (33, 96, 200), (64, 17, 129)] {
                // Multiples of 1/64 below 1 in magnitude: exact in bf16, as every bf16-mode activation is.
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
                let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 64.0).collect();
                let res: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32).collect();
                let mut want = naive(&x, m, k, &w, n);
                want.iter_mut().zip(&res).for_each(|(a, r)| *a += *r as f64);
                let mut y = vec![0f32; m * n];
                let xb = &mut Scratch::default();
                matmul(fam, &x, m, k, WeightRef::F32(&w), n, Some(&res), false, xb, &mut y);
                let e = rel_l2(&y, &want);
                assert!(e < 1e-6, "{fam} f32 {m}x{k}x{n}: {e}");
                // The weights are exact in bf16 too, so every bf16 path is as exact as f32.
                let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                matmul(fam, &x, m, k, WeightRef::Bf16(&wb), n, Some(&res), false, xb, &mut y);
                let e = rel_l2(&y, &want);
                assert!(e < 1e-6, "{fam} bf16 {m}x{k}x{n}: {e}");
            }
        }
    }

    /// The AVX2 kernel (the path every x86-64-v3 CPU without AVX-512 BF16 takes) agrees with the portable loop, and
    /// a row's result is bit for bit the same whatever the rows beside it (batch invariance).
    #[test]
    #[cfg_attr(not(llamagen_cpu_avx2), ignore = "this CPU lacks AVX2 + FMA")]
    fn avx2_kernel_matches_portable_and_is_batch_invariant() {
        let (m, k, n) = (7, 100, 70);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1009) as f32 - 500.0) * 1e-3).collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-3)
            .collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let (mut fast, mut slow) = (vec![0f32; m * n], vec![0f32; m * n]);
        let xd = &mut Vec::new();
        matvec_avx2(&x, m, k, &wb, n, xd, &mut fast);
        matvec(&x, m, k, &wb, n, &mut slow);
        let want: Vec<f64> = slow.iter().map(|&v| v as f64).collect();
        assert!(
            rel_l2(&fast, &want) < 1e-6,
            "bf16 avx2 vs portable: {}",
            rel_l2(&fast, &want)
        );
        matvec_avx2(&x, m, k, &w, n, xd, &mut fast);
        matvec(&x, m, k, &w, n, &mut slow);
        let want: Vec<f64> = slow.iter().map(|&v| v as f64).collect();
        assert!(
            rel_l2(&fast, &want) < 1e-6,
            "f32 avx2 vs portable: {}",
            rel_l2(&fast, &want)
        );
        for r in 0..m {
            let mut one = vec![0f32; n];
            matvec_avx2(&x[r * k..(r + 1) * k], 1, k, &wb, n, xd, &mut one);
            let mut all = vec![0f32; m * n];
            matvec_avx2(&x, m, k, &wb, n, xd, &mut all);
            assert_eq!(one, all[r * n..(r + 1) * n], "row {r} alone vs in a batch of {m}");
        }
    }

    /// Portable loop vs the AVX2 kernel on GPT-B decode shapes (2 rows: batch 1 with guidance), interleaved, best
    /// of 30 each (robust to other jobs on the machine).
    /// `cargo test --release --lib matmul::tests::matvec_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn matvec_speed() {
        for (k, n) in [(768usize, 2304usize), (768, 4096), (2048, 768), (768, 16384)] {
            let m = 2;
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
            let wb: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32((i % 7) as f32 * 0.01)).collect();
            let mut y = vec![0f32; m * n];
            let (mut slow, mut fast) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..30 {
                let t = std::time::Instant::now();
                matvec(&x, m, k, &wb, n, &mut y);
                slow = slow.min(t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                matvec_avx2(&x, m, k, &wb, n, &mut Vec::new(), &mut y);
                fast = fast.min(t.elapsed().as_secs_f64());
            }
            let gbs = |t: f64| (2 * n * k) as f64 / t / 1e9;
            println!(
                "bf16 {m}x{k}x{n}: portable {:.3} ms ({:.1} GB/s), avx2 {:.3} ms ({:.1} GB/s)",
                slow * 1e3,
                gbs(slow),
                fast * 1e3,
                gbs(fast)
            );
        }
    }
}
