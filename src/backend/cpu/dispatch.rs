//! Node dispatch: resolves a node's tensors to arena slices and calls the op's CPU implementation.
use super::{attention, codebook, conv, embed, gelu, groupnorm, matmul, rmsnorm, rope, sampling, swiglu, vq_attention};
use super::{CpuBackend, CpuWeight};
use crate::backend::Placement;
use crate::runtime::{Graph, Node, Op, Plan, StepParams, TensorId};
use crate::{Error, Result};

/// Arena views for one node. The planner guarantees that a node's output never shares bytes with a tensor that is
/// live at the same node (its inputs included), which is what makes handing out `&mut` next to `&` sound.
struct Views<'a> {
    base: *mut u8,
    g: &'a Graph,
    plan: &'a Plan,
}

impl Views<'_> {
    /// The tensor's bytes as `T` (f32 or i32: both 4 bytes, the arena is 64-byte aligned).
    fn ptr<T: bytemuck::Pod>(&self, t: TensorId) -> (*mut T, usize) {
        debug_assert_eq!(std::mem::size_of::<T>(), 4);
        // SAFETY: offset + numel·4 lies inside the arena (reserve_arena sized it to the plan).
        (
            unsafe { self.base.add(self.plan.offsets[t.0 as usize]) } as *mut T,
            self.g.info(t).numel(),
        )
    }
    fn get<T: bytemuck::Pod>(&self, t: TensorId) -> &[T] {
        let (p, n) = self.ptr::<T>(t);
        // SAFETY: see `ptr`; shared views of live tensors never overlap the node's output.
        unsafe { std::slice::from_raw_parts(p, n) }
    }
    #[allow(clippy::mut_from_ref)]
    fn get_mut<T: bytemuck::Pod>(&self, t: TensorId) -> &mut [T] {
        let (p, n) = self.ptr::<T>(t);
        // SAFETY: see the struct comment: the output is disjoint from every other live view.
        unsafe { std::slice::from_raw_parts_mut(p, n) }
    }
    fn f32(&self, t: TensorId) -> &[f32] {
        self.get(t)
    }
    fn i32(&self, t: TensorId) -> &[i32] {
        self.get(t)
    }
    #[allow(clippy::mut_from_ref)]
    fn f32_mut(&self, t: TensorId) -> &mut [f32] {
        self.get_mut(t)
    }
    #[allow(clippy::mut_from_ref)]
    fn i32_mut(&self, t: TensorId) -> &mut [i32] {
        self.get_mut(t)
    }
}

/// The KV placement of a rope / attention node: its row table, or every row at the step's position.
fn placement<'a>(table: Option<&'a [i32]>, step: &StepParams) -> Placement<'a> {
    match table {
        Some(t) => Placement::PerRow(t),
        None => Placement::Uniform { pos: step.pos },
    }
}

fn weight_f32<'a>(w: &'a CpuWeight, what: &str) -> Result<&'a [f32]> {
    let v = w.f32();
    if v.is_empty() && w.shape.iter().product::<usize>() > 0 {
        return Err(Error::tensor(&w.name, format!("{what} needs f32 storage")));
    }
    Ok(v)
}

