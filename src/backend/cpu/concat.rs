//! `concat`: two `[batch, l, d]` tensors joined along the sequence axis, row by row.
use crate::ops::{concat::Concat, Args, Exec};

impl Exec<Concat> for super::CpuBackend {
    fn exec(&mut self, op: &Concat, a: &Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let (x, y, o) = (v.f32(a.ins[0]), v.f32(a.ins[1]), v.f32_mut(a.out));
        let (la, lb) = (op.la * op.d, op.lb * op.d);
        for i in 0..op.batch {
            o[i * (la + lb)..][..la].copy_from_slice(&x[i * la..][..la]);
            o[i * (la + lb) + la..][..lb].copy_from_slice(&y[i * lb..][..lb]);
        }
        Ok(())
    }
}
