//! `take_last` on CUDA: a strided row copy (`copy_rows.rs`, kernels/copy_rows.cu) of each sequence's last position.
use super::copy_rows::copy_rows;
use super::launch::DevPtr;

impl<D: super::device::Device> crate::ops::Exec<crate::ops::take_last::TakeLast> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::take_last::TakeLast, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let (b, l, d) = (op.batch, op.len, op.d);
        // SAFETY: float tensors are stored as the activation type; the output is disjoint from the input, and the
        // source pointer starts inside it (row l − 1 of sequence 0).
        super::exec::by_act!(self, T => unsafe {
            let x: DevPtr<'_, T> = self.t(a.ins[0])?;
            let src = DevPtr::from_raw(x.addr() + ((l - 1) * d * size_of::<T>()) as u64, x.len() - (l - 1) * d);
            copy_rows::<T, D>(&self.dev, src, l * d, self.t_mut(a.out)?, d, b, d)
        })
    }
}
