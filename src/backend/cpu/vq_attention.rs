//! The VQ AttnBlock core (after its GroupNorm): single-head attention over the HW positions of an
//! NCHW map.
//!
//! Everything is GEMMs on the channel-major layout, so no transposed copy of q, k or v is made:
//! scores for a block of queries are `q[:, blk]^T k`, and `o[:, blk] = v A_blk^T` reads the score
//! block through swapped strides. Query blocks bound the score buffer to a few MiB for large
//! latents (the HW x HW matrix is 64 MiB at 64x64).
//!
//! On the 2-core dev box: c 512 at 16x16 in 3.9 ms (171 GFLOP/s), at 32x32 in 29 ms (148). The
//! q, k, v, o and score buffers live in a per-thread scratch that is reused across calls.
use super::conv::{mat, sgemm};
use gemm::Parallelism;
use rayon::prelude::*;

/// Score rows per block: at most about this many floats in flight.
const SCORE_BLOCK_FLOATS: usize = 1 << 20;

/// `dst (c_out x hw) = w (c_out x c_in) * src (c_in x hw) + bias`, each row of dst starting from
/// `init` + bias.
fn pointwise(dst: &mut [f32], init: Option<&[f32]>, w: &[f32], bias: &[f32], src: &[f32], hw: usize) {
    let c = bias.len();
    dst.par_chunks_mut(hw).enumerate().for_each(|(ch, row)| match init {
        Some(init) => row
            .iter_mut()
            .zip(&init[ch * hw..][..hw])
            .for_each(|(d, &x)| *d = x + bias[ch]),
        None => row.fill(bias[ch]),
    });
    sgemm(
        (c, hw, c),
        dst,
        hw,
        true,
        mat(w, c, 1),
        mat(src, hw, 1),
        1.0,
        Parallelism::Rayon(0),
    );
}

/// In-place softmax of each row, max-subtracted as torch does (the reference of `vq_attention_softmax_f32`).
pub fn softmax_rows(s: &mut [f32], len: usize) {
    s.par_chunks_mut(len).for_each(|row| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v as f64;
        }
        let inv = (1.0 / sum) as f32;
        row.iter_mut().for_each(|v| *v *= inv);
    });
}

/// AttnBlock after its norm: q, k, v = 1x1 convs (with bias) of `normed`,
/// A = softmax_j(q_i . k_j / sqrt(c)), o[:, i] = sum_j A[i, j] v[:, j], out = x + proj_out(o).
/// x, normed, out: (n, c, hw); weights (c, c) row-major (the [c, c, 1, 1] tensors); biases (c).
#[allow(clippy::too_many_arguments)]
pub fn vq_attention(
    x: &[f32],
    normed: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    wq: &[f32],
    bq: &[f32],
    wk: &[f32],
    bk: &[f32],
    wv: &[f32],
    bv: &[f32],
    wo: &[f32],
    bo: &[f32],
    out: &mut [f32],
) {
    let img = c * hw;
    assert!(
        x.len() == n * img && normed.len() == n * img,
        "vq_attention: input length"
    );
    assert_eq!(out.len(), n * img, "vq_attention: output length");
    for w in [wq, wk, wv, wo] {
        assert_eq!(w.len(), c * c, "vq_attention: weight length");
    }
    for b in [bq, bk, bv, bo] {
        assert_eq!(b.len(), c, "vq_attention: bias length");
    }
    if out.is_empty() {
        return;
    }
    // torch scales the q.k products by int(c) ** -0.5 after the matmul; the GEMM's output scale
    // does the same
    let scale = (c as f64).powf(-0.5) as f32;
    let blk = (SCORE_BLOCK_FLOATS / hw).clamp(1, hw);
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        let len = 4 * img + blk * hw;
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        attend(
            &mut buf[..len],
            (x, normed, out),
            (n, c, hw, blk),
            [wq, bq, wk, bk, wv, bv, wo, bo],
            scale,
        );
    });
}

thread_local! {
    // q, k, v, o and a score block; grows to the largest call on this thread, then is reused
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

type Io<'a> = (&'a [f32], &'a [f32], &'a mut [f32]);

fn attend(
    buf: &mut [f32],
    (x, normed, out): Io,
    (n, c, hw, blk): (usize, usize, usize, usize),
    p: [&[f32]; 8],
    scale: f32,
) {
    let [wq, bq, wk, bk, wv, bv, wo, bo] = p;
    let img = c * hw;
    let (q, rest) = buf.split_at_mut(img);
    let (k, rest) = rest.split_at_mut(img);
    let (v, rest) = rest.split_at_mut(img);
    let (o, scores) = rest.split_at_mut(img);
    for b in 0..n {
        let (xb, nb) = (&x[b * img..][..img], &normed[b * img..][..img]);
        pointwise(q, None, wq, bq, nb, hw);
        pointwise(k, None, wk, bk, nb, hw);
        pointwise(v, None, wv, bv, nb, hw);
        for i0 in (0..hw).step_by(blk) {
            let rows = blk.min(hw - i0);
            let s = &mut scores[..rows * hw];
            // s[i, j] = sum_ch q[ch, i0 + i] k[ch, j]: q read transposed through its strides
            let qt = mat(&q[i0..], 1, hw);
            sgemm(
                (rows, hw, c),
                s,
                hw,
                false,
                qt,
                mat(k, hw, 1),
                scale,
                Parallelism::Rayon(0),
            );
            softmax_rows(s, hw);
            // o[ch, i0 + i] = sum_j v[ch, j] s[i, j]: the score block read transposed
            let (at, par) = (mat(s, 1, hw), Parallelism::Rayon(0));
            sgemm((c, rows, hw), &mut o[i0..], hw, false, mat(v, hw, 1), at, 1.0, par);
        }
        pointwise(&mut out[b * img..][..img], Some(xb), wo, bo, o, hw);
    }
}

