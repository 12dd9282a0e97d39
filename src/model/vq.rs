//! The VQ tokenizer as runtime graphs: decode (codes -> image) and encode (image -> codes), spec §6-§9.
//! Always f32, as in the reference.
use super::config::VqConfig;
use crate::ops::{
    codebook::Codebook, conv::Conv, groupnorm::Groupnorm, groupnorm_conv::GroupnormConv, quantize::Quantize,
    upsample_conv::UpsampleConv, vq_attention::VqAttention,
};
use crate::ops::{Backend, Dtype, Layout, Weight};
use crate::runtime::{Graph, GraphId, Phase, Scalar, Session, StepParams, TensorId, WeightId};
use crate::weights::StateDict;
use crate::{Error, Result};
use std::collections::HashMap;

const GROUPS: usize = 32;
const EPS: f32 = 1e-6;

/// Binds weights lazily by official name, checking shape and finiteness, and remembers their ids. Without a state
/// dict the deterministic synthetic generator supplies the values (benchmarks of preset sizes).
struct Binder<'a> {
    sd: Option<&'a mut StateDict>,
    weights: Vec<Weight>,
    ids: HashMap<String, WeightId>,
}

impl Binder<'_> {
    fn get(&mut self, name: &str, shape: &[usize], layout: Layout) -> Result<WeightId> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let data = match self.sd.as_deref_mut() {
            Some(sd) => sd.take_checked(name, shape)?.data,
            None => crate::weights::synth::value_f32(name, shape),
        };
        self.weights.push(Weight {
            name: name.into(),
            shape: shape.to_vec(),
            data,
            storage: Dtype::F32,
            layout,
        });
        let id = WeightId(self.weights.len() as u32 - 1);
        self.ids.insert(name.into(), id);
        Ok(id)
    }
    fn conv_w(&mut self, p: &str, co: usize, ci: usize, k: usize, layout: Layout) -> Result<(WeightId, WeightId)> {
        Ok((
            self.get(&format!("{p}.weight"), &[co, ci, k, k], layout)?,
            self.get(&format!("{p}.bias"), &[co], Layout::Plain)?,
        ))
    }
}

/// Graph construction with shape tracking: every helper takes and returns an NCHW tensor.
struct Builder<'a, 'b> {
    g: Graph,
    b: &'a mut Binder<'b>,
}

impl<'a, 'b> Builder<'a, 'b> {
    /// A new graph, with the (normalised) codebook bound.
    fn start(cfg: &VqConfig, b: &'a mut Binder<'b>, phase: Phase) -> Result<(Self, WeightId)> {
        let cb = b.get(
            "quantize.embedding.weight",
            &[cfg.codebook_size, cfg.codebook_embed_dim],
            Layout::Plain,
        )?;
        Ok((
            Builder {
                g: Graph::new(phase),
                b,
            },
            cb,
        ))
    }

    fn dims(&self, x: TensorId) -> [usize; 4] {
        let s = self.g.shape(x);
        [s[0], s[1], s[2], s[3]]
    }

    /// The Conv descriptor of `p` on x, and its output shape.
    #[allow(clippy::too_many_arguments)]
    fn conv_op(
        &mut self,
        x: TensorId,
        p: &str,
        co: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        residual: bool,
    ) -> Result<(Conv, [usize; 4])> {
        let [n, ci, h, w] = self.dims(x);
        // each conv weight feeds exactly this one conv, so its layout can depend on the geometry
        let layout = if k == 3 && stride == 1 && pad == [1; 4] {
            Layout::Winograd
        } else {
            Layout::Conv
        };
        let (wt, bs) = self.b.conv_w(p, co, ci, k, layout)?;
        let op = Conv {
            w: wt,
            b: bs,
            n,
            c_in: ci,
            h,
            w_in: w,
            c_out: co,
            k,
            stride,
            pad,
            residual,
        };
        let (oh, ow) = op.out_hw();
        Ok((op, [n, co, oh, ow]))
    }

    fn conv(
        &mut self,
        x: TensorId,
        p: &str,
        co: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        residual: Option<TensorId>,
    ) -> Result<TensorId> {
        let (op, shape) = self.conv_op(x, p, co, k, stride, pad, residual.is_some())?;
        let mut ins = vec![x];
        ins.extend(residual);
        self.g.push(op, &ins, p, &shape)
    }

    fn norm_op(&mut self, x: TensorId, p: &str, silu: bool) -> Result<Groupnorm> {
        let [n, c, h, w] = self.dims(x);
        let gamma = self.b.get(&format!("{p}.weight"), &[c], Layout::Plain)?;
        let beta = self.b.get(&format!("{p}.bias"), &[c], Layout::Plain)?;
        Ok(Groupnorm {
            gamma,
            beta,
            n,
            c,
            hw: h * w,
            groups: GROUPS,
            eps: EPS,
            silu,
        })
    }

