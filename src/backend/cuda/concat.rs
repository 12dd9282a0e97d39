//! `concat` on CUDA: two strided row copies (`copy_rows.rs`, kernels/copy_rows.cu) into the joined rows.
use super::copy_rows::copy_rows;
use super::launch::DevPtrMut;

impl<D: super::device::Device> crate::ops::Exec<crate::ops::concat::Concat> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::concat::Concat, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let (b, la, lb, d) = (op.batch, op.la, op.lb, op.d);
        let row = (la + lb) * d;
        // SAFETY: as for take_last; the two copies write disjoint columns of the output rows.
        super::exec::by_act!(self, T => unsafe {
            let o: DevPtrMut<'_, T> = self.t_mut(a.out)?;
            let (oa, on) = (o.addr(), o.len());
            copy_rows::<T, D>(&self.dev, self.t(a.ins[0])?, la * d, DevPtrMut::from_raw(oa, on), row, b, la * d)?;
            let tail = DevPtrMut::from_raw(oa + (la * d * size_of::<T>()) as u64, on - la * d);
            copy_rows::<T, D>(&self.dev, self.t(a.ins[1])?, lb * d, tail, row, b, lb * d)
        })
    }
}
