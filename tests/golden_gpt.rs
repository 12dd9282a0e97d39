//! The GPT against the official implementation's float32 fixtures: teacher-forced logits, greedy generation, the
//! KV cache, bf16 mode and batch invariance, each on every CPU kernel family this machine has
//! (`portable::*`, `avx2::*`, `avx512::*`, `avx512bf16::*`; the others are reported as ignored).
mod support;
use llamagen::backend::cpu::CpuBackend;
use llamagen::model::gpt::{Condition, GptOptions, GptRunner};
use llamagen::model::Dtype;
use llamagen::sample::sampler::SamplingParams;
use support::golden::*;
use support::*;

cpu_family_tests!(
    tiny_c2i_teacher_forced_logits,
    tiny_t2i_teacher_forced_logits,
    tiny_c2i_greedy,
    tiny_t2i_greedy,
    gpt_b_teacher_forced_logits,
    kv_cache_decode_equals_full_recomputation,
    bf16_mode_stays_within_its_bound,
    demo_model_matches_the_portable_family,
    results_do_not_depend_on_the_batch,
);

fn tiny_c2i_teacher_forced_logits(make: MakeBackend) {
    teacher_forced("gpt_tiny_c2i", make);
}

fn tiny_t2i_teacher_forced_logits(make: MakeBackend) {
    teacher_forced("gpt_tiny_t2i", make);
}

fn tiny_c2i_greedy(make: MakeBackend) {
    greedy("gpt_tiny_c2i", "greedy_cfg", 4.0, make);
    greedy("gpt_tiny_c2i", "greedy_nocfg", 1.0, make);
}

fn tiny_t2i_greedy(make: MakeBackend) {
    greedy("gpt_tiny_t2i", "greedy_cfg", 7.5, make);
    greedy("gpt_tiny_t2i", "greedy_nocfg", 1.0, make);
}

fn gpt_b_teacher_forced_logits(make: MakeBackend) {
    gpt_b_teacher_forced(make);
}

/// The KV-cache path (prefill, then one position per step) equals a full recomputation of every position in one
/// pass, for c2i and t2i (whose padding mask applies to image queries too).
fn kv_cache_equals_full(case: &str, make: MakeBackend) {
    let cfg = config(case);
    let cond = condition(case, &cfg);
    let b = cond.len(&cfg);
    let toks = tokens(case, "image_tokens");
    let mut r = runner_on(&cfg, tiny_weights(case), b, 4.0, 1, Dtype::F32, make(false));
    let cached = r.teacher_force(&cond, &toks).unwrap();
    let (n, v, t) = (cfg.block_size, cfg.vocab_size, cfg.cls_token_num);
    let full = r.full_logits(&cond, &toks, n - 1).unwrap();
    // Column j of the cached run is position T - 1 + j of the full run.
    let mut sel = Vec::with_capacity(cached.len());
    for row in 0..2 * b {
        sel.extend_from_slice(&full[(row * (t + n - 1) + t - 1) * v..(row * (t + n - 1) + t - 1 + n) * v]);
    }
    let err = rel_l2(&cached, &sel);
    assert!(err <= 1e-6, "{case}: KV-cache vs full recomputation rel L2 {err:e}");
}

fn kv_cache_decode_equals_full_recomputation(make: MakeBackend) {
    kv_cache_equals_full("gpt_tiny_c2i", make);
    kv_cache_equals_full("gpt_tiny_t2i", make);
}

/// bf16 mode (weights, activations at the reference's rounding points and KV cache in bf16) against the float32
/// reference: within the bf16 bound, not bit equality.
fn bf16_mode_stays_within_its_bound(make: MakeBackend) {
    for case in ["gpt_tiny_c2i", "gpt_tiny_t2i"] {
        let cfg = config(case);
        let f = fixture(&format!("{case}.safetensors"));
        let cond = condition(case, &cfg);
        let b = cond.len(&cfg);
        let mut r = runner_on(&cfg, tiny_weights(case), b, 4.0, 1, Dtype::Bf16, make(true));
        let got = r.teacher_force(&cond, &tokens(case, "image_tokens")).unwrap();
        let want = f.f32("logits_teacher").unwrap().1;
        let err = rel_l2(&got, &want);
        eprintln!("{case}: bf16 teacher-forced logits rel L2 {err:.3e}");
        assert!(
            err <= BF16_TINY_BOUND,
            "{case}: bf16 logits rel L2 {err:e} > {BF16_TINY_BOUND}"
        );
        // Where the reference's top-1 margin is large against bf16 resolution, bf16 picks the same token.
        let (margin, am) = (f.f32("margin_teacher").unwrap().1, f.i64("argmax_teacher").unwrap().1);
        let v = cfg.vocab_size;
        for (i, (m, a)) in margin.iter().zip(&am).enumerate() {
            if *m >= 0.25 {
                assert_eq!(
                    argmax(&got[i * v..(i + 1) * v]) as i64,
                    *a,
                    "{case}: bf16 argmax at {i} (margin {m})"
                );
            }
        }
    }
}

