//! `groupnorm_conv` on CUDA. Where the conv takes the halo loader (every 3×3 conv after a norm in the VQ decoder and
//! encoder): the norm's statistics as per-(image, channel) records ([`groupnorm_affine`]), then the conv with its GroupNorm (+ swish) prologue ([`ConvNorm`]), which normalises each 16-channel
//! halo chunk in shared memory as it lands. The normalised tensor is never written: per norm one read and one write of the activation fewer (at the
//! VQ-16 decoder's 256×256 stage, 128 channels: 64 MB, ≈ 20 µs of an H100's bandwidth), and the same values bit
//! for bit (both paths compute them with `groupnorm_apply`). Otherwise: `groupnorm` into the node's scratch tensor,
//! then the conv.
use super::conv::{conv2d_halo, conv2d_with, ConvNorm};
use super::device::Device;
use super::groupnorm::{groupnorm, groupnorm_affine, groupnorm_affine_len, groupnorm_workspace_len};
use super::launch::{DevPtr, DevPtrMut};
use crate::ops::groupnorm_conv::GroupnormConv;
use crate::Result;

impl<D: Device> crate::ops::Exec<GroupnormConv> for super::CudaBackend<D> {
    fn exec(&mut self, op: &GroupnormConv, a: &crate::ops::Args<'_>) -> Result<()> {
        let name = "groupnorm_conv";
        self.f32_only(name)?;
        let (nm, cv) = (&op.norm, &op.conv);
        let (n, c_in, h, w) = cv.x_shape();
        let len = n * c_in * h * w;
        let part = self.ws::<f32>("groupnorm", groupnorm_workspace_len(n, c_in, h * w, nm.groups, None))?;
        let x_addr = self.slot(a.ins[0])?.0;
        let fused = conv2d_halo((c_in, w), (cv.k, cv.k, cv.stride), cv.pad, x_addr).is_some();
        // the records (fused) in a workspace; the normalised input (not) in the node's scratch tensor, the arena slot
        // the unfused pair's intermediate had, unless the planner gave the scratch x's own bytes (x dies here): then
        // a workspace too (groupnorm_f32 does not run in place)
        let scratch = match (fused, a.scratch) {
            (true, _) => self.workspace::<f32>("groupnorm_conv records", groupnorm_affine_len(n, c_in))?.0,
            (false, Some(s)) if s.numel >= len && s != a.ins[0] => self.slot(s)?.0,
            (false, _) => self.workspace::<f32>("groupnorm_conv input", len)?.0,
        };
        let (ga, be) = (self.wptr(nm.gamma, name)?, self.wptr(nm.beta, name)?);
        let (wt, bias) = (self.wptr(cv.w, "conv")?, self.wptr(cv.b, "conv bias")?);
        let (geo, tile) = ((cv.c_out, cv.k, cv.k), self.conv_tile);
        // SAFETY: f32 activations (checked above); the output is disjoint from the input and the residual, the
        // records workspace and the scratch tensor (planned live only at this node, and not x's bytes here) from all
        // three.
        unsafe {
            let x = self.t::<f32>(a.ins[0])?;
            let r = if cv.residual { Some(self.t(a.ins[1])?) } else { None };
            let o = self.t_mut(a.out)?;
            // the conv of x with the prologue, or of the normalised copy without
            let (src, norm) = if fused {
                let rl = groupnorm_affine_len(n, c_in);
                let rec = DevPtrMut::<f32>::from_raw(scratch, rl);
                groupnorm_affine(&self.dev, x, ga, be, rec, part, (n, c_in, h * w), nm.groups, nm.eps, None)?;
                let rec = DevPtr::from_raw(scratch, rl);
                (x, Some(ConvNorm { rec, silu: nm.silu }))
            } else {
                let y = DevPtrMut::<f32>::from_raw(scratch, len);
                groupnorm(&self.dev, x, ga, be, y, part, n, c_in, h * w, nm.groups, nm.eps, nm.silu, None, None)?;
                (DevPtr::<f32>::from_raw(scratch, len), None)
            };
            let shape = (n, c_in, h, w);
            conv2d_with(&self.dev, src, wt, Some(bias), r, o, shape, geo, cv.stride, cv.pad, tile, None, norm)
        }
    }
}
