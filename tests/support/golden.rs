//! The official fixtures as checks that any backend must pass (CPU in golden_gpt.rs / golden_vq.rs, CUDA in
//! golden_cuda.rs): configs, weights and conditions of the golden cases, teacher forcing, greedy generation, VQ
//! decode and encode.
use super::*;
use llamagen::backend::cpu::{CpuBackend, KernelFamily};
use llamagen::io::png::to_u8_hwc;
use llamagen::model::gpt::{Condition, GptOptions, GptRunner};
use llamagen::model::vq::VqRunner;
use llamagen::model::{Dtype, GptConfig, VqConfig};
use llamagen::ops::Backend;
use llamagen::sample::sampler::SamplingParams;
use llamagen::weights::{self, StateDict};

/// bf16 mode against the f32 model: bounds on the relative L2 of teacher-forced logits, for every path (each CPU
/// kernel family, the CUDA kernels). All paths round to bf16 at the same points (where the reference stores bf16
/// tensors) and compute every product exactly in f32 (bf16 × bf16 fits a float's significand), so they differ
/// only in f32 summation order and share one error distribution. Measured on the portable family, whose arithmetic
/// is the same on every machine: tiny c2i / t2i 1.04e-2 / 1.02e-2, demo 7.9e-3 (avx2 family: 7.9e-3); the bounds
/// are 2× that. Two bf16 paths then differ by at most the sum of their distances from f32.
pub const BF16_TINY_BOUND: f64 = 2e-2;
pub const BF16_DEMO_BOUND: f64 = 1.6e-2;

/// Makes the backend under test; the flag asks for bf16 activations.
pub type MakeBackend<'a> = &'a dyn Fn(bool) -> Box<dyn Backend>;

/// The CPU backend with one kernel family; a family this CPU cannot run is a test failure naming it (test
/// executables built on another machine: see the `llamagen_cpu_*` cfgs in build.rs).
pub fn cpu_family(family: KernelFamily) -> impl Fn(bool) -> Box<dyn Backend> {
    move |bf16| Box::new(CpuBackend::with_kernels(bf16, family).unwrap_or_else(|e| panic!("{e}")))
}

/// The reference CPU backend: the portable family, whose arithmetic (plain loops, no FMA contraction, built for
/// x86-64-v3 everywhere) is the same bit for bit on every machine, so bounds measured against it hold on all.
pub fn cpu(bf16: bool) -> Box<dyn Backend> {
    cpu_family(KernelFamily::Portable)(bf16)
}

/// The bundled demo model's GPT: its config and a loader of its weights.
pub fn demo_gpt() -> (GptConfig, impl Fn() -> StateDict) {
    let dir = root().join("models/demo");
    let cfg = GptConfig::from_json_file(&dir.join("gpt.config.json")).unwrap();
    (cfg, move || {
        weights::load_state_dict(&dir.join("gpt.safetensors")).unwrap()
    })
}