    fn norm(&mut self, x: TensorId, p: &str, silu: bool) -> Result<TensorId> {
        let shape = self.dims(x);
        let op = self.norm_op(x, p, silu)?;
        self.g.push(op, &[x], p, &shape)
    }

    /// conv `cp` (3×3, pad 1) of swish(GroupNorm `np`(x)), one `groupnorm_conv` node: the normalised tensor feeds
    /// only this conv, so it need not exist (the CUDA kernels normalise x as they load it).
    fn norm_conv(
        &mut self,
        x: TensorId,
        np: &str,
        cp: &str,
        co: usize,
        residual: Option<TensorId>,
    ) -> Result<TensorId> {
        let norm = self.norm_op(x, np, true)?;
        let (conv, shape) = self.conv_op(x, cp, co, 3, 1, [1; 4], residual.is_some())?;
        let mut ins = vec![x];
        ins.extend(residual);
        self.g.push(GroupnormConv { norm, conv }, &ins, cp, &shape)
    }

    /// ResnetBlock: conv2(swish(norm2(conv1(swish(norm1(x)))))) + shortcut(x).
    fn resnet(&mut self, x: TensorId, p: &str, co: usize) -> Result<TensorId> {
        let ci = self.dims(x)[1];
        let h = self.norm_conv(x, &format!("{p}.norm1"), &format!("{p}.conv1"), co, None)?;
        let shortcut = if ci != co {
            self.conv(x, &format!("{p}.nin_shortcut"), co, 1, 1, [0; 4], None)?
        } else {
            x
        };
        self.norm_conv(h, &format!("{p}.norm2"), &format!("{p}.conv2"), co, Some(shortcut))
    }

    /// AttnBlock: x + proj_out(attention(q, k, v of GroupNorm(x))).
    fn attn(&mut self, x: TensorId, p: &str) -> Result<TensorId> {
        let [n, c, h, w] = self.dims(x);
        let normed = self.norm(x, &format!("{p}.norm"), false)?;
        let mut lin = |name: &str| -> Result<[WeightId; 2]> {
            Ok([
                self.b
                    .get(&format!("{p}.{name}.weight"), &[c, c, 1, 1], Layout::Plain)?,
                self.b.get(&format!("{p}.{name}.bias"), &[c], Layout::Plain)?,
            ])
        };
        let (q, k, v, proj) = (lin("q")?, lin("k")?, lin("v")?, lin("proj_out")?);
        let op = VqAttention {
            q,
            k,
            v,
            proj,
            n,
            c,
            hw: h * w,
        };
        self.g.push(op, &[x, normed], p, &[n, c, h, w])
    }

    fn upsample(&mut self, x: TensorId, p: &str) -> Result<TensorId> {
        let [n, c, h, w] = self.dims(x);
        let wt = self
            .b
            .get(&format!("{p}.weight"), &[c, c, 3, 3], Layout::UpsamplePhases)?;
        let bs = self.b.get(&format!("{p}.bias"), &[c], Layout::Plain)?;
        let op = UpsampleConv {
            w: wt,
            b: bs,
            n,
            c_in: c,
            h,
            w_in: w,
            c_out: c,
        };
        self.g.push(op, &[x], p, &[n, c, 2 * h, 2 * w])
    }
}

fn decoder_graph(cfg: &VqConfig, b: &mut Binder, n: usize, h: usize, w: usize) -> Result<Graph> {
    let dim = cfg.codebook_embed_dim;
    let (mut x, cb) = Builder::start(cfg, b, Phase::VqDecode)?;
    let codes = x.g.input("codes", &[n * h * w], Scalar::I32);
    let size = cfg.codebook_size;
    let z = x.g.push(
        Codebook {
            codebook: cb,
            n,
            dim,
            h,
            w,
            size,
        },
        &[codes],
        "latent",
        &[n, dim, h, w],
    )?;
    let z = x.conv(z, "post_quant_conv", cfg.z_channels, 1, 1, [0; 4], None)?;
    let mult = &cfg.decoder_ch_mult;
    let levels = mult.len();
    let mut c = cfg.ch * mult[levels - 1];
    let mut t = x.conv(z, "decoder.conv_in", c, 3, 1, [1; 4], None)?;
    t = x.resnet(t, "decoder.mid.0", c)?;
    t = x.attn(t, "decoder.mid.1")?;
    t = x.resnet(t, "decoder.mid.2", c)?;
    // Stored order runs from the deepest level (index 0) to the shallowest.
    for i in 0..levels {
        let out = cfg.ch * mult[levels - 1 - i];
        for r in 0..=cfg.num_res_blocks {
            t = x.resnet(t, &format!("decoder.conv_blocks.{i}.res.{r}"), out)?;
            c = out;
            if i == 0 {
                t = x.attn(t, &format!("decoder.conv_blocks.{i}.attn.{r}"))?;
            }
        }
        if i != levels - 1 {
            t = x.upsample(t, &format!("decoder.conv_blocks.{i}.upsample.conv"))?;
        }
    }
    let _ = c;
    let img = x.norm_conv(t, "decoder.norm_out", "decoder.conv_out", 3, None)?;
    x.g.mark_output(img);
    x.g.tensors[img.0 as usize].name = "image".into();
    Ok(x.g)
}

