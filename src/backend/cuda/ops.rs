//! Node dispatch of the CUDA backend: resolves a node's tensors to device pointers in the arena and calls the op's
//! launcher (one per op, same names as the kernels and the CPU ops), in the backend's activation dtype.
use super::backend::{CudaBackend, DevWeight};
use super::device::{Device, DeviceBuffer};
use super::launch::{DevPtr, DevPtrMut, Dtype, Elem};
use super::{add, copy_rows, gelu, rmsnorm, swiglu};
use crate::backend::Weight;
use crate::runtime::{Graph, Node, Op, Plan, WeightId};
use crate::{Error, Result};
use half::bf16;

/// Host-side preparation of a weight before upload (layouts the kernels expect).
pub(super) fn prepare_weight(w: &Weight) -> Result<Vec<f32>> {
    Ok(w.data.clone())
}

/// Turns the error words written by kernels (ids outside a table) into an error.
pub(super) fn report_errors(words: &[i32]) -> Result<()> {
    if let Some((slot, &w)) = words.iter().enumerate().find(|(_, &w)| w != 0) {
        return Err(Error::Invalid(format!(
            "a kernel reported a bad id (error word {slot} = {w})"
        )));
    }
    Ok(())
}

fn unsupported(op: &Op, dev: &str) -> Error {
    Error::Invalid(format!(
        "op `{}` is not implemented on the {dev} backend yet",
        op.name()
    ))
}

impl<D: Device> CudaBackend<D> {
    pub(super) fn w(&self, id: WeightId) -> &DevWeight<D::Buf> {
        &self.weights[id.0 as usize]
    }

    /// A weight as a typed pointer, after checking its stored dtype.
    fn wptr<T: Elem>(&self, id: WeightId, what: &str) -> Result<DevPtr<'_, T>> {
        let w = self.w(id);
        if w.dtype != T::DTYPE {
            return Err(Error::tensor(
                &w.name,
                format!("{what} needs {:?} storage, has {:?}", T::DTYPE, w.dtype),
            ));
        }
        let n = w.buf.bytes() / size_of::<T>();
        // SAFETY: the weight buffer lives as long as the backend and is only read by kernels.
        Ok(unsafe { DevPtr::from_raw(w.buf.addr(), n) })
    }

    pub(super) fn exec(&mut self, g: &Graph, plan: &Plan, node: &Node) -> Result<()> {
        match self.act {
            Dtype::F32 => self.exec_t::<f32>(g, plan, node),
            Dtype::Bf16 => self.exec_t::<bf16>(g, plan, node),
        }
    }

    fn exec_t<T: Elem>(&mut self, g: &Graph, plan: &Plan, node: &Node) -> Result<()> {
        let ins = &node.inputs;
        let out = node.output;
        let oshape = g.shape(out);
        let last = |s: &[usize]| *s.last().unwrap_or(&1);
        // SAFETY (every `t`/`t_mut` below): float tensors are stored as T, I32 ones as i32; the planner keeps the
        // output disjoint from every tensor live at this node.
        unsafe {
            match &node.op {
                Op::Rmsnorm { w, eps } => {
                    let d = last(oshape);
                    let rows = g.info(out).numel() / d;
                    let wt = self.wptr::<f32>(*w, "rmsnorm")?;
                    rmsnorm::rmsnorm::<T, D>(
                        &self.dev,
                        self.t(g, plan, ins[0])?,
                        wt,
                        self.t_mut(g, plan, out)?,
                        rows,
                        d,
                        *eps,
                        None,
                    )
                }
                Op::Swiglu => {
                    let f = last(oshape);
                    let rows = g.info(out).numel() / f;
                    swiglu::swiglu::<T, D>(
                        &self.dev,
                        self.t(g, plan, ins[0])?,
                        self.t_mut(g, plan, out)?,
                        rows,
                        f,
                        None,
                    )
                }
                Op::GeluTanh => {
                    let n = g.info(out).numel();
                    gelu::gelu::<T, D>(&self.dev, self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?, n)
                }
                Op::Add => {
                    let n = g.info(out).numel();
                    let (a, b) = (self.t(g, plan, ins[0])?, self.t(g, plan, ins[1])?);
                    add::add::<T, D>(&self.dev, a, b, self.t_mut(g, plan, out)?, n)
                }
                Op::TakeLast => {
                    let s = g.shape(ins[0]);
                    let (b, l, d) = (s[0], s[1], s[2]);
                    let x: DevPtr<'_, T> = self.t(g, plan, ins[0])?;
                    let src = DevPtr::from_raw(x.addr() + ((l - 1) * d * size_of::<T>()) as u64, x.len() - (l - 1) * d);
                    copy_rows::copy_rows::<T, D>(&self.dev, src, l * d, self.t_mut(g, plan, out)?, d, b, d)
                }
                Op::Concat => {
                    let (sa, sb) = (g.shape(ins[0]), g.shape(ins[1]));
                    let (b, la, lb, d) = (sa[0], sa[1], sb[1], sa[2]);
                    let o: DevPtrMut<'_, T> = self.t_mut(g, plan, out)?;
                    let (oa, on) = (o.addr(), o.len());
                    let row = (la + lb) * d;
                    copy_rows::copy_rows::<T, D>(
                        &self.dev,
                        self.t(g, plan, ins[0])?,
                        la * d,
                        DevPtrMut::from_raw(oa, on),
                        row,
                        b,
                        la * d,
                    )?;
                    let tail = DevPtrMut::from_raw(oa + (la * d * size_of::<T>()) as u64, on - la * d);
                    copy_rows::copy_rows::<T, D>(&self.dev, self.t(g, plan, ins[1])?, lb * d, tail, row, b, lb * d)
                }
                op => Err(unsupported(op, self.dev.kind())),
            }
        }
    }
}