/// The demo model (the one users run first) against the portable family: f32 logits within summation-order noise,
/// bf16 logits within the bf16 bound of the f32 model.
fn demo_model_matches_the_portable_family(make: MakeBackend) {
    let (cfg, load) = demo_gpt();
    let cond = Condition::Classes(vec![1, 4, 7]);
    let toks = demo_tokens(&cfg, 3);
    let want = runner(&cfg, load(), 3, 2.0, 0, Dtype::F32)
        .teacher_force(&cond, &toks)
        .unwrap();
    let f32 = runner_on(&cfg, load(), 3, 2.0, 0, Dtype::F32, make(false))
        .teacher_force(&cond, &toks)
        .unwrap();
    let bf16 = runner_on(&cfg, load(), 3, 2.0, 0, Dtype::Bf16, make(true))
        .teacher_force(&cond, &toks)
        .unwrap();
    let (e32, e16) = (rel_l2(&f32, &want), rel_l2(&bf16, &want));
    eprintln!("demo model: f32 logits vs portable rel L2 {e32:.2e}, bf16 vs f32 {e16:.2e}");
    assert!(e32 <= 1e-5, "demo f32 logits vs the portable family: rel L2 {e32:e}");
    assert!(
        e16 <= BF16_DEMO_BOUND,
        "demo bf16 logits vs f32: rel L2 {e16:e} > {BF16_DEMO_BOUND:e}"
    );
}

/// `--cfg-interval k`: tokens 0..=k+1 follow the guided logits, later tokens the cond logits alone (both halves
/// still computed and fed). Checked on a greedy run against teacher-forced cond/uncond logits of its own tokens.
#[test]
fn cfg_interval_switches_guidance_off_after_iteration_k() {
    let case = "gpt_tiny_c2i";
    let cfg = config(case);
    let cond = condition(case, &cfg);
    let b = cond.len(&cfg);
    let (k, scale) = (3i64, 4.0f32);
    let opts = GptOptions {
        dtype: Dtype::F32,
        batch: b,
        cfg_scale: scale,
        cfg_interval: k,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        },
    };
    let mut sd = tiny_weights(case);
    let mut r = GptRunner::new(cfg.clone(), &mut sd, opts, Box::new(CpuBackend::new(false))).unwrap();
    let index: Vec<u64> = (0..b as u64).collect();
    let toks = r.generate(&cond, &index, 0, |_| {}).unwrap();
    let logits = r.teacher_force(&cond, &toks).unwrap();
    let (n, v) = (cfg.block_size, cfg.vocab_size);
    let (mut guided, mut unguided) = (0, 0);
    for i in 0..b {
        for j in 0..n {
            let c = &logits[(i * n + j) * v..(i * n + j + 1) * v];
            let u = &logits[((b + i) * n + j) * v..((b + i) * n + j + 1) * v];
            // Token j comes from the prefill (j = 0) or decode iteration j - 1.
            let on = j == 0 || (j as i64 - 1) <= k;
            let row: Vec<f32> = if on {
                c.iter().zip(u).map(|(c, u)| u + scale * (c - u)).collect()
            } else {
                c.to_vec()
            };
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] >= 1e-4 {
                assert_eq!(toks[i][j] as usize, argmax(&row), "image {i} token {j} (guidance {on})");
                if on {
                    guided += 1
                } else {
                    unguided += 1
                }
            }
        }
    }
    assert!(
        guided >= 2 * b && unguided >= 4 * b,
        "too few confident tokens: {guided} guided, {unguided} unguided"
    );
}

/// An image's tokens and logits do not depend on which other images share its batch (the promise behind "same seed,
/// same image, at any --batch-size"): every image of a batch of 3 equals the same image generated alone, bit for bit,
/// sampled (top-k 50, guidance) and teacher-forced, in f32 and bf16.
fn results_do_not_depend_on_the_batch(make: MakeBackend) {
    let case = "gpt_tiny_c2i";
    let cfg = config(case);
    let classes = [3usize, 0, 7];
    let (n, v) = (cfg.block_size, cfg.vocab_size);
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let bf16 = dtype == Dtype::Bf16;
        let mut all = runner_on(&cfg, tiny_weights(case), 3, 4.0, 50, dtype, make(bf16));
        let cond = Condition::Classes(classes.to_vec());
        let toks = all.generate(&cond, &[10, 11, 12], 77, |_| {}).unwrap();
        let logits = all.teacher_force(&cond, &toks).unwrap();
        for (i, &class) in classes.iter().enumerate() {
            let mut one = runner_on(&cfg, tiny_weights(case), 1, 4.0, 50, dtype, make(bf16));
            let cond = Condition::Classes(vec![class]);
            let alone = one.generate(&cond, &[10 + i as u64], 77, |_| {}).unwrap();
            assert_eq!(
                alone[0], toks[i],
                "{dtype:?}: image {i}'s tokens alone vs in a batch of 3"
            );
            let l = one.teacher_force(&cond, &alone).unwrap();
            for (half, row) in [(0, i), (1, 3 + i)] {
                let (got, want) = (
                    &l[half * n * v..(half + 1) * n * v],
                    &logits[row * n * v..(row + 1) * n * v],
                );
                assert!(
                    got == want,
                    "{dtype:?}: image {i}'s logits (row {half}) alone vs in a batch of 3"
                );
            }
        }
    }
}