impl crate::ops::Exec<crate::ops::vq_attention::VqAttention> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::vq_attention::VqAttention, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let f = |id| self.weight_f32(id, "vq attention");
        let (x, normed, out) = (v.f32(a.ins[0]), v.f32(a.ins[1]), v.f32_mut(a.out));
        let (q, k, vv, p) = (op.q, op.k, op.v, op.proj);
        vq_attention(
            x,
            normed,
            op.n,
            op.c,
            op.hw,
            f(q[0])?,
            f(q[1])?,
            f(k[0])?,
            f(k[1])?,
            f(vv[0])?,
            f(vv[1])?,
            f(p[0])?,
            f(p[1])?,
            out,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::rand_vec;

    /// Direct f64 loops over the AttnBlock definition (after the norm).
    fn naive(x: &[f32], nrm: &[f32], n: usize, c: usize, hw: usize, p: &[Vec<f32>]) -> Vec<f64> {
        let conv = |w: &[f32], b: &[f32], src: &[f64]| -> Vec<f64> {
            let mut d = vec![0f64; c * hw];
            for o in 0..c {
                for i in 0..hw {
                    let dot = (0..c).map(|ci| w[o * c + ci] as f64 * src[ci * hw + i]);
                    d[o * hw + i] = b[o] as f64 + dot.sum::<f64>();
                }
            }
            d
        };
        let mut out = vec![0f64; n * c * hw];
        for b in 0..n {
            let nb: Vec<f64> = nrm[b * c * hw..][..c * hw].iter().map(|&v| v as f64).collect();
            let (q, k, v) = (
                conv(&p[0], &p[1], &nb),
                conv(&p[2], &p[3], &nb),
                conv(&p[4], &p[5], &nb),
            );
            let mut o = vec![0f64; c * hw];
            for i in 0..hw {
                let s: Vec<f64> = (0..hw)
                    .map(|j| (0..c).map(|ch| q[ch * hw + i] * k[ch * hw + j]).sum::<f64>())
                    .map(|s| s / (c as f64).sqrt())
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for ch in 0..c {
                    o[ch * hw + i] = (0..hw).map(|j| e[j] / z * v[ch * hw + j]).sum();
                }
            }
            let proj = conv(&p[6], &p[7], &o);
            for (i, pv) in proj.iter().enumerate() {
                out[b * c * hw + i] = x[b * c * hw + i] as f64 + pv;
            }
        }
        out
    }

    /// `vq_attention` with the eight parameters in a list (wq, bq, wk, bk, wv, bv, wo, bo).
    fn attend(x: &[f32], nrm: &[f32], (n, c, hw): (usize, usize, usize), p: &[Vec<f32>], out: &mut [f32]) {
        let (wq, bq, wk, bk) = (&p[0], &p[1], &p[2], &p[3]);
        let (wv, bv, wo, bo) = (&p[4], &p[5], &p[6], &p[7]);
        vq_attention(x, nrm, n, c, hw, wq, bq, wk, bk, wv, bv, wo, bo, out);
    }

    #[test]
    fn matches_naive() {
        let shapes = [(1, 1, 1), (1, 3, 15), (3, 5, 60), (1, 33, 49), (2, 8, 7), (1, 16, 300)];
        for (si, &(n, c, hw)) in shapes.iter().enumerate() {
            let seed = 10 * si as u64;
            let x = rand_vec(n * c * hw, seed);
            let nrm: Vec<f32> = rand_vec(n * c * hw, seed + 1).iter().map(|v| 2.0 * v).collect();
            let p: Vec<Vec<f32>> = (0..8)
                .map(|i| rand_vec(if i % 2 == 0 { c * c } else { c }, seed + 2 + i))
                .collect();
            let want = naive(&x, &nrm, n, c, hw, &p);
            let mut out = vec![f32::NAN; x.len()];
            attend(&x, &nrm, (n, c, hw), &p, &mut out);
            let num: f64 = out.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
            let den: f64 = want.iter().map(|w| w * w).sum();
            let e = (num / den).sqrt();
            assert!(e < 1e-6, "attention n{n} c{c} hw{hw}: rel {e}");
        }
    }

    /// `cargo test --release --lib vq_attention::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench() {
        for (c, hw) in [(512, 256), (512, 1024)] {
            let x = rand_vec(c * hw, 1);
            let p: Vec<Vec<f32>> = (0..8)
                .map(|i| rand_vec(if i % 2 == 0 { c * c } else { c }, 2 + i))
                .collect();
            let mut out = vec![0.0; x.len()];
            let mut run = || attend(&x, &x, (1, c, hw), &p, &mut out);
            run();
            let t = std::time::Instant::now();
            for _ in 0..5 {
                run();
            }
            let s = t.elapsed().as_secs_f64() / 5.0;
            let flops = 2.0 * (4 * c * c * hw + 2 * hw * hw * c) as f64;
            println!(
                "vq_attention c{c} hw{hw}: {:.2} ms, {:.1} GFLOP/s",
                s * 1e3,
                flops / s / 1e9
            );
        }
    }
}
