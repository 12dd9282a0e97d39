//! `sampling` (kernels/sampling.cu) on the CUDA emulator against `backend::cpu::sampling`.
//!
//! The kernel reproduces the CPU sampler operation for operation (same f32 operations in the same order, the same
//! f64 running sum for top-p, the same Philox stream), so tokens must be *equal* for every draw: a token is not a
//! continuous output with an error to bound. The one thing that could legitimately differ is a CDF boundary moved
//! by summation order; the kernel keeps the CPU's order everywhere, so no draw is excused here, and a mismatch is a
//! bug. A χ² test checks the draws against the exact filtered distribution from `sampler::probabilities`, and the
//! Philox stream is checked word for word against `rng::philox4x32_10` / `rng::uniform`.

use llamagen::backend::cpu::sampling::{sampling as cpu_sampling, SamplingScratch};
use llamagen::backend::cuda::emu::{EmuDevice, Sched};
use llamagen::backend::cuda::kernels::StepState;
use llamagen::backend::cuda::launch::DevPtrMut;
use llamagen::backend::cuda::sampling::{sampling, sampling_uniform, sampling_workspace_len};
use llamagen::runtime::StepParams;
use llamagen::sample::rng;
use llamagen::sample::sampler::{self, SamplerScratch, SamplingParams};

use crate::support::devices::*;
use crate::support::emu_check::*;

fn step_state(seed: u64, step: u32, cfg_active: bool) -> StepState {
    StepState {
        pos: 0,
        step,
        cfg_active: cfg_active as u32,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
    }
}

/// One launch: tokens from the kernel (f32 or bf16 logits) for the given step.
#[allow(clippy::too_many_arguments)]
fn gpu_tokens<D: TestDevice>(
    dev: &D,
    logits: &[f32],
    bf: bool,
    index: &[i32],
    rows: usize,
    vocab: usize,
    cfg_scale: f32,
    p: &SamplingParams,
    st: StepState,
    block: Option<u32>,
) -> Vec<i32> {
    let b = index.len();
    let ib = dev.upload(index, "image_index");
    let sb = dev.upload(&[st], "step");
    let mut tb = dev.alloc::<i32>(rows, "tokens");
    let mut wb = dev.alloc::<u32>(sampling_workspace_len(b, vocab), "workspace");
    if bf {
        let lb = dev.upload(&to_bf16(logits), "logits");
        sampling(
            dev,
            lb.ptr(),
            ib.ptr(),
            sb.ptr(),
            tb.ptr_mut(),
            wb.ptr_mut(),
            b,
            rows,
            vocab,
            cfg_scale,
            p,
            block,
        )
        .unwrap();
    } else {
        let lb = dev.upload(logits, "logits");
        sampling(
            dev,
            lb.ptr(),
            ib.ptr(),
            sb.ptr(),
            tb.ptr_mut(),
            wb.ptr_mut(),
            b,
            rows,
            vocab,
            cfg_scale,
            p,
            block,
        )
        .unwrap();
    }
    tb.to_vec()
}

#[allow(clippy::too_many_arguments)]
fn cpu_tokens(
    logits: &[f32],
    index: &[i32],
    rows: usize,
    vocab: usize,
    cfg_scale: f32,
    p: &SamplingParams,
    st: StepState,
    scratch: &mut SamplingScratch,
) -> Vec<i32> {
    let step = StepParams {
        pos: 0,
        step: st.step,
        cfg_active: st.cfg_active != 0,
        seed: u64::from(st.seed_lo) | (u64::from(st.seed_hi) << 32),
    };
    let mut t = vec![-7; rows];
    cpu_sampling(logits, rows, vocab, index, cfg_scale, p, &step, scratch, &mut t);
    t
}

/// Logit rows of the kinds the sampler must handle.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Continuous values, no ties.
    Smooth,
    /// Multiples of 0.25 in [-2, 2]: long runs of ties everywhere, the top-k boundary and the maximum included.
    Ties,
    /// Normal values with a quarter at -1e30 and a few large ones (1e4 scale).
    Extreme,
}