impl CpuBackend {
    pub(super) fn exec(&mut self, g: &Graph, plan: &Plan, node: &Node, step: &StepParams) -> Result<()> {
        let v = Views {
            base: self.arena.as_mut_ptr() as *mut u8,
            g,
            plan,
        };
        let ins = &node.inputs;
        let out = node.output;
        let oshape = g.shape(out);
        let round = self.round;
        match &node.op {
            Op::Embed { table } => {
                let d = *oshape.last().unwrap_or(&0);
                embed::embed(v.i32(ins[0]), self.w(*table), d, v.f32_mut(out)).map_err(|id| {
                    Error::Invalid(format!(
                        "id {id} is outside `{}` ({} rows)",
                        self.w(*table).name,
                        self.w(*table).shape[0]
                    ))
                })?;
            }
            Op::Matmul { w } | Op::MatmulAdd { w } => {
                let wt = &self.weights[w.0 as usize];
                let (n, k) = (wt.shape[0], wt.shape[1]);
                let m = g.info(ins[0]).numel() / k;
                let residual = if matches!(node.op, Op::MatmulAdd { .. }) {
                    Some(v.f32(ins[1]))
                } else {
                    None
                };
                matmul::matmul(
                    self.kernels,
                    v.f32(ins[0]),
                    m,
                    k,
                    wt.as_ref(),
                    n,
                    residual,
                    round,
                    &mut self.mm,
                    v.f32_mut(out),
                );
            }
            Op::GeluTanh => gelu::gelu_tanh(v.f32(ins[0]), round, v.f32_mut(out)),
            Op::Rmsnorm { w, eps } => {
                let d = *oshape.last().unwrap_or(&1);
                rmsnorm::rmsnorm(
                    v.f32(ins[0]),
                    d,
                    weight_f32(self.w(*w), "rmsnorm")?,
                    *eps,
                    round,
                    v.f32_mut(out),
                );
            }
            Op::Rope { layer, table, .. } => {
                let s = g.shape(ins[0]);
                let (b, l) = (s[0], s[1]);
                let tab = weight_f32(&self.weights[table.0 as usize], "rope table")?;
                let (_, rows) = node.kv_inputs()?;
                let place = placement(rows.map(|t| v.i32(t)), step);
                let kv = self
                    .kv
                    .as_mut()
                    .ok_or_else(|| Error::Invalid("rope: no KV cache allocated".into()))?;
                let (h, hd) = (kv.spec.heads, kv.spec.head_dim);
                place.check(b, l, kv.spec.batch, kv.spec.seq.min(tab.len() / hd.max(1)))?;
                rope::rope(
                    v.f32(ins[0]),
                    b,
                    l,
                    h,
                    hd,
                    place,
                    tab,
                    kv,
                    *layer,
                    round,
                    self.kernels,
                    v.f32_mut(out),
                );
            }
            Op::Attention { layer, .. } => {
                let s = g.shape(ins[0]);
                let (b, l) = (s[0], s[1]);
                let kv = self
                    .kv
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("attention: no KV cache allocated".into()))?;
                let (mask, rows) = node.kv_inputs()?;
                let place = placement(rows.map(|t| v.i32(t)), step);
                let mask = mask.map(|m| (v.f32(m), g.shape(m)[1]));
                let (h, hd) = (kv.spec.heads, kv.spec.head_dim);
                place.check(b, l, kv.spec.batch, kv.spec.seq)?;
                attention::attention(
                    v.f32(ins[0]),
                    b,
                    l,
                    h,
                    hd,
                    place,
                    mask,
                    kv,
                    *layer,
                    round,
                    self.kernels,
                    &mut self.scores,
                    v.f32_mut(out),
                );
            }
            Op::Swiglu => {
                let f = *oshape.last().unwrap_or(&0);
                swiglu::swiglu(v.f32(ins[0]), f, round, self.kernels, v.f32_mut(out));
            }
            Op::TakeLast => {
                let s = g.shape(ins[0]);
                let (b, l, d) = (s[0], s[1], s[2]);
                let (x, o) = (v.f32(ins[0]), v.f32_mut(out));
                for i in 0..b {
                    o[i * d..(i + 1) * d].copy_from_slice(&x[(i * l + l - 1) * d..(i * l + l) * d]);
                }
            }
            Op::Concat => {
                let (sa, sb) = (g.shape(ins[0]), g.shape(ins[1]));
                let (b, la, lb, d) = (sa[0], sa[1], sb[1], sa[2]);
                let (x, y, o) = (v.f32(ins[0]), v.f32(ins[1]), v.f32_mut(out));
                for i in 0..b {
                    o[i * (la + lb) * d..][..la * d].copy_from_slice(&x[i * la * d..(i + 1) * la * d]);
                    o[(i * (la + lb) + la) * d..][..lb * d].copy_from_slice(&y[i * lb * d..(i + 1) * lb * d]);
                }
            }
            Op::Sampling { cfg_scale, params } => {
                let s = g.shape(ins[0]);
                sampling::sampling(
                    v.f32(ins[0]),
                    s[0],
                    s[1],
                    v.i32(ins[1]),
                    *cfg_scale,
                    params,
                    step,
                    &mut self.sampling,
                    v.i32_mut(out),
                );
            }
            Op::Codebook { codebook: cb } => {
                let (n, dim, h, w) = (oshape[0], oshape[1], oshape[2], oshape[3]);
                let cbw = self.w(*cb);
                let codes: Vec<u32> = v.i32(ins[0]).iter().map(|&c| c as u32).collect();
                codebook::codebook_lookup(
                    &codes,
                    weight_f32(cbw, "codebook")?,
                    cbw.shape[0],
                    dim,
                    n,
                    h,
                    w,
                    v.f32_mut(out),
                )
                .map_err(|i| {
                    Error::Invalid(format!(
                        "token id {} is outside the codebook ({} codes)",
                        v.i32(ins[0])[i],
                        cbw.shape[0]
                    ))
                })?;
            }
            Op::Quantize { codebook: cb } => {
                let s = g.shape(ins[0]);
                let (n, dim, h, w) = (s[0], s[1], s[2], s[3]);
                let cbw = self.w(*cb);
                let mut idx = vec![0u32; n * h * w];
                let mut zq = vec![0f32; n * dim * h * w];
                codebook::quantize(
                    v.f32(ins[0]),
                    n,
                    dim,
                    h,
                    w,
                    weight_f32(cbw, "codebook")?,
                    cbw.shape[0],
                    &mut idx,
                    &mut zq,
                );
                v.i32_mut(out).iter_mut().zip(&idx).for_each(|(o, &i)| *o = i as i32);
            }
            Op::Conv { w, b, k, stride, pad } => {
                let s = g.shape(ins[0]);
                let wt = self.w(*w);
                let bias = Some(weight_f32(self.w(*b), "conv bias")?);
                let residual = ins.get(1).map(|&r| v.f32(r));
                conv::conv_prepared(
                    wt.conv,
                    weight_f32(wt, "conv")?,
                    v.f32(ins[0]),
                    (s[0], s[1], s[2], s[3]),
                    (wt.shape[0], *k, *stride, *pad),
                    bias,
                    residual,
                    v.f32_mut(out),
                )
                .map_err(|e| Error::tensor(&wt.name, e))?;
            }
            Op::UpsampleConv { w, b } => {
                let s = g.shape(ins[0]);
                let wt = self.w(*w);
                conv::upsample_prepared(
                    wt.conv,
                    weight_f32(wt, "upsample conv")?,
                    v.f32(ins[0]),
                    (s[0], s[1], s[2], s[3]),
                    oshape[1],
                    weight_f32(self.w(*b), "upsample bias")?,
                    v.f32_mut(out),
                )
                .map_err(|e| Error::tensor(&wt.name, e))?;
            }
            Op::Groupnorm {
                gamma,
                beta,
                groups,
                eps,
                silu,
            } => {
                let s = g.shape(ins[0]);
                let hw = s[2..].iter().product();
                groupnorm::groupnorm(
                    v.f32(ins[0]),
                    s[0],
                    s[1],
                    hw,
                    *groups,
                    *eps,
                    weight_f32(self.w(*gamma), "groupnorm")?,
                    weight_f32(self.w(*beta), "groupnorm")?,
                    *silu,
                    self.kernels,
                    v.f32_mut(out),
                );
            }
            Op::VqAttention { q, k, v: vv, proj } => {
                let s = g.shape(ins[0]);
                let hw = s[2..].iter().product();
                let f = |id| weight_f32(self.w(id), "vq attention");
                vq_attention::vq_attention(
                    v.f32(ins[0]),
                    v.f32(ins[1]),
                    s[0],
                    s[1],
                    hw,
                    f(q[0])?,
                    f(q[1])?,
                    f(k[0])?,
                    f(k[1])?,
                    f(vv[0])?,
                    f(vv[1])?,
                    f(proj[0])?,
                    f(proj[1])?,
                    v.f32_mut(out),
                );
            }
            Op::Add => {
                let (a, b, o) = (v.f32(ins[0]), v.f32(ins[1]), v.f32_mut(out));
                o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (a, b))| *o = a + b);
            }
        }
        Ok(())
    }
}
