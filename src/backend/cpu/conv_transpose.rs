//! `torch.nn.ConvTranspose2d` (NCHW, f32, dilation 1, groups 1): the reference for `conv_transpose2d_f32`
//! (kernels/conv.cu). LlamaGen's VQ does not use it (its decoder upsamples with nearest ×2 + conv); it is here for
//! tokenizers that do. Written as the definition, a direct scatter loop with f64 accumulation, so it is obviously
//! right and slow: every input pixel adds `x · W[ci, co, ky, kx]` to output `(iy·s − p + ky, ix·s − p + kx)`.

pub use crate::backend::common::conv_transpose_out_size as out_size;

/// x: (n, c_in, h, w); weight: (c_in, c_out, kh, kw) as PyTorch stores it; bias: (c_out);
/// out: (n, c_out, oh, ow) with oh = out_size(h, kh, stride, pad, output_padding) (likewise ow).
/// `pad` and `output_padding` apply to both dimensions. Panics on inconsistent lengths.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(
    x: &[f32],
    (n, c_in, h, w): (usize, usize, usize, usize),
    weight: &[f32],
    bias: Option<&[f32]>,
    (c_out, kh, kw): (usize, usize, usize),
    stride: usize,
    pad: usize,
    output_padding: usize,
    out: &mut [f32],
) {
    assert!(stride >= 1, "conv_transpose2d: stride 0");
    let oh = out_size(h, kh, stride, pad, output_padding).expect("conv_transpose2d: empty output height");
    let ow = out_size(w, kw, stride, pad, output_padding).expect("conv_transpose2d: empty output width");
    assert_eq!(x.len(), n * c_in * h * w, "conv_transpose2d: input length");
    assert_eq!(weight.len(), c_in * c_out * kh * kw, "conv_transpose2d: weight length");
    assert!(bias.is_none_or(|b| b.len() == c_out), "conv_transpose2d: bias length");
    assert_eq!(out.len(), n * c_out * oh * ow, "conv_transpose2d: output length");
    let mut acc = vec![0f64; c_out * oh * ow];
    for img in 0..n {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for ci in 0..c_in {
            for iy in 0..h {
                for ix in 0..w {
                    let v = x[((img * c_in + ci) * h + iy) * w + ix] as f64;
                    for co in 0..c_out {
                        for ky in 0..kh {
                            // signed: taps before the padding fall outside the output
                            let oy = (iy * stride + ky) as isize - pad as isize;
                            if oy < 0 || oy >= oh as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ox = (ix * stride + kx) as isize - pad as isize;
                                if ox < 0 || ox >= ow as isize {
                                    continue;
                                }
                                let wv = weight[((ci * c_out + co) * kh + ky) * kw + kx] as f64;
                                acc[(co * oh + oy as usize) * ow + ox as usize] += v * wv;
                            }
                        }
                    }
                }
            }
        }
        let o = &mut out[img * c_out * oh * ow..][..c_out * oh * ow];
        for (co, (dst, src)) in o.chunks_exact_mut(oh * ow).zip(acc.chunks_exact(oh * ow)).enumerate() {
            let b = bias.map_or(0.0, |b| b[co] as f64);
            dst.iter_mut().zip(src).for_each(|(d, &a)| *d = (a + b) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_size_matches_pytorch() {
        // nn.ConvTranspose2d(k=4, s=2, p=1) doubles; k=3, s=2, p=1, output_padding=1 doubles too.
        assert_eq!(out_size(8, 4, 2, 1, 0), Some(16));
        assert_eq!(out_size(8, 3, 2, 1, 1), Some(16));
        assert_eq!(out_size(5, 3, 1, 1, 0), Some(5));
        assert_eq!(out_size(1, 1, 1, 1, 0), None);
        assert_eq!(out_size(0, 3, 1, 0, 0), None);
    }

    /// 1 channel, x = [[1, 2], [3, 4]], W = [[1, 10], [100, 1000]], stride 2: the taps do not overlap, so the
    /// output is the Kronecker product x ⊗ W; with stride 1 they overlap and add.
    #[test]
    fn hand_computed() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let wt = [1.0f32, 10.0, 100.0, 1000.0];
        let mut out = vec![0f32; 16];
        conv_transpose2d(&x, (1, 1, 2, 2), &wt, None, (1, 2, 2), 2, 0, 0, &mut out);
        #[rustfmt::skip]
        let want = [
            1.0, 10.0, 2.0, 20.0,
            100.0, 1000.0, 200.0, 2000.0,
            3.0, 30.0, 4.0, 40.0,
            300.0, 3000.0, 400.0, 4000.0,
        ];
        assert_eq!(out, want);

        // stride 1: out[oy][ox] = Σ x[iy][ix]·W[oy−iy][ox−ix], 3x3, bias 0.5
        let mut out = vec![0f32; 9];
        conv_transpose2d(&x, (1, 1, 2, 2), &wt, Some(&[0.5]), (1, 2, 2), 1, 0, 0, &mut out);
        #[rustfmt::skip]
        let want = [
            1.5, 12.5, 20.5,
            103.5, 1234.5, 2040.5,
            300.5, 3400.5, 4000.5,
        ];
        assert_eq!(out, want);

        // padding 1 crops one pixel from each border of the stride-1 result: the centre 1x1
        let mut out = vec![0f32; 1];
        conv_transpose2d(&x, (1, 1, 2, 2), &wt, Some(&[0.5]), (1, 2, 2), 1, 1, 0, &mut out);
        assert_eq!(out, [1234.5]);

        // stride 2, padding 1, output_padding 1: (2−1)·2 − 2 + 2 + 1 = 3; rows/cols 1..4 of the 4x4 result
        let mut out = vec![0f32; 9];
        conv_transpose2d(&x, (1, 1, 2, 2), &wt, None, (1, 2, 2), 2, 1, 1, &mut out);
        #[rustfmt::skip]
        let want = [
            1000.0, 200.0, 2000.0,
            30.0, 4.0, 40.0,
            3000.0, 400.0, 4000.0,
        ];
        assert_eq!(out, want);
    }

    /// Two channels in, three out: each output channel is the sum over input channels, and the weight is
    /// indexed [ci][co] (PyTorch's ConvTranspose layout, the transpose of Conv2d's).
    #[test]
    fn channels_use_the_transposed_layout() {
        let x = [1.0f32, 2.0]; // (1, 2, 1, 1)
        let wt = [1.0f32, 2.0, 3.0, 10.0, 20.0, 30.0]; // (2, 3, 1, 1)
        let mut out = vec![0f32; 3];
        conv_transpose2d(&x, (1, 2, 1, 1), &wt, None, (3, 1, 1), 1, 0, 0, &mut out);
        assert_eq!(out, [21.0, 42.0, 63.0]);
    }

    /// ConvTranspose2d(k=2, s=2) with W[ci][co] = δ(ci, co) on every tap is nearest-neighbour ×2 upsampling.
    #[test]
    fn stride_two_identity_is_nearest_upsample() {
        let (n, c, h, w) = (2, 3, 3, 2);
        let x: Vec<f32> = (0..n * c * h * w).map(|i| i as f32 * 0.25 - 3.0).collect();
        let mut wt = vec![0f32; c * c * 4];
        for ci in 0..c {
            wt[(ci * c + ci) * 4..][..4].fill(1.0);
        }
        let mut out = vec![0f32; n * c * 4 * h * w];
        conv_transpose2d(&x, (n, c, h, w), &wt, None, (c, 2, 2), 2, 0, 0, &mut out);
        for (i, &o) in out.iter().enumerate() {
            let (ox, oy, pl) = (i % (2 * w), (i / (2 * w)) % (2 * h), i / (4 * h * w));
            assert_eq!(o, x[(pl * h + oy / 2) * w + ox / 2], "at {i}");
        }
    }

    /// Stride 1: ConvTranspose2d(W, p) = Conv2d(W', pad k−1−p) with W'[co][ci][ky][kx] = W[ci][co][k−1−ky][k−1−kx].
    #[test]
    fn stride_one_is_a_flipped_conv() {
        let (n, ci, co, h, w, k) = (1, 2, 3, 4, 5, 3);
        let x: Vec<f32> = (0..n * ci * h * w).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let wt: Vec<f32> = (0..ci * co * k * k)
            .map(|i| ((i * 5) % 13) as f32 * 0.5 - 3.0)
            .collect();
        let mut flipped = vec![0f32; wt.len()];
        for a in 0..ci {
            for b in 0..co {
                for ky in 0..k {
                    for kx in 0..k {
                        flipped[((b * ci + a) * k + ky) * k + kx] =
                            wt[((a * co + b) * k + (k - 1 - ky)) * k + (k - 1 - kx)];
                    }
                }
            }
        }
        for p in 0..2 {
            let (oh, ow) = (h + k - 1 - 2 * p, w + k - 1 - 2 * p);
            let mut got = vec![0f32; n * co * oh * ow];
            conv_transpose2d(&x, (n, ci, h, w), &wt, None, (co, k, k), 1, p, 0, &mut got);
            let mut want = vec![0f32; got.len()];
            let q = k - 1 - p;
            crate::backend::cpu::conv::conv2d(&x, n, ci, h, w, &flipped, None, co, k, k, 1, [q; 4], &mut want);
            assert_eq!(got, want, "padding {p}"); // small integers: exact in any order
        }
    }
}