fn make_logits(rng: &mut Rng, n: usize, kind: Kind) -> Vec<f32> {
    (0..n)
        .map(|_| match kind {
            Kind::Smooth => rng.uniform(-6.0, 6.0),
            Kind::Ties => (rng.below(17) as f32 - 8.0) * 0.25,
            Kind::Extreme => match rng.below(16) {
                0..=3 => -1e30,
                4 => 1e4 + rng.uniform(-3.0, 3.0),
                _ => rng.uniform(-30.0, 30.0),
            },
        })
        .collect()
}

struct Case {
    images: usize,
    cfg: bool,
    cfg_active: bool,
    vocab: usize,
    kind: Kind,
    block: Option<u32>,
}

/// Runs the kernel and the CPU over `steps` steps for every parameter set; returns the number of draws compared.
fn check_case<D: TestDevice>(
    dev: &D,
    rng: &mut Rng,
    c: &Case,
    params: &[SamplingParams],
    steps: u32,
    bf: bool,
) -> usize {
    let rows = if c.cfg { 2 * c.images } else { c.images };
    let mut logits = make_logits(rng, rows * c.vocab, c.kind);
    if bf {
        round_all(&mut logits);
    }
    // Global image indices as a sharded run would have them, one negative to pin the sign extension.
    let index: Vec<i32> = (0..c.images as i32)
        .map(|i| if i == 1 { -5 } else { 3 * i + 11 })
        .collect();
    let seed = rng.next_u64();
    let mut scratch = SamplingScratch::new();
    let mut draws = 0;
    for p in params {
        for s in 0..steps {
            let st = step_state(seed, s * 37 + 1, c.cfg_active);
            let want = cpu_tokens(&logits, &index, rows, c.vocab, 4.0, p, st, &mut scratch);
            let got = gpu_tokens(dev, &logits, bf, &index, rows, c.vocab, 4.0, p, st, c.block);
            assert_eq!(
                got, want,
                "images {} cfg {} active {} V {} {:?} block {:?} bf16 {bf} {:?} step {}",
                c.images, c.cfg, c.cfg_active, c.vocab, c.kind, c.block, p, st.step
            );
            if c.cfg {
                assert_eq!(got[..c.images], got[c.images..], "both CFG halves get the token");
            }
            draws += c.images;
        }
    }
    draws
}

fn param_grid(vocab: usize, ks: &[usize], temps: &[f32], ps: &[f32]) -> Vec<SamplingParams> {
    let mut v = Vec::new();
    for &top_k in ks {
        for &temperature in temps {
            for &top_p in ps {
                v.push(SamplingParams {
                    temperature,
                    top_k: top_k.min(vocab),
                    top_p,
                });
            }
        }
    }
    v
}

const KS: [usize; 5] = [0, 1, 2, 50, usize::MAX];
const TEMPS: [f32; 4] = [0.0, 0.5, 1.0, 2.0];
const PS: [f32; 3] = [0.3, 0.9, 1.0];

#[test]
fn sampling_matches_cpu_small_vocab() {
    sampling_matches_cpu_small_vocab_on(&EmuDevice::new());
}

fn sampling_matches_cpu_small_vocab_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(0x5a3b);
    let mut draws = 0;
    for bf in [false, true] {
        for (images, cfg, cfg_active) in [
            (1, false, false),
            (3, false, false),
            (1, true, true),
            (3, true, true),
            (3, true, false),
        ] {
            for kind in [Kind::Smooth, Kind::Ties, Kind::Extreme] {
                let c = Case {
                    images,
                    cfg,
                    cfg_active,
                    vocab: 512,
                    kind,
                    block: None,
                };
                let params = param_grid(512, &KS, &TEMPS, &PS);
                draws += check_case(dev, &mut rng, &c, &params, 2, bf);
            }
        }
    }
    eprintln!("V = 512: {draws} draws equal to the CPU's");
}

/// Odd vocabulary (partial blocks of 64 survivors, partial thread slices) and block sizes that are not powers of
/// two or not warp multiples, under all three schedules.
#[test]
fn sampling_matches_cpu_odd_shapes_and_schedules() {
    sampling_matches_cpu_odd_shapes_and_schedules_on(&EmuDevice::new());
}

