//! Node dispatch of the CUDA backend: resolves a node's tensors to device pointers in the arena and calls the op's
//! launcher (one per op, same names as the kernels and the CPU ops), in the backend's activation dtype.
use super::attention::{attention, attention_workspace_len, AttentionOptions};
use super::backend::{CudaBackend, DevWeight};
use super::device::{Device, DeviceBuffer};
use super::groupnorm::{groupnorm, groupnorm_workspace_len};
use super::launch::{DevPtr, DevPtrMut, Dtype, Elem};
use super::sampling::{sampling, sampling_workspace_len};
use super::vq_attention::{vq_attention, vq_attention_workspace_len};
use super::{add, codebook, conv, copy_rows, embed, gelu, gemm, rmsnorm, rope, swiglu};
use crate::backend::{Layout, Weight};
use crate::runtime::{Graph, Node, Op, Plan, WeightId};
use crate::{Error, Result};
use half::bf16;

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

    /// The error word `slot` as a device pointer, remembering which table it now guards (for the message).
    fn err_word(&mut self, slot: usize, table: WeightId) -> DevPtrMut<'static, i32> {
        let w = self.w(table);
        self.err_tables[slot] = Some((w.name.clone(), w.shape[0]));
        // SAFETY: one i32 of the backend's error block, which lives as long as the backend; kernels only write it.
        unsafe { DevPtrMut::from_raw(self.err.addr() + 4 * slot as u64, 1) }
    }

    fn step_ptr(&self) -> DevPtr<'_, super::kernels::StepState> {
        // SAFETY: the step state block lives as long as the backend; kernels only read it.
        unsafe { DevPtr::from_raw(self.step.addr(), 1) }
    }

    fn kv_ptr<T>(&self, op: &str) -> Result<(DevPtrMut<'_, T>, crate::backend::KvSpec)> {
        let (b, spec) = self
            .kv
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("{op}: no KV cache allocated")))?;
        // SAFETY: the cache holds spec.elems() elements of the activation type T; one kernel at a time uses it.
        Ok((unsafe { DevPtrMut::from_raw(b.addr(), spec.elems()) }, *spec))
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
                Op::Embed { table } => {
                    let rows = g.info(ins[0]).numel();
                    let (n, d) = (self.w(*table).shape[0], last(oshape));
                    let err = self.err_word(ERR_EMBED, *table);
                    let (ids, o) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    embed::embed::<T, D>(&self.dev, ids, self.wptr(*table, "embed")?, o, err, rows, n, d, None)
                }
                Op::Matmul { w } | Op::MatmulAdd { w } => {
                    let (n, k) = (self.w(*w).shape[0], self.w(*w).shape[1]);
                    let m = g.info(ins[0]).numel() / k;
                    let residual = match node.op {
                        Op::MatmulAdd { .. } => Some(self.t(g, plan, ins[1])?),
                        _ => None,
                    };
                    let (x, y) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    gemm::gemm::<T, D>(&self.dev, x, self.wptr(*w, "matmul")?, residual, y, m, n, k)
                }
                Op::Rope { layer, table, .. } => {
                    let s = g.shape(ins[0]);
                    let (b, l) = (s[0], s[1]);
                    let (cache, spec) = self.kv_ptr::<T>("rope")?;
                    let (qkv, q) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    let tab = self.wptr::<f32>(*table, "rope table")?;
                    let rows = match node.kv_inputs()?.1 {
                        Some(t) => Some(self.t::<i32>(g, plan, t)?),
                        None => None,
                    };
                    rope::rope::<T, D>(
                        &self.dev,
                        qkv,
                        tab,
                        self.step_ptr(),
                        rows,
                        q,
                        cache,
                        b,
                        l,
                        &spec,
                        *layer,
                        None,
                    )
                }
                Op::Attention { layer, .. } => {
                    let s = g.shape(ins[0]);
                    let (b, l) = (s[0], s[1]);
                    let spec = self.kv_ptr::<T>("attention")?.1;
                    let opts = AttentionOptions::default();
                    let (wa, wn) = self.workspace::<f32>("attention", attention_workspace_len(&spec, b, l, opts))?;
                    let (kv, _) = self.kv_ptr::<T>("attention")?;
                    let kv = DevPtr::from_raw(kv.addr(), kv.len());
                    let (mask, rows) = node.kv_inputs()?;
                    let mask = match mask {
                        Some(m) => Some((self.t(g, plan, m)?, g.shape(m)[1])),
                        None => None,
                    };
                    let rows = match rows {
                        Some(t) => Some(self.t::<i32>(g, plan, t)?),
                        None => None,
                    };
                    let (q, o) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    let ws = DevPtrMut::from_raw(wa, wn);
                    attention::<T, D>(
                        &self.dev,
                        q,
                        kv,
                        &spec,
                        *layer,
                        mask,
                        self.step_ptr(),
                        rows,
                        o,
                        ws,
                        b,
                        l,
                        opts,
                    )
                }
                Op::Sampling { cfg_scale, params } => {
                    let s = g.shape(ins[0]);
                    let (rows, vocab) = (s[0], s[1]);
                    let images = g.info(ins[1]).numel();
                    let (wa, wn) = self.workspace::<u32>("sampling", sampling_workspace_len(images, vocab))?;
                    let (logits, idx) = (self.t(g, plan, ins[0])?, self.t(g, plan, ins[1])?);
                    let (toks, ws) = (self.t_mut(g, plan, out)?, DevPtrMut::from_raw(wa, wn));
                    let step = self.step_ptr();
                    sampling::<T, D>(
                        &self.dev, logits, idx, step, toks, ws, images, rows, vocab, *cfg_scale, params, None,
                    )
                }
                Op::Codebook { codebook: cb } => {
                    self.f32_only(node)?;
                    let (n, dim, h, w) = (oshape[0], oshape[1], oshape[2], oshape[3]);
                    let size = self.w(*cb).shape[0];
                    let err = self.err_word(ERR_CODEBOOK, *cb);
                    let (codes, o) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    codebook::codebook(
                        &self.dev,
                        codes,
                        self.wptr(*cb, "codebook")?,
                        o,
                        err,
                        n,
                        dim,
                        h,
                        w,
                        size,
                        None,
                    )
                }
                Op::Quantize { codebook: cb } => {
                    self.f32_only(node)?;
                    let s = g.shape(ins[0]);
                    let (n, dim, h, w) = (s[0], s[1], s[2], s[3]);
                    let size = self.w(*cb).shape[0];
                    let (z, o) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    codebook::quantize(&self.dev, z, self.wptr(*cb, "codebook")?, o, n, dim, h, w, size, None)
                }
                Op::Conv { w, b, k, stride, pad } => {
                    self.f32_only(node)?;
                    let s = g.shape(ins[0]);
                    let c_out = self.w(*w).shape[0];
                    let residual = match ins.get(1) {
                        Some(&r) => Some(self.t(g, plan, r)?),
                        None => None,
                    };
                    let (x, o) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    let (wt, bias) = (self.wptr(*w, "conv")?, self.wptr(*b, "conv bias")?);
                    let geo = (c_out, *k, *k);
                    conv::conv2d(
                        &self.dev,
                        x,
                        wt,
                        Some(bias),
                        residual,
                        o,
                        (s[0], s[1], s[2], s[3]),
                        geo,
                        *stride,
                        *pad,
                        self.conv_tile,
                    )
                }
                Op::UpsampleConv { w, b } => {
                    self.f32_only(node)?;
                    let s = g.shape(ins[0]);
                    let (x, o) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    let (wt, bias) = (self.wptr(*w, "upsample conv")?, self.wptr(*b, "upsample bias")?);
                    conv::upsample_conv(
                        &self.dev,
                        x,
                        wt,
                        Some(bias),
                        o,
                        (s[0], s[1], s[2], s[3]),
                        oshape[1],
                        self.conv_tile,
                    )
                }
                Op::Groupnorm {
                    gamma,
                    beta,
                    groups,
                    eps,
                    silu,
                } => {
                    self.f32_only(node)?;
                    let s = g.shape(ins[0]);
                    let (n, c, hw) = (s[0], s[1], s[2..].iter().product::<usize>());
                    let need = groupnorm_workspace_len(n, c, hw, *groups, None);
                    let (wa, wn) = self.workspace::<f32>("groupnorm", need)?;
                    let (x, y) = (self.t(g, plan, ins[0])?, self.t_mut(g, plan, out)?);
                    let (ga, be) = (self.wptr(*gamma, "groupnorm")?, self.wptr(*beta, "groupnorm")?);
                    let ws = DevPtrMut::from_raw(wa, wn);
                    groupnorm(&self.dev, x, ga, be, y, ws, n, c, hw, *groups, *eps, *silu, None, None)
                }
                Op::VqAttention { q, k, v, proj } => {
                    self.f32_only(node)?;
                    let s = g.shape(ins[0]);
                    let (n, c, hw) = (s[0], s[1], s[2..].iter().product::<usize>());
                    let (wa, wn) = self.workspace::<f32>("vq_attention", vq_attention_workspace_len(n, c, hw))?;
                    let (x, normed) = (self.t(g, plan, ins[0])?, self.t(g, plan, ins[1])?);
                    let o = self.t_mut(g, plan, out)?;
                    let wp = |id: WeightId| self.wptr::<f32>(id, "vq attention");
                    let ws = DevPtrMut::from_raw(wa, wn);
                    vq_attention(
                        &self.dev,
                        x,
                        normed,
                        wp(q[0])?,
                        wp(q[1])?,
                        wp(k[0])?,
                        wp(k[1])?,
                        wp(v[0])?,
                        wp(v[1])?,
                        wp(proj[0])?,
                        wp(proj[1])?,
                        o,
                        ws,
                        n,
                        c,
                        hw,
                    )
                }
            }
        }
    }

    /// The VQ ops exist in f32 only (the reference decoder and encoder run in f32).
    fn f32_only(&self, node: &Node) -> Result<()> {
        if self.act != Dtype::F32 {
            return Err(Error::Invalid(format!(
                "op `{}` runs in f32 only; this backend's activations are {:?}",
                node.op.name(),
                self.act
            )));
        }
        Ok(())
    }
}