fn encoder_graph(cfg: &VqConfig, b: &mut Binder, n: usize, size_h: usize, size_w: usize) -> Result<Graph> {
    let dim = cfg.codebook_embed_dim;
    let (mut x, cb) = Builder::start(cfg, b, Phase::VqEncode)?;
    let img = x.g.input("image", &[n, 3, size_h, size_w], Scalar::F32);
    let mult = &cfg.encoder_ch_mult;
    let levels = mult.len();
    let mut t = x.conv(img, "encoder.conv_in", cfg.ch, 3, 1, [1; 4], None)?;
    for l in 0..levels {
        let out = cfg.ch * mult[l];
        for r in 0..cfg.num_res_blocks {
            t = x.resnet(t, &format!("encoder.conv_blocks.{l}.res.{r}"), out)?;
            if l == levels - 1 {
                t = x.attn(t, &format!("encoder.conv_blocks.{l}.attn.{r}"))?;
            }
        }
        if l != levels - 1 {
            // Asymmetric padding: one zero column on the right and one row at the bottom, then stride 2.
            t = x.conv(
                t,
                &format!("encoder.conv_blocks.{l}.downsample.conv"),
                out,
                3,
                2,
                [0, 1, 0, 1],
                None,
            )?;
        }
    }
    let c = cfg.ch * mult[levels - 1];
    t = x.resnet(t, "encoder.mid.0", c)?;
    t = x.attn(t, "encoder.mid.1")?;
    t = x.resnet(t, "encoder.mid.2", c)?;
    t = x.norm_conv(t, "encoder.norm_out", "encoder.conv_out", cfg.z_channels, None)?;
    let z = x.conv(t, "quant_conv", dim, 1, 1, [0; 4], None)?;
    let [_, _, h, w] = x.dims(z);
    let q = Quantize {
        codebook: cb,
        n,
        dim,
        h,
        w,
        size: cfg.codebook_size,
    };
    let codes = x.g.push(q, &[z], "codes", &[n * h * w])?;
    x.g.mark_output(codes);
    Ok(x.g)
}

/// Runs VQ decode and encode graphs for one (batch, grid) shape at a time; graphs are cached per shape.
pub struct VqRunner {
    pub cfg: VqConfig,
    session: Option<Session>,
    backend: Option<Box<dyn Backend>>,
    weights: Vec<Weight>,
    shapes: Vec<(Phase, [usize; 3], GraphId)>,
}

impl VqRunner {
    /// Binds the decoder (and the encoder when `with_encoder`) now, so every missing or misshapen tensor is reported
    /// before any work; `encoder.*` is ignored when only decoding.
    pub fn new(cfg: VqConfig, sd: &mut StateDict, with_encoder: bool, backend: Box<dyn Backend>) -> Result<Self> {
        Self::bind(cfg, Some(sd), with_encoder, backend)
    }

    /// A tokenizer with deterministic synthetic weights (for speed measurements; its images are noise).
    pub fn synthetic(cfg: VqConfig, with_encoder: bool, backend: Box<dyn Backend>) -> Result<Self> {
        Self::bind(cfg, None, with_encoder, backend)
    }

    fn bind(cfg: VqConfig, sd: Option<&mut StateDict>, with_encoder: bool, backend: Box<dyn Backend>) -> Result<Self> {
        cfg.validate()?;
        let mut b = Binder {
            sd,
            weights: Vec::new(),
            ids: HashMap::new(),
        };
        // Build once at a 1×1 grid to bind every weight in a fixed order; real shapes reuse the same ids.
        decoder_graph(&cfg, &mut b, 1, 1, 1)?;
        if with_encoder {
            let f = cfg.downsample();
            encoder_graph(&cfg, &mut b, 1, f, f)?;
        }
        let mut weights = b.weights;
        // Codebook rows are normalised at use time in the reference; doing it once at load gives the same values.
        if cfg.codebook_l2_norm {
            if let Some(w) = weights.iter_mut().find(|w| w.name == "quantize.embedding.weight") {
                l2_normalize_rows(&mut w.data, cfg.codebook_embed_dim);
            }
        }
        Ok(VqRunner {
            cfg,
            session: None,
            backend: Some(backend),
            weights,
            shapes: Vec::new(),
        })
    }

