//! The VQ quantizer's codebook operations (spec §9): row normalisation, decode lookup and encode
//! (nearest code).
use crate::backend::common::l2_normalize as normalize;
use rayon::prelude::*;

/// Decode lookup: `codes` (n * h * w, raster order per image) -> latent (n, dim, h, w) from the
/// already normalised codebook (size, dim). On a code `>= size` nothing is written and
/// `Err(position of that code in codes)` returns.
#[allow(clippy::too_many_arguments)]
pub fn codebook_lookup(
    codes: &[u32],
    codebook: &[f32],
    size: usize,
    dim: usize,
    n: usize,
    h: usize,
    w: usize,
    out: &mut [f32],
) -> Result<(), usize> {
    let hw = h * w;
    assert_eq!(codes.len(), n * hw, "codebook_lookup: code count");
    assert_eq!(codebook.len(), size * dim, "codebook_lookup: codebook length");
    assert_eq!(out.len(), n * dim * hw, "codebook_lookup: output length");
    if let Some(pos) = codes.iter().position(|&c| c as usize >= size) {
        return Err(pos);
    }
    if out.is_empty() {
        return Ok(());
    }
    // one output plane (image, channel) per task: each writes contiguously and gathers from the
    // small codebook
    out.par_chunks_mut(hw).enumerate().for_each(|(plane, o)| {
        let (img, d) = (plane / dim, plane % dim);
        for (v, &code) in o.iter_mut().zip(&codes[img * hw..][..hw]) {
            *v = codebook[code as usize * dim + d];
        }
    });
    Ok(())
}

/// Encode: z (n, dim, h, w) -> `indices` (n * h * w, raster order per image). Each position's
/// vector is normalised, then `d_j = |z|^2 + |e_j|^2 - 2 z.e_j` (the reference's formula, in f32)
/// is minimised with the lowest index winning ties. `codebook` (size, dim) must already be
/// normalised (`model::vq` does it at load), as for `codebook_lookup`. The chosen normalised codes are
/// written to `zq` (n, dim, h, w); the reference's straight-through `z + (zq - z)` equals them up
/// to one rounding.
#[allow(clippy::too_many_arguments)]
pub fn quantize(
    z: &[f32],
    n: usize,
    dim: usize,
    h: usize,
    w: usize,
    codebook: &[f32],
    size: usize,
    indices: &mut [u32],
    zq: &mut [f32],
) {
    let hw = h * w;
    assert!(
        dim > 0 && size > 0 && size <= u32::MAX as usize,
        "quantize: codebook {size} x {dim}"
    );
    assert_eq!(z.len(), n * dim * hw, "quantize: latent length");
    assert_eq!(codebook.len(), size * dim, "quantize: codebook length");
    assert_eq!(indices.len(), n * hw, "quantize: index count");
    assert_eq!(zq.len(), z.len(), "quantize: quantised latent length");
    let norms: Vec<f32> = codebook
        .chunks_exact(dim)
        .map(|e| e.iter().map(|&v| v * v).sum())
        .collect();
    indices.par_iter_mut().enumerate().for_each_init(
        || vec![0f32; dim],
        |zv, (pos, idx)| {
            let (img, p) = (pos / hw.max(1), pos % hw.max(1));
            for (d, v) in zv.iter_mut().enumerate() {
                *v = z[(img * dim + d) * hw + p];
            }
            normalize(zv);
            let zz: f32 = zv.iter().map(|&v| v * v).sum();
            let mut best = (f32::INFINITY, 0usize);
            for (j, (e, &ee)) in codebook.chunks_exact(dim).zip(&norms).enumerate() {
                let dot: f32 = zv.iter().zip(e).map(|(&a, &b)| a * b).sum();
                let d = zz + ee - 2.0 * dot;
                // strict: the first of equal distances is kept
                if d < best.0 {
                    best = (d, j);
                }
            }
            *idx = best.1 as u32;
        },
    );
    // the gather is the decode lookup of the chosen indices
    if let Err(pos) = codebook_lookup(indices, codebook, size, dim, n, h, w, zq) {
        unreachable!("quantize chose index {} of a {size}-row codebook", indices[pos]);
    }
}

