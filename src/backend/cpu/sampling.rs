//! `sampling`: CFG mix, temperature, top-k, top-p and the categorical draw for every image of the batch, each from
//! its own counter-based RNG stream (seed, image index, step). Both CFG halves receive the same token.
use super::team::Team;
use crate::ops::StepParams;
use crate::sample::sampler::{self, SamplerScratch, SamplingParams};

/// Per-image workspace, allocated on the first step and reused.
pub struct SamplingScratch {
    mixed: Vec<f32>,
    per_image: Vec<SamplerScratch>,
    picked: Vec<u32>,
}

impl SamplingScratch {
    pub fn new() -> Self {
        SamplingScratch {
            mixed: Vec::new(),
            per_image: Vec::new(),
            picked: Vec::new(),
        }
    }
}

impl Default for SamplingScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// logits `[rows, V]` with rows = 2B when CFG is on (cond rows first) else B; tokens `[rows]`.
#[allow(clippy::too_many_arguments)]
pub fn sampling(
    logits: &[f32],
    rows: usize,
    vocab: usize,
    image_index: &[i32],
    cfg_scale: f32,
    params: &SamplingParams,
    step: &StepParams,
    scratch: &mut SamplingScratch,
    tokens: &mut [i32],
) {
    let b = image_index.len();
    let cfg = rows == 2 * b;
    if scratch.per_image.len() < b {
        scratch.per_image.resize_with(b, || SamplerScratch::new(vocab));
        scratch.mixed.resize(b * vocab, 0.0);
        scratch.picked.resize(b, 0);
    }
    struct Ptrs(*mut f32, *mut SamplerScratch, *mut u32);
    // SAFETY: task i touches only mixed[i·V..][..V], per_image[i] and picked[i].
    unsafe impl Sync for Ptrs {}
    let p = Ptrs(
        scratch.mixed.as_mut_ptr(),
        scratch.per_image.as_mut_ptr(),
        scratch.picked.as_mut_ptr(),
    );
    Team::global().run(b, &|i| {
        let p = &p;
        // SAFETY: see `Ptrs`; every buffer holds at least b images.
        let (mix, sc, out) = unsafe {
            (
                std::slice::from_raw_parts_mut(p.0.add(i * vocab), vocab),
                &mut *p.1.add(i),
                &mut *p.2.add(i),
            )
        };
        let cond = &logits[i * vocab..(i + 1) * vocab];
        let uncond = (cfg && step.cfg_active).then(|| &logits[(b + i) * vocab..(b + i + 1) * vocab]);
        *out = sampler::draw(
            cond,
            uncond,
            cfg_scale,
            params,
            step.seed,
            image_index[i] as u64,
            step.step,
            mix,
            sc,
        );
    });
    for (i, &t) in scratch.picked[..b].iter().enumerate() {
        tokens[i] = t as i32;
        if cfg {
            tokens[b + i] = t as i32;
        }
    }
}

impl crate::ops::Exec<crate::ops::sampling::Sampling> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::sampling::Sampling, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let (logits, index, tokens) = (v.f32(a.ins[0]), v.i32(a.ins[1]), v.i32_mut(a.out));
        sampling(
            logits,
            op.rows,
            op.vocab,
            index,
            op.cfg_scale,
            &op.params,
            a.step,
            &mut self.sampling,
            tokens,
        );
        Ok(())
    }
}