fn sampling_matches_cpu_odd_shapes_and_schedules_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(0x77);
    let params = param_grid(1000, &[0, 2, 50, 333], &[0.0, 1.0], &[0.3, 1.0]);
    for (sched, block) in SCHEDS.iter().zip([Some(96), Some(100), None]) {
        let dev = &dev.with_sched(*sched);
        for kind in [Kind::Smooth, Kind::Ties] {
            let c = Case {
                images: 3,
                cfg: true,
                cfg_active: true,
                vocab: 1000,
                kind,
                block,
            };
            check_case(dev, &mut rng, &c, &params, 1, false);
        }
    }
    // A tiny vocabulary: top-k over a handful of entries, one partial block.
    let dev = &dev.with_sched(Sched::Env);
    let params = param_grid(5, &[0, 1, 2, 4], &[0.0, 1.0], &[0.3, 0.9, 1.0]);
    for kind in [Kind::Smooth, Kind::Ties] {
        let c = Case {
            images: 2,
            cfg: false,
            cfg_active: false,
            vocab: 5,
            kind,
            block: Some(32),
        };
        check_case(dev, &mut rng, &c, &params, 3, true);
    }
}

/// The LlamaGen vocabulary (16384) at a few settings: the default (top-k 2000 under CFG), all filters, top-p alone
/// over the whole vocabulary (the largest sort).
#[test]
fn sampling_matches_cpu_llamagen_vocab() {
    sampling_matches_cpu_llamagen_vocab_on(&EmuDevice::new());
}

fn sampling_matches_cpu_llamagen_vocab_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(0x16384);
    let params = [
        SamplingParams {
            temperature: 1.0,
            top_k: 2000,
            top_p: 1.0,
        },
        SamplingParams {
            temperature: 0.5,
            top_k: 50,
            top_p: 0.9,
        },
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
        },
    ];
    for (bf, kind) in [(true, Kind::Smooth), (false, Kind::Ties)] {
        let c = Case {
            images: 2,
            cfg: true,
            cfg_active: true,
            vocab: 16384,
            kind,
            block: None,
        };
        check_case(dev, &mut rng, &c, &params, 1, bf);
    }
}

/// Ties exactly at the k-th value: k cuts a run of equal values, which must all survive.
#[test]
fn sampling_keeps_ties_at_the_top_k_boundary() {
    sampling_keeps_ties_at_the_top_k_boundary_on(&EmuDevice::new());
}

fn sampling_keeps_ties_at_the_top_k_boundary_on<D: TestDevice>(dev: &D) {
    let vocab = 300;
    // 10 distinct values 0..9 (value v appears 30 times): the 45-th largest lies inside the run of 8s.
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 7) % 10) as f32 * 0.1).collect();
    let index = [0i32];
    let p = SamplingParams {
        temperature: 0.2,
        top_k: 45,
        top_p: 1.0,
    };
    let mut scratch = SamplingScratch::new();
    let mut seen = std::collections::BTreeSet::new();
    for s in 0..60 {
        let st = step_state(99, s, false);
        let want = cpu_tokens(&logits, &index, 1, vocab, 1.0, &p, st, &mut scratch);
        let got = gpu_tokens(dev, &logits, false, &index, 1, vocab, 1.0, &p, st, None);
        assert_eq!(got, want, "step {s}");
        seen.insert(((got[0] as usize * 7) % 10) as u32);
    }
    // Both the 9s and the 8s (the tie run the boundary cuts) are drawn, nothing below.
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![8, 9]);
}

