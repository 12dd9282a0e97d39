//! What every op's `Exec` impl of the CUDA backend (in the op's launcher file, `<op>.rs`) shares: weights as typed
//! device pointers, the error words, the step state, the KV cache and workspaces; and [`by_act!`], which runs a
//! generic body in the backend's activation type.
use super::backend::{CudaBackend, DevWeight};
use super::conv;
use super::device::{Device, DeviceBuffer};
use super::launch::{DevPtr, DevPtrMut, Dtype, Elem};
use crate::ops::{Layout, Weight, WeightId};
use crate::{Error, Result};

/// `by_act!(self, T => body)`: `body` with `T` the backend's activation element type (f32 or bf16).
macro_rules! by_act {
    ($s:expr, $t:ident => $body:expr) => {
        match $s.act {
            $crate::backend::cuda::launch::Dtype::F32 => {
                type $t = f32;
                $body
            }
            $crate::backend::cuda::launch::Dtype::Bf16 => {
                type $t = half::bf16;
                $body
            }
        }
    };
}
pub(super) use by_act;

/// Host-side preparation of a weight before upload: an upsampling conv's 3×3 kernel is folded into its four 2×2
/// output-phase kernels (the layout `upsample_conv_f32` reads); everything else is uploaded as stored.
pub(super) fn prepare_weight(w: &Weight) -> Result<Vec<f32>> {
    match (w.layout, w.shape.as_slice()) {
        (Layout::UpsamplePhases, &[co, ci, 3, 3]) => Ok(conv::upsample_fold_weights(&w.data, co, ci)),
        (Layout::UpsamplePhases, s) => Err(Error::tensor(
            &w.name,
            format!("an upsample conv weight of shape {s:?}"),
        )),
        _ => Ok(w.data.clone()),
    }
}

/// Error word slots: the embedding lookups and the codebook lookup record ids outside their table.
pub(super) const ERR_EMBED: usize = 0;
pub(super) const ERR_CODEBOOK: usize = 1;

/// The message of a recorded bad id, naming the table (as the CPU backend does).
pub(super) fn bad_id_message(slot: usize, id: i32, table: &str, rows: usize) -> String {
    match slot {
        ERR_CODEBOOK => format!("token id {id} is outside the codebook ({rows} codes)"),
        _ => format!("id {id} is outside `{table}` ({rows} rows)"),
    }
}

impl<D: Device> CudaBackend<D> {
    pub(super) fn w(&self, id: WeightId) -> &DevWeight<D::Buf> {
        &self.weights[id.0 as usize]
    }

    /// A weight as a typed pointer, after checking its stored dtype.
    pub(super) fn wptr<T: Elem>(&self, id: WeightId, what: &str) -> Result<DevPtr<'_, T>> {
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

    /// The error word `slot` as a device pointer, remembering which table it now guards (for the message).
    pub(super) fn err_word(&mut self, slot: usize, table: WeightId) -> DevPtrMut<'static, i32> {
        let w = self.w(table);
        self.err_tables[slot] = Some((w.name.clone(), w.shape[0]));
        // SAFETY: one i32 of the backend's error block, which lives as long as the backend; kernels only write it.
        unsafe { DevPtrMut::from_raw(self.err.addr() + 4 * slot as u64, 1) }
    }

    pub(super) fn step_ptr(&self) -> DevPtr<'_, super::kernels::StepState> {
        // SAFETY: the step state block lives as long as the backend; kernels only read it.
        unsafe { DevPtr::from_raw(self.step.addr(), 1) }
    }

    pub(super) fn kv_ptr<T>(&self, op: &str) -> Result<(DevPtrMut<'_, T>, crate::ops::KvSpec)> {
        let (b, spec) = self
            .kv
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("{op}: no KV cache allocated")))?;
        // SAFETY: the cache holds spec.elems() elements of the activation type T; one kernel at a time uses it.
        Ok((unsafe { DevPtrMut::from_raw(b.addr(), spec.elems()) }, *spec))
    }

    /// The VQ ops exist in f32 only (the reference decoder and encoder run in f32).
    pub(super) fn f32_only(&self, op: &str) -> Result<()> {
        if self.act != Dtype::F32 {
            return Err(Error::Invalid(format!(
                "op `{op}` runs in f32 only; this backend's activations are {:?}",
                self.act
            )));
        }
        Ok(())
    }

    /// A workspace as a typed device pointer.
    pub(super) fn ws<T>(&mut self, name: &'static str, elems: usize) -> Result<DevPtrMut<'static, T>> {
        let (a, n) = self.workspace::<T>(name, elems)?;
        // SAFETY: workspaces live as long as the backend; one kernel at a time uses each.
        Ok(unsafe { DevPtrMut::from_raw(a, n) })
    }
}
