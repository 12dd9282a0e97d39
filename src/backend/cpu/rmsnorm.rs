//! `rmsnorm`: y = x / sqrt(mean(x²) + eps) ⊙ w, row by row.
//! In bf16 mode the normalised value is rounded to bf16 before the weight multiply, which is rounded again
//! (the reference's `self._norm(x.float()).type_as(x) * self.weight`).
use super::round_bf16;
use super::team::Team;
use super::OutPtr;

pub fn rmsnorm(x: &[f32], d: usize, w: &[f32], eps: f32, round: bool, y: &mut [f32]) {
    let rows = x.len() / d;
    let work = |(xr, yr): (&[f32], &mut [f32])| {
        // f64 accumulation keeps the mean independent of the summation order (the reference sums in f32 pairwise).
        let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() as f32 / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        if round {
            for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                *o = round_bf16(round_bf16(v * r) * g);
            }
        } else {
            for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                *o = (v * r) * g;
            }
        }
    };
    if rows * d >= 1 << 15 {
        let out = OutPtr(y.as_mut_ptr());
        Team::global().run(rows, &|r| {
            // SAFETY: task r writes only row r of y.
            work((&x[r * d..(r + 1) * d], unsafe { out.slice(r * d, d) }));
        });
    } else {
        x.chunks(d).zip(y.chunks_mut(d)).for_each(work);
    }
}

impl crate::ops::Exec<crate::ops::rmsnorm::Rmsnorm> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::rmsnorm::Rmsnorm, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let w = self.weight_f32(op.w, "rmsnorm")?;
        rmsnorm(v.f32(a.ins[0]), op.d, w, op.eps, self.round, v.f32_mut(a.out));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_rows_and_weight() {
        let x = [3.0f32, 4.0, 0.0, 0.0, -2.0, 2.0, 2.0, -2.0];
        let w = [1.0f32, 2.0, 3.0, 4.0];
        let mut y = [0f32; 8];
        super::rmsnorm(&x, 4, &w, 0.0, false, &mut y);
        // Row 0: mean square 25/4, so 1/rms = 0.4.
        let want = [1.2f32, 3.2, 0.0, 0.0, -1.0, 2.0, 3.0, -4.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }
}
