//! Nearest x2 upsample then 3x3 conv, as four 2x2 convs of the input (no upsampled image).
use super::*;

pub use crate::backend::common::{upsample_phase_weights, FOLD};

/// Nearest-neighbour x2 upsample then a 3x3 stride-1 pad-1 conv, without materialising the
/// upsampled image. x: (n, c_in, h, w); `phase_weights` from `upsample_phase_weights`;
/// out: (n, c_out, 2h, 2w).
#[allow(clippy::too_many_arguments)]
pub fn upsample_conv3x3(
    x: &[f32],
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    phase_weights: &[f32],
    bias: &[f32],
    c_out: usize,
    out: &mut [f32],
) {
    let mat_len = c_out * c_in;
    assert_eq!(x.len(), n * c_in * h * w, "upsample_conv3x3: input length");
    assert_eq!(
        phase_weights.len(),
        16 * mat_len,
        "upsample_conv3x3: phase weight length"
    );
    assert_eq!(bias.len(), c_out, "upsample_conv3x3: bias length");
    assert_eq!(out.len(), n * c_out * 4 * h * w, "upsample_conv3x3: output length");
    if out.is_empty() {
        return;
    }
    // the planes are those of a 3x3 pad-1 conv over the low-resolution input
    let g = Geom {
        c_in,
        h,
        w,
        s: 1,
        top: 1,
        left: 1,
        ny: 1,
        nx: 1,
        wq: w + 2,
    };
    let (wq, ow) = (w + 2, 2 * w);
    let t = tiling(n, h, wq, c_out);
    let plane = (t.rows + 2) * wq;
    let (planes_len, acc_rs) = (c_in * plane, t.rows * wq);

    par_tiles(
        t,
        (n, h, c_out),
        out,
        planes_len + t.co_block * acc_rs,
        |tile, oi, buf| {
            let Tile {
                img,
                oy0,
                rows,
                co0,
                cos,
            } = tile;
            let (planes, acc) = buf.split_at_mut(planes_len);
            fill_planes(&g, &x[img * c_in * h * w..][..c_in * h * w], oy0, t.rows + 2, planes);
            let ncols = (rows - 1) * wq + w;
            for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                for tap in 0..4 {
                    let (dy, dx) = (tap >> 1, tap & 1);
                    let wm = mat(
                        &phase_weights[((a * 2 + b) * 4 + tap) * mat_len + co0 * c_in..],
                        c_in,
                        1,
                    );
                    let rhs = mat(&planes[(a + dy) * wq + b + dx..], plane, 1);
                    sgemm(
                        (cos, ncols, c_in),
                        acc,
                        acc_rs,
                        tap > 0,
                        wm,
                        rhs,
                        1.0,
                        Parallelism::None,
                    );
                }
                for c in 0..cos {
                    let bias = bias[co0 + c];
                    for ry in 0..rows {
                        let src = &acc[c * acc_rs + ry * wq..][..w];
                        let row = &mut oi[((co0 + c) * 2 * h + 2 * (oy0 + ry) + a) * ow..][..ow];
                        row[b..]
                            .iter_mut()
                            .step_by(2)
                            .zip(src)
                            .for_each(|(d, &v)| *d = v + bias);
                    }
                }
            }
        },
    );
}
