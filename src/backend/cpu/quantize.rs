//! `quantize`: the nearest codebook entry per position (the arithmetic is `codebook::quantize`, shared with the
//! decode lookup's module).
use crate::ops::{quantize::Quantize, Args, Exec};

impl Exec<Quantize> for super::CpuBackend {
    fn exec(&mut self, op: &Quantize, a: &Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let cb = self.weight_f32(op.codebook, "codebook")?;
        let hw = op.h * op.w;
        let mut idx = vec![0u32; op.n * hw];
        let mut zq = vec![0f32; op.n * op.dim * hw];
        super::codebook::quantize(
            v.f32(a.ins[0]),
            op.n,
            op.dim,
            op.h,
            op.w,
            cb,
            op.size,
            &mut idx,
            &mut zq,
        );
        v.i32_mut(a.out).iter_mut().zip(&idx).for_each(|(o, &i)| *o = i as i32);
        Ok(())
    }
}