/// Wilson-Hilferty upper quantile of χ²(df) at the standard normal quantile z.
fn chi2_quantile(df: f64, z: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

/// Many draws of one logit row (many images × steps) against the exact filtered distribution of the CPU sampler.
#[test]
fn sampling_histogram_matches_distribution() {
    sampling_histogram_matches_distribution_on(&EmuDevice::new());
}

fn sampling_histogram_matches_distribution_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(0xc417);
    let vocab = 200;
    let row = make_logits(&mut rng, vocab, Kind::Smooth);
    for p in [
        SamplingParams {
            temperature: 1.5,
            top_k: 40,
            top_p: 1.0,
        },
        SamplingParams {
            temperature: 2.0,
            top_k: 0,
            top_p: 0.9,
        },
    ] {
        let mut probs = vec![0.0; vocab];
        sampler::probabilities(&row, &p, &mut SamplerScratch::new(vocab), &mut probs);
        let images = 128;
        let logits: Vec<f32> = (0..images).flat_map(|_| row.iter().copied()).collect();
        let index: Vec<i32> = (0..images as i32).collect();
        let mut hist = vec![0u64; vocab];
        let steps = 40;
        for s in 0..steps {
            for t in gpu_tokens(
                dev,
                &logits,
                false,
                &index,
                images,
                vocab,
                1.0,
                &p,
                step_state(2024, s, false),
                None,
            ) {
                hist[t as usize] += 1;
            }
        }
        let total = (images as u64 * steps as u64) as f64;
        // Bins with expected count < 5 are pooled; a draw outside the support fails outright.
        let (mut chi2, mut df, mut pool_e, mut pool_o) = (0.0, 0usize, 0.0, 0.0);
        for (t, (&pr, &o)) in probs.iter().zip(&hist).enumerate() {
            if pr == 0.0 {
                assert_eq!(o, 0, "token {t} has zero probability but was drawn");
                continue;
            }
            let e = pr as f64 * total;
            if e < 5.0 {
                pool_e += e;
                pool_o += o as f64;
            } else {
                chi2 += (o as f64 - e).powi(2) / e;
                df += 1;
            }
        }
        if pool_e > 0.0 {
            chi2 += (pool_o - pool_e).powi(2) / pool_e;
            df += 1;
        }
        let df = (df - 1) as f64;
        // Upper 1e-4 tail (z = 3.719): a correct sampler fails this once in 10^4 seeds; the seeds are fixed.
        let limit = chi2_quantile(df, 3.719);
        eprintln!("{p:?}: chi2 {chi2:.1} on {df} dof (limit {limit:.1})");
        assert!(chi2 < limit, "{p:?}: chi2 {chi2} over {limit} ({df} dof)");
    }
}

#[test]
fn philox_stream_matches_rng() {
    philox_stream_matches_rng_on(&EmuDevice::new());
}