    fn graph(&mut self, phase: Phase, n: usize, h: usize, w: usize) -> Result<GraphId> {
        if let Some(&(_, _, id)) = self.shapes.iter().find(|s| s.0 == phase && s.1 == [n, h, w]) {
            return Ok(id);
        }
        // Rebind against an empty state dict: every name is already known, so only ids are looked up.
        let mut empty = StateDict::new("(bound)");
        let mut b = Binder {
            sd: Some(&mut empty),
            weights: Vec::new(),
            ids: HashMap::new(),
        };
        for (i, w) in self.weights.iter().enumerate() {
            b.ids.insert(w.name.clone(), WeightId(i as u32));
        }
        let g = match phase {
            Phase::VqDecode => decoder_graph(&self.cfg, &mut b, n, h, w)?,
            _ => encoder_graph(&self.cfg, &mut b, n, h, w)
                .map_err(|_| Error::Invalid("this VQ model was loaded without its encoder".into()))?,
        };
        let id = match &mut self.session {
            Some(s) => s.add_graph(g)?,
            None => {
                let backend = self
                    .backend
                    .take()
                    .ok_or_else(|| Error::Invalid("VQ backend already consumed".into()))?;
                let weights = self.weights_for_upload();
                self.session = Some(Session::new(backend, weights, None, vec![g])?);
                GraphId(0)
            }
        };
        self.shapes.push((phase, [n, h, w], id));
        Ok(id)
    }

    /// The session, once the first graph has been built (benchmarks: profiling and the graphs' shapes).
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    pub fn session_mut(&mut self) -> Option<&mut Session> {
        self.session.as_mut()
    }

    fn weights_for_upload(&mut self) -> Vec<Weight> {
        // The names stay behind for graph rebinding; the data moves to the device.
        self.weights
            .iter_mut()
            .map(|w| Weight {
                name: w.name.clone(),
                shape: w.shape.clone(),
                data: std::mem::take(&mut w.data),
                storage: w.storage,
                layout: w.layout,
            })
            .collect()
    }

    /// codes: `n·h·w` ids in raster order per image -> images `[n, 3, f·h, f·w]` in roughly [-1, 1].
    pub fn decode(&mut self, codes: &[u32], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        if codes.len() != n * h * w {
            return Err(Error::Invalid(format!("{} codes for a {n}×{h}×{w} grid", codes.len())));
        }
        if let Some(&c) = codes.iter().find(|&&c| c as usize >= self.cfg.codebook_size) {
            return Err(Error::Invalid(format!(
                "token id {c} is outside the codebook (0..{})",
                self.cfg.codebook_size
            )));
        }
        let id = self.graph(Phase::VqDecode, n, h, w)?;
        let s = self
            .session
            .as_mut()
            .ok_or_else(|| Error::Invalid("no VQ session".into()))?;
        let ids: Vec<i32> = codes.iter().map(|&c| c as i32).collect();
        s.write_i32(id, "codes", &ids)?;
        s.run(id, &StepParams::default())?;
        s.read_f32(id, "image")
    }

    /// images `[n, 3, H, W]` in [-1, 1] -> codes `n·(H/f)·(W/f)`.
    pub fn encode(&mut self, images: &[f32], n: usize, height: usize, width: usize) -> Result<Vec<u32>> {
        let f = self.cfg.downsample();
        if height % f != 0 || width % f != 0 || height == 0 || width == 0 {
            return Err(Error::Invalid(format!(
                "image size {height}×{width} is not a positive multiple of the tokenizer's downsampling {f}"
            )));
        }
        let id = self.graph(Phase::VqEncode, n, height, width)?;
        let s = self
            .session
            .as_mut()
            .ok_or_else(|| Error::Invalid("no VQ session".into()))?;
        s.write_f32(id, "image", images)?;
        s.run(id, &StepParams::default())?;
        Ok(s.read_i32(id, "codes")?.into_iter().map(|c| c as u32).collect())
    }
}

/// Normalises every row of `x` (rows of `dim` values) in place:
/// `row / max(||row||_2, 1e-12)`.
pub fn l2_normalize_rows(x: &mut [f32], dim: usize) {
    assert!(
        dim > 0 && x.len().is_multiple_of(dim),
        "l2_normalize_rows: {} values are not rows of {dim}",
        x.len()
    );
    x.chunks_mut(dim).for_each(crate::backend::common::l2_normalize);
}