impl crate::ops::Exec<crate::ops::codebook::Codebook> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::codebook::Codebook, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let ids = v.i32(a.ins[0]);
        let codes: Vec<u32> = ids.iter().map(|&c| c as u32).collect();
        let cb = self.weight_f32(op.codebook, "codebook")?;
        codebook_lookup(&codes, cb, op.size, op.dim, op.n, op.h, op.w, v.f32_mut(a.out)).map_err(|i| {
            crate::Error::Invalid(format!(
                "token id {} is outside the codebook ({} codes)",
                ids[i], op.size
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::rand_vec;

    #[test]
    fn normalize_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0, 1e-20, 0.0, -2.0, 0.0];
        x.chunks_mut(2).for_each(normalize);
        assert_eq!(&x[..4], &[0.6, 0.8, 0.0, 0.0]);
        // below the 1e-12 floor the row is divided by 1e-12, not blown up to unit length
        assert!((x[4] - 1e-8).abs() < 1e-14 && x[5] == 0.0);
        assert_eq!(&x[6..], &[-1.0, 0.0]);
        for dim in [1, 3, 5, 8, 33] {
            let mut v = rand_vec(7 * dim, dim as u64);
            v.chunks_mut(dim).for_each(normalize);
            for row in v.chunks(dim) {
                let n: f64 = row.iter().map(|&a| a as f64 * a as f64).sum();
                assert!((n - 1.0).abs() < 1e-6, "dim {dim}: |row|^2 = {n}");
            }
        }
    }

    #[test]
    fn lookup_layout_and_errors() {
        let cases = [(1, 1, 1, 1, 1), (1, 8, 3, 5, 17), (3, 5, 7, 7, 4), (2, 33, 2, 3, 9)];
        for (n, dim, h, w, size) in cases {
            let cb = rand_vec(size * dim, 1);
            let codes: Vec<u32> = (0..n * h * w).map(|i| ((i * 7 + 3) % size) as u32).collect();
            let mut out = vec![f32::NAN; n * dim * h * w];
            assert_eq!(codebook_lookup(&codes, &cb, size, dim, n, h, w, &mut out), Ok(()));
            for img in 0..n {
                for y in 0..h {
                    for x in 0..w {
                        let code = codes[(img * h + y) * w + x] as usize;
                        for d in 0..dim {
                            assert_eq!(out[((img * dim + d) * h + y) * w + x], cb[code * dim + d]);
                        }
                    }
                }
            }
            let mut bad = codes.clone();
            let last = bad.len() - 1;
            bad[last] = size as u32;
            assert_eq!(codebook_lookup(&bad, &cb, size, dim, n, h, w, &mut out), Err(last));
        }
    }

    #[test]
    fn quantize_matches_naive() {
        let cases = [(1, 1, 1, 1, 3), (1, 8, 3, 5, 100), (3, 5, 7, 7, 33), (2, 8, 6, 10, 1)];
        for (n, dim, h, w, size) in cases {
            let mut cb = rand_vec(size * dim, 2);
            cb.chunks_mut(dim).for_each(normalize);
            let z = rand_vec(n * dim * h * w, 3);
            let (mut idx, mut zq) = (vec![u32::MAX; n * h * w], vec![f32::NAN; z.len()]);
            quantize(&z, n, dim, h, w, &cb, size, &mut idx, &mut zq);
            let hw = h * w;
            for (pos, &got) in idx.iter().enumerate() {
                let (img, p, got) = (pos / hw, pos % hw, got as usize);
                let v: Vec<f64> = (0..dim).map(|d| z[(img * dim + d) * hw + p] as f64).collect();
                let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
                let dist = |j: usize| -> f64 {
                    let e = &cb[j * dim..][..dim];
                    v.iter().zip(e).map(|(a, &b)| (a / norm - b as f64).powi(2)).sum()
                };
                let best = (0..size).min_by(|&a, &b| dist(a).total_cmp(&dist(b))).unwrap_or(0);
                // f32 evaluation may pick a different code only on a near tie
                assert!(dist(got) <= dist(best) + 1e-5, "pos {pos}: got {got}, best {best}");
                for d in 0..dim {
                    assert_eq!(zq[(img * dim + d) * hw + p], cb[got * dim + d]);
                }
            }
        }
    }

    #[test]
    fn quantize_ties_pick_lowest_index() {
        // codes 1 and 3 are identical and nearest; 0 and 2 are far
        let cb = vec![-1.0, 0.0, 0.6, 0.8, 0.0, -1.0, 0.6, 0.8];
        let z = vec![3.0, 4.0];
        let (mut idx, mut zq) = ([0u32], [0f32; 2]);
        quantize(&z, 1, 2, 1, 1, &cb, 4, &mut idx, &mut zq);
        assert_eq!(idx, [1]);
        assert_eq!(zq, [0.6, 0.8]);
    }
}