fn philox_stream_matches_rng_on<D: TestDevice>(dev: &D) {
    let index: Vec<i32> = vec![0, 1, 2, 77, 1 << 20, i32::MAX, -1, -123_456, i32::MIN];
    let n = index.len();
    let ib = dev.upload(&index, "image_index");
    for (seed, step) in [
        (0u64, 0u32),
        (42, 1),
        (0xdead_beef_0123_4567, 255),
        (u64::MAX, u32::MAX),
        (7 << 32, 1023),
    ] {
        let sb = dev.upload(&[step_state(seed, step, true)], "step");
        let mut wb = dev.alloc::<u32>(4 * n, "words");
        let mut ub = dev.alloc::<f32>(n, "u");
        sampling_uniform(dev, ib.ptr(), sb.ptr(), wb.ptr_mut(), ub.ptr_mut(), n).unwrap();
        let (w, u) = (wb.to_vec(), ub.to_vec());
        for (i, &idx) in index.iter().enumerate() {
            let idx64 = idx as u64;
            let want = rng::philox4x32_10(
                [step, 0, idx64 as u32, (idx64 >> 32) as u32],
                [seed as u32, (seed >> 32) as u32],
            );
            assert_eq!(w[4 * i..4 * i + 4], want, "seed {seed:#x} step {step} index {idx}");
            assert_eq!(
                u[i].to_bits(),
                rng::uniform(seed, idx64, step).to_bits(),
                "seed {seed:#x} step {step} index {idx}"
            );
        }
    }
    // The published known-answer vector of Philox4x32-10 (Random123 kat_vectors): counter and key all ones.
    let want = rng::philox4x32_10([u32::MAX; 4], [u32::MAX; 2]);
    assert_eq!(want, [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
}

#[test]
fn sampling_rejects_bad_arguments() {
    let dev = EmuDevice::new();
    let (b, v) = (2usize, 64usize);
    let lb = dev.upload(&vec![0.0f32; 2 * b * v], "logits");
    let ib = dev.upload(&[0i32, 1], "image_index");
    let sb = dev.upload(&[step_state(1, 0, true)], "step");
    let mut tb = dev.alloc::<i32>(2 * b, "tokens");
    let mut wb = dev.alloc::<u32>(sampling_workspace_len(b, v), "workspace");
    let ok = SamplingParams::default();
    let mut run = |images: usize, rows: usize, vocab: usize, p: SamplingParams, block: Option<u32>| {
        sampling(
            &dev,
            lb.ptr(),
            ib.ptr(),
            sb.ptr(),
            tb.ptr_mut(),
            wb.ptr_mut(),
            images,
            rows,
            vocab,
            4.0,
            &p,
            block,
        )
    };
    assert!(run(b, 2 * b, v, ok, None).is_ok());
    assert!(run(b, 2 * b, v, ok, Some(33)).is_ok());
    assert!(run(0, 0, v, ok, None).is_err(), "no images");
    assert!(run(b, 2 * b, 0, ok, None).is_err(), "empty vocabulary");
    assert!(run(b, 3, v, ok, None).is_err(), "rows neither B nor 2B");
    assert!(
        run(b, 2 * b, 2 * v, ok, None).is_err(),
        "logits and workspace too short"
    );
    assert!(run(3, 3, v, ok, None).is_err(), "image_index too short");
    assert!(run(b, 2 * b, v, ok, Some(16)).is_err(), "block below a warp");
    assert!(run(b, 2 * b, v, ok, Some(2048)).is_err(), "block above 1024");
    let bad_p = SamplingParams { top_p: 0.0, ..ok };
    assert!(run(b, 2 * b, v, bad_p, None).is_err(), "top-p 0");
    let bad_t = SamplingParams {
        temperature: -1.0,
        ..ok
    };
    assert!(run(b, 2 * b, v, bad_t, None).is_err(), "negative temperature");
    let mut short_ws = dev.alloc::<u32>(sampling_workspace_len(b, v) - 1, "short workspace");
    assert!(sampling(
        &dev,
        lb.ptr(),
        ib.ptr(),
        sb.ptr(),
        tb.ptr_mut(),
        short_ws.ptr_mut(),
        b,
        2 * b,
        v,
        4.0,
        &ok,
        None
    )
    .is_err());
    let mut short_tokens = dev.alloc::<i32>(2 * b - 1, "short tokens");
    assert!(sampling(
        &dev,
        lb.ptr(),
        ib.ptr(),
        sb.ptr(),
        short_tokens.ptr_mut(),
        wb.ptr_mut(),
        b,
        2 * b,
        v,
        4.0,
        &ok,
        None
    )
    .is_err());
    // A workspace that is not 8-byte aligned (the kernel stores u64 sort keys in it).
    let mut big_ws = dev.alloc::<u32>(sampling_workspace_len(b, v) + 1, "big workspace");
    // SAFETY: one word into a live buffer, one word shorter; the launch is rejected before any access.
    let skewed = unsafe { DevPtrMut::<u32>::from_raw(big_ws.ptr_mut().addr() + 4, sampling_workspace_len(b, v)) };
    let e = sampling(
        &dev,
        lb.ptr(),
        ib.ptr(),
        sb.ptr(),
        tb.ptr_mut(),
        skewed,
        b,
        2 * b,
        v,
        4.0,
        &ok,
        None,
    );
    assert!(e.unwrap_err().to_string().contains("aligned"));
}

/// The cases above on the GPU (scripts/gpu-check.sh); fails without one.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_sampling_matches_cpu() {
    let g = GpuTest::new();
    sampling_matches_cpu_small_vocab_on(&g);
    sampling_matches_cpu_odd_shapes_and_schedules_on(&g);
    sampling_matches_cpu_llamagen_vocab_on(&g);
    sampling_keeps_ties_at_the_top_k_boundary_on(&g);
    sampling_histogram_matches_distribution_on(&g);
    philox_stream_matches_rng_on(&g);
}
