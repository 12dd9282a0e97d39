//! Arithmetic shared by the backends (and the model, which sits above them), so that every side computes from the
//! same numbers and shapes: `F.normalize` of a vector, and the weight folding behind the VQ decoder's Upsample (nearest
//! x2, then a 3x3 pad-1 conv).

/// `v / max(||v||_2, 1e-12)` like `F.normalize`; the norm is accumulated in f64 and rounded once.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32;
    let d = norm.max(1e-12);
    v.iter_mut().for_each(|x| *x /= d);
}

// Decoder Upsample = nearest x2 then 3x3 pad-1 conv, folded into four 2x2 convs of the input.
//
// With u(Y, X) = x(Y / 2, X / 2) (integer division) and
// out(Y, X) = sum_{ky,kx} W[ky][kx] u(Y + ky - 1, X + kx - 1), an even output row Y = 2y reads
// u rows 2y-1, 2y, 2y+1 = x rows y-1, y, y: only two distinct input rows, weighted W[0] and
// W[1] + W[2]. An odd row Y = 2y+1 reads u rows 2y, 2y+1, 2y+2 = x rows y, y, y+1, weighted
// W[0] + W[1] and W[2]. The zero padding agrees: u row -1 or 2h is x row -1 or h. Columns fold
// the same way, so output phase (a, b) = (Y % 2, X % 2) is a 2x2 conv of x padded by one pixel
// on every side: tap (dy, dx) reads padded pixel (y + a + dy, x + b + dx) with the sum of the
// 3x3 taps in FOLD[a][dy] x FOLD[b][dx]. 16 MACs per input pixel and channel pair instead of 36.
pub const FOLD: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];

/// Folds a 3x3 weight (c_out, c_in, 3, 3) into the phase kernels of `upsample_conv3x3`.
/// Layout (a, b, dy, dx, c_out, c_in): 16 contiguous row-major (c_out, c_in) matrices.
pub fn upsample_phase_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert_eq!(weight.len(), c_out * c_in * 9, "upsample_phase_weights: weight length");
    let mut pw = vec![0.0f32; 16 * c_out * c_in];
    for (m, dstm) in pw.chunks_exact_mut(c_out * c_in).enumerate() {
        let (a, b, dy, dx) = (m >> 3, (m >> 2) & 1, (m >> 1) & 1, m & 1);
        for (d, wk) in dstm.iter_mut().zip(weight.chunks_exact(9)) {
            let taps = FOLD[a][dy]
                .iter()
                .flat_map(|&ky| FOLD[b][dx].iter().map(move |&kx| (ky, kx)));
            *d = taps.map(|(ky, kx)| wk[ky * 3 + kx]).sum();
        }
    }
    pw
}
