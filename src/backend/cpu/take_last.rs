//! `take_last`: the last position of every row of a `[batch, len, d]` tensor.
use crate::ops::{take_last::TakeLast, Args, Exec};

impl Exec<TakeLast> for super::CpuBackend {
    fn exec(&mut self, op: &TakeLast, a: &Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let (x, o) = (v.f32(a.ins[0]), v.f32_mut(a.out));
        let (l, d) = (op.len, op.d);
        for i in 0..op.batch {
            o[i * d..][..d].copy_from_slice(&x[(i * l + l - 1) * d..][..d]);
        }
        Ok(())
    }
}