/// A fixed teacher-forcing sequence per image (token j of image i: (7i + 13j) mod V).
pub fn demo_tokens(cfg: &GptConfig, images: usize) -> Vec<Vec<u32>> {
    (0..images)
        .map(|i| {
            (0..cfg.block_size)
                .map(|j| ((7 * i + 13 * j) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect()
}

pub fn config(case: &str) -> GptConfig {
    GptConfig::from_json_file(&data(&format!("{case}.config.json"))).unwrap()
}

pub fn tiny_weights(case: &str) -> StateDict {
    weights::load_state_dict_prefixed(&data(&format!("{case}.safetensors")), "weights/").unwrap()
}

pub fn runner_on(
    cfg: &GptConfig,
    mut sd: StateDict,
    batch: usize,
    cfg_scale: f32,
    top_k: usize,
    dtype: Dtype,
    backend: Box<dyn Backend>,
) -> GptRunner {
    let opts = GptOptions {
        dtype,
        batch,
        cfg_scale,
        cfg_interval: -1,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k,
            top_p: 1.0,
        },
    };
    GptRunner::new(cfg.clone(), &mut sd, opts, backend).unwrap()
}

pub fn condition(case: &str, cfg: &GptConfig) -> Condition {
    let f = fixture(&format!("{case}.safetensors"));
    match cfg.model_type {
        llamagen::model::ModelType::C2i => {
            Condition::Classes(f.i64("labels").unwrap().1.iter().map(|&c| c as usize).collect())
        }
        llamagen::model::ModelType::T2i => Condition::Captions {
            embs: f.f32("caption_embs").unwrap().1,
            mask: f.i64("emb_masks").unwrap().1.iter().map(|&m| m as f32).collect(),
        },
    }
}

pub fn tokens(case: &str, name: &str) -> Vec<Vec<u32>> {
    let (shape, v) = fixture(&format!("{case}.safetensors")).i64(name).unwrap();
    v.chunks(shape[1])
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect()
}

/// The CPU reference runner.
pub fn runner(cfg: &GptConfig, sd: StateDict, batch: usize, cfg_scale: f32, top_k: usize, dtype: Dtype) -> GptRunner {
    runner_on(cfg, sd, batch, cfg_scale, top_k, dtype, cpu(dtype == Dtype::Bf16))
}

/// Teacher forcing with CFG rows [cond; uncond]; every column of every row within 1e-5 relative L2, argmax equal
/// wherever the fixture's top-1/top-2 margin is at least 1e-3.
pub fn teacher_forced(case: &str, make: MakeBackend) {
    let cfg = config(case);
    let f = fixture(&format!("{case}.safetensors"));
    let cond = condition(case, &cfg);
    let b = cond.len(&cfg);
    let mut r = runner_on(&cfg, tiny_weights(case), b, 4.0, 1, Dtype::F32, make(false));
    let got = r.teacher_force(&cond, &tokens(case, "image_tokens")).unwrap();
    let want = f.f32("logits_teacher").unwrap().1;
    assert_finite(&got, "logits");
    let err = rel_l2(&got, &want);
    assert!(err <= 1e-5, "{case}: teacher-forced logits rel L2 {err:e}");
    let (margin, argmax_want) = (f.f32("margin_teacher").unwrap().1, f.i64("argmax_teacher").unwrap().1);
    let v = cfg.vocab_size;
    for (i, (m, a)) in margin.iter().zip(&argmax_want).enumerate() {
        if *m >= 1e-3 {
            assert_eq!(
                argmax(&got[i * v..(i + 1) * v]) as i64,
                *a,
                "{case}: argmax at row/column {i}"
            );
        }
    }
    eprintln!("{case}: teacher-forced logits rel L2 {err:.2e}");
}

/// Greedy (top-k 1) generation equals the official tokens up to the first position whose margin is below 1e-3.
pub fn greedy(case: &str, key: &str, cfg_scale: f32, make: MakeBackend) {
    let cfg = config(case);
    let f = fixture(&format!("{case}.safetensors"));
    let cond = condition(case, &cfg);
    let b = cond.len(&cfg);
    let mut r = runner_on(&cfg, tiny_weights(case), b, cfg_scale, 1, Dtype::F32, make(false));
    let index: Vec<u64> = (0..b as u64).collect();
    let got = r.generate(&cond, &index, 0, |_| {}).unwrap();
    let want = tokens(case, key);
    let margin = f.f32(&format!("{key}_margin")).unwrap().1;
    let n = cfg.block_size;
    let mut compared = 0;
    for i in 0..b {
        for j in 0..n {
            if margin[i * n + j] < 1e-3 {
                break;
            }
            assert_eq!(got[i][j], want[i][j], "{case} {key}: image {i} token {j}");
            compared += 1;
        }
    }
    assert!(
        compared >= b * n / 2,
        "{case} {key}: only {compared} tokens had a safe margin"
    );
}

/// GPT-B (110.9M parameters, weights regenerated with the deterministic generator): teacher-forced logits at the
/// stored positions within 1e-5 relative L2.
pub fn gpt_b_teacher_forced(make: MakeBackend) {
    let case = "gpt_b_c2i";
    let cfg = config(case);
    let f = fixture(&format!("{case}.safetensors"));
    let sd = weights::synth::state_dict(&cfg.weight_shapes());
    let cond = condition(case, &cfg);
    let b = cond.len(&cfg);
    let mut r = runner_on(&cfg, sd, b, 4.0, 1, Dtype::F32, make(false));
    let got = r.teacher_force(&cond, &tokens(case, "image_tokens")).unwrap();
    let positions = f.i64("logit_positions").unwrap().1;
    let want = f.f32("logits_teacher_at").unwrap().1;
    let (n, v) = (cfg.block_size, cfg.vocab_size);
    let mut sel = Vec::with_capacity(want.len());
    for r in 0..2 * b {
        for &p in &positions {
            sel.extend_from_slice(&got[(r * n + p as usize) * v..(r * n + p as usize + 1) * v]);
        }
    }
    let err = rel_l2(&sel, &want);
    assert!(err <= 1e-5, "GPT-B teacher-forced logits rel L2 {err:e}");
    let (margin, argmax_want) = (f.f32("margin_teacher").unwrap().1, f.i64("argmax_teacher").unwrap().1);
    for (i, (m, a)) in margin.iter().zip(&argmax_want).enumerate() {
        if *m >= 1e-3 {
            assert_eq!(
                argmax(&got[i * v..(i + 1) * v]) as i64,
                *a,
                "GPT-B argmax at row/column {i}"
            );
        }
    }
    eprintln!("GPT-B teacher-forced logits rel L2 {err:.2e}");
}

pub fn vq_runner(case: &str, make: MakeBackend) -> VqRunner {
    let cfg = VqConfig::from_json_file(&data(&format!("{case}.config.json"))).unwrap();
    let f = fixture(&format!("{case}.safetensors"));
    let mut sd: StateDict = if case == "vq_tiny" {
        weights::load_state_dict_prefixed(&data("vq_tiny.safetensors"), "weights/").unwrap()
    } else {
        let shapes = weights::synth::shapes_from_json(&f.metadata().unwrap()["state_dict_shapes"]).unwrap();
        weights::synth::state_dict(&shapes)
    };
    VqRunner::new(cfg, &mut sd, true, make(false)).unwrap()
}

/// Float images within 1e-5 relative L2; uint8 at most one level off on at most 0.1% of pixels.
pub fn check_decode(case: &str, r: &mut VqRunner, i: usize) {
    let f = fixture(&format!("{case}.safetensors"));
    let (shape, codes) = f.i64(&format!("codes{i}")).unwrap();
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    let codes: Vec<u32> = codes.iter().map(|&c| c as u32).collect();
    let got = r.decode(&codes, n, h, w).unwrap();
    let want = f.f32(&format!("image{i}")).unwrap().1;
    assert_finite(&got, "image");
    let err = rel_l2(&got, &want);
    assert!(err <= 1e-5, "{case} image{i}: rel L2 {err:e}");
    let (ih, iw) = (h * r.cfg.downsample(), w * r.cfg.downsample());
    let u8s = to_u8_hwc(&got, n, ih, iw);
    let want_u8 = f.u8(&format!("image{i}_u8")).unwrap().1;
    let off: Vec<i32> = u8s
        .iter()
        .zip(&want_u8)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .collect();
    let max = off.iter().copied().max().unwrap_or(0);
    let count = off.iter().filter(|&&d| d > 0).count();
    assert!(max <= 1, "{case} image{i}_u8: a pixel is {max} levels off");
    assert!(
        count as f64 <= 0.001 * off.len() as f64,
        "{case} image{i}_u8: {count} of {} values differ",
        off.len()
    );
    eprintln!("{case} image{i} ({n}×{h}×{w} codes): rel L2 {err:.2e}, {count} uint8 values one level off");
}

pub fn check_encode(case: &str, r: &mut VqRunner) {
    let f = fixture(&format!("{case}.safetensors"));
    let (shape, x) = f.f32("input_image").unwrap();
    let (n, s) = (shape[0], shape[2]);
    let codes = r.encode(&x, n, s, s).unwrap();
    let want: Vec<u32> = f.i64("encoded_codes").unwrap().1.iter().map(|&c| c as u32).collect();
    assert_eq!(codes, want, "{case}: encoded codes");
    let g = s / r.cfg.downsample();
    let rec = r.decode(&codes, n, g, g).unwrap();
    let err = rel_l2(&rec, &f.f32("reconstruction").unwrap().1);
    assert!(err <= 1e-5, "{case}: reconstruction rel L2 {err:e}");
    eprintln!("{case}: {} codes equal, reconstruction rel L2 {err:.2e}", codes.len());
}
