//! Sampling against the official fixture (tests/data/sampling.safetensors), Philox known answers, and
//! goodness-of-fit of the sampler driven by the per-image counter stream.
use llamagen::sample::rng::{philox4x32, philox4x32_10, uniform};
use llamagen::sample::sampler::{cfg_mix, probabilities, sample, SamplerScratch, SamplingParams};
use safetensors::SafeTensors;

const V: usize = 16384;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sampling.safetensors");
        Fixture {
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}")),
        }
    }

    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        let data = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), data)
    }

    /// (key, params) per `probs{i}`, from the metadata written by the fixture generator.
    fn combos(&self) -> Vec<(String, SamplingParams)> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("combos"))
            .expect("metadata `combos`");
        let list: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
        list.iter()
            .map(|c| {
                let p = SamplingParams {
                    temperature: c["temperature"].as_f64().unwrap() as f32,
                    top_k: c["top_k"].as_u64().unwrap() as usize,
                    top_p: c["top_p"].as_f64().unwrap() as f32,
                };
                (c["key"].as_str().unwrap().to_string(), p)
            })
            .collect()
    }
}

fn sp(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
    }
}

fn max_abs_and_rel_l2(got: &[f32], want: &[f32]) -> (f64, f64) {
    let (mut max, mut num, mut den) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = f64::from(g) - f64::from(w);
        max = max.max(d.abs());
        num += d * d;
        den += f64::from(w) * f64::from(w);
    }
    (max, (num / den).sqrt())
}

#[test]
fn probabilities_match_official() {
    let fx = Fixture::load();
    let (shape, logits) = fx.tensor("logits");
    assert_eq!(shape, [6, V]);
    let combos = fx.combos();
    assert_eq!(combos.len(), 7);
    let mut scratch = SamplerScratch::new(V);
    let mut probs = vec![0.0f32; V];
    for (key, p) in &combos {
        p.validate().unwrap();
        let (_, want) = fx.tensor(key);
        for r in 0..6 {
            let row = &logits[r * V..(r + 1) * V];
            let want = &want[r * V..(r + 1) * V];
            probabilities(row, p, &mut scratch, &mut probs);
            let (max, rel) = max_abs_and_rel_l2(&probs, want);
            assert!(
                max <= 1e-5 && rel <= 1e-5,
                "{key} {p:?} row {r}: max abs {max:e}, rel L2 {rel:e}"
            );
            // Ties at the top-k boundary, the top-p cut and the underflow of temperature 1e-5 all show up
            // only in which entries are exactly zero.
            for v in 0..V {
                assert_eq!(
                    probs[v] == 0.0,
                    want[v] == 0.0,
                    "{key} row {r} token {v}: {} vs {}",
                    probs[v],
                    want[v]
                );
            }
        }
    }
}

#[test]
fn top_k_keeps_ties_at_the_boundary() {
    let fx = Fixture::load();
    let (_, logits) = fx.tensor("logits");
    let p = sp(1.0, 51, 1.0);
    let mut probs = vec![0.0f32; V];
    probabilities(&logits[..V], &p, &mut SamplerScratch::new(V), &mut probs);
    // Row 0 has three equal values at rank 50..52, so 53 tokens survive a top-51 filter.
    assert_eq!(probs.iter().filter(|&&x| x > 0.0).count(), 53);
}

#[test]
fn cfg_mix_matches_official() {
    let fx = Fixture::load();
    let (_, logits) = fx.tensor("logits");
    let (shape, want) = fx.tensor("cfg_mixed_4.0");
    assert_eq!(shape, [3, V]);
    let mut out = vec![0.0f32; V];
    for r in 0..3 {
        let cond = &logits[r * V..(r + 1) * V];
        let uncond = &logits[(r + 3) * V..(r + 4) * V];
        cfg_mix(cond, uncond, 4.0, &mut out);
        // Same expression order as the reference, so the result is bit-exact.
        for v in 0..V {
            assert_eq!(out[v].to_bits(), want[r * V + v].to_bits(), "row {r} token {v}");
        }
    }
}

/// Random123 tests/kat_vectors (github.com/DEShawResearch/random123), the "philox4x32 7" and "philox4x32 10"
/// lines: counter (4 words), key (2 words), expected output (4 words).
#[test]
fn philox_known_answers() {
    type Kat = (u32, [u32; 4], [u32; 2], [u32; 4]);
    let pi_ctr = [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344];
    let pi_key = [0xa4093822, 0x299f31d0];
    let kats: [Kat; 6] = [
        (7, [0; 4], [0; 2], [0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48]),
        (
            7,
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662],
        ),
        (7, pi_ctr, pi_key, [0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a]),
        (10, [0; 4], [0; 2], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
        (
            10,
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (10, pi_ctr, pi_key, [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
    ];
    for (rounds, ctr, key, want) in kats {
        assert_eq!(
            philox4x32(ctr, key, rounds),
            want,
            "rounds {rounds} ctr {ctr:08x?} key {key:08x?}"
        );
        if rounds == 10 {
            assert_eq!(philox4x32_10(ctr, key), want);
        }
    }
}

#[test]
fn uniform_stream_layout() {
    // The documented layout: key = seed words, counter = [step, 0, index lo, index hi], top 24 bits of word 0.
    let (seed, index, step) = (0x0123_4567_89ab_cdefu64, 0x0000_0005_0000_0007u64, 42u32);
    let w = philox4x32_10([step, 0, 7, 5], [0x89ab_cdef, 0x0123_4567])[0];
    assert_eq!(uniform(seed, index, step), (w >> 8) as f32 / 16_777_216.0);

    // A pure function: recomputing (in any order) gives the same bits.
    let a: Vec<f32> = (0..64).map(|t| uniform(9, 3, t)).collect();
    let b: Vec<f32> = (0..64).rev().map(|t| uniform(9, 3, t)).collect();
    assert!(a.iter().zip(b.iter().rev()).all(|(x, y)| x.to_bits() == y.to_bits()));

    let mut by_step = Vec::new();
    let mut by_index = Vec::new();
    for i in 0..2000u32 {
        let (s, x) = (uniform(1, 0, i), uniform(1, u64::from(i), 0));
        assert!((0.0..1.0).contains(&s) && (0.0..1.0).contains(&x));
        by_step.push(s.to_bits());
        by_index.push(x.to_bits());
    }
    // 24-bit values: a handful of birthday collisions among 2000 is expected, a stuck stream is not.
    for v in [&mut by_step, &mut by_index] {
        v.sort_unstable();
        v.dedup();
        assert!(v.len() > 1990, "{} distinct of 2000", v.len());
    }
    assert_ne!(uniform(1, 0, 0), uniform(2, 0, 0));
}

/// Upper tail of the chi-square distribution, Q(df/2, x/2), through the power series of the lower regularised
/// gamma function. ln Γ is exact for the integer and half-integer shapes a chi-square needs.
fn chi2_sf(x: f64, df: usize) -> f64 {
    let a = df as f64 / 2.0;
    let half_x = x / 2.0;
    // ln Γ(a + 1) by recursion down to Γ(1) = 1 or Γ(1/2) = √π.
    let mut ln_gamma = if df.is_multiple_of(2) {
        0.0
    } else {
        0.5 * std::f64::consts::PI.ln()
    };
    let mut s = if df.is_multiple_of(2) { 1.0 } else { 0.5 };
    while s <= a + 0.25 {
        ln_gamma += s.ln();
        s += 1.0;
    }
    let mut term = (-half_x + a * half_x.ln() - ln_gamma).exp();
    let mut sum = term;
    let mut n = 1.0;
    while term > sum * 1e-17 {
        term *= half_x / (a + n);
        sum += term;
        n += 1.0;
    }
    1.0 - sum
}

#[test]
fn chi2_tail_is_right() {
    // df = 2 is exponential: Q = exp(-x/2). df = 1: Q = erfc(sqrt(x/2)); at x = 3.841459 it is 0.05.
    for x in [0.5, 3.0, 20.0] {
        assert!((chi2_sf(x, 2) - (-x / 2.0f64).exp()).abs() < 1e-12);
    }
    assert!((chi2_sf(3.841459, 1) - 0.05).abs() < 1e-6);
    // Table value: chi-square(10) 0.999 quantile 29.588.
    assert!((chi2_sf(29.588, 10) - 0.001).abs() < 1e-5);
}

fn lcg_logits(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut st = seed;
    (0..n)
        .map(|_| {
            st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((st >> 40) as f32 / 16_777_216.0 - 0.5) * scale
        })
        .collect()
}

/// Draws `n` tokens the way a run does (image index x step grid, fixed seed) and checks them against the exact
/// probabilities: filtered-out tokens never appear, and the counts pass a chi-square test at p = 1e-6.
fn goodness_of_fit(logits: &[f32], p: SamplingParams, seed: u64, n: usize) {
    let v = logits.len();
    let mut scratch = SamplerScratch::new(v);
    let mut probs = vec![0.0f32; v];
    probabilities(logits, &p, &mut scratch, &mut probs);
    let mut counts = vec![0u64; v];
    for i in 0..n {
        let u = uniform(seed, (i / 256) as u64, (i % 256) as u32);
        counts[sample(logits, &p, u, &mut scratch) as usize] += 1;
    }
    let (mut chi2, mut bins) = (0.0f64, 0usize);
    for (t, (&c, &q)) in counts.iter().zip(&probs).enumerate() {
        if q == 0.0 {
            assert_eq!(c, 0, "token {t} has zero probability but was drawn {c} times ({p:?})");
            continue;
        }
        let e = n as f64 * f64::from(q);
        chi2 += (c as f64 - e).powi(2) / e;
        bins += 1;
    }
    let pval = chi2_sf(chi2, bins - 1);
    assert!(pval > 1e-6, "{p:?}: chi2 {chi2:.1} over {bins} bins, p = {pval:e}");
}

#[test]
fn draws_follow_the_probabilities() {
    let small = [0.3f32, -1.2, 2.0, 0.0, 1.1, -0.4, 0.9, -2.5, 1.7, 0.2];
    goodness_of_fit(&small, sp(1.0, 0, 1.0), 11, 200_000);
    goodness_of_fit(&small, sp(0.6, 4, 1.0), 12, 200_000);

    let wide = lcg_logits(2048, 5, 8.0);
    goodness_of_fit(&wide, sp(1.0, 40, 1.0), 13, 100_000);
    goodness_of_fit(&wide, sp(1.3, 100, 0.7), 14, 100_000);
}

#[test]
fn a_wrong_sampler_would_fail() {
    // Guard against a test that passes anything: the same draws scored against a slightly different
    // distribution (temperature 1.05 instead of 1.0) must be rejected.
    let logits = [0.3f32, -1.2, 2.0, 0.0, 1.1, -0.4, 0.9, -2.5, 1.7, 0.2];
    let p = sp(1.0, 0, 1.0);
    let q = SamplingParams { temperature: 1.05, ..p };
    let mut scratch = SamplerScratch::new(10);
    let mut probs = [0.0f32; 10];
    probabilities(&logits, &q, &mut scratch, &mut probs);
    let n = 200_000;
    let mut counts = [0u64; 10];
    for i in 0..n {
        counts[sample(
            &logits,
            &p,
            uniform(11, (i / 256) as u64, (i % 256) as u32),
            &mut scratch,
        ) as usize] += 1;
    }
    let chi2: f64 = counts
        .iter()
        .zip(&probs)
        .map(|(&c, &q)| (c as f64 - n as f64 * f64::from(q)).powi(2) / (n as f64 * f64::from(q)))
        .sum();
    assert!(chi2_sf(chi2, 9) < 1e-6, "chi2 {chi2}");
}

#[test]
fn sample_is_the_inverse_cdf_of_probabilities() {
    let fx = Fixture::load();
    let (_, logits) = fx.tensor("logits");
    let mut scratch = SamplerScratch::new(V);
    let mut probs = vec![0.0f32; V];
    for (key, p) in fx.combos() {
        for r in 0..6 {
            let row = &logits[r * V..(r + 1) * V];
            probabilities(row, &p, &mut scratch, &mut probs);
            let mut cdf = Vec::with_capacity(V);
            let mut c = 0.0f64;
            for &q in &probs {
                c += f64::from(q);
                cdf.push(c);
            }
            for j in 0..200 {
                let u = (j as f32 + 0.5) / 200.0;
                let t = sample(row, &p, u, &mut scratch) as usize;
                assert!(probs[t] > 0.0, "{key} row {r} u {u}: drew filtered token {t}");
                let target = f64::from(u) * c;
                // Skip draws that land within float noise of an interval boundary.
                let near = |x: f64| (x - target).abs() < 1e-5;
                if near(cdf[t]) || (t > 0 && near(cdf[t - 1])) {
                    continue;
                }
                let lo = if t == 0 { 0.0 } else { cdf[t - 1] };
                assert!(
                    lo <= target && target < cdf[t],
                    "{key} row {r} u {u}: token {t} [{lo}, {})",
                    cdf[t]
                );
            }
        }
    }
}

#[test]
fn edge_cases() {
    let mut logits = lcg_logits(V, 3, 6.0);
    // A clear winner, so near-greedy settings leave the runner-up no measurable mass even at u -> 1.
    let argmax = 4321;
    logits[argmax as usize] = 4.0;
    let mut s = SamplerScratch::new(V);
    for u in [0.0, 0.5, 1.0 - f32::EPSILON / 2.0] {
        let greedy = sp(1.0, 1, 1.0);
        assert_eq!(sample(&logits, &greedy, u, &mut s), argmax);
        let cold = sp(0.0, 0, 1.0);
        assert_eq!(sample(&logits, &cold, u, &mut s), argmax);
        let nucleus = sp(0.01, 0, 0.01);
        assert_eq!(sample(&logits, &nucleus, u, &mut s), argmax);
    }
    // u just below 1 must still land on a token that can be drawn: the last survivor in id order.
    let p = sp(1.0, 7, 1.0);
    let mut probs = vec![0.0f32; V];
    probabilities(&logits, &p, &mut s, &mut probs);
    let last = probs.iter().rposition(|&q| q > 0.0).unwrap() as u32;
    assert_eq!(sample(&logits, &p, 1.0 - f32::EPSILON / 2.0, &mut s), last);
    // k beyond the vocabulary keeps everything; a scratch sized for a smaller vocabulary grows.
    let mut tiny = SamplerScratch::new(4);
    let all = sp(1.0, 10 * V, 1.0);
    probabilities(&logits, &all, &mut tiny, &mut probs);
    assert!(probs.iter().all(|&q| q > 0.0));
}

fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// `cargo test --release --test sampling -- --ignored --nocapture` prints the per-call cost of the hot path.
#[test]
#[ignore]
fn bench_sample() {
    let logits = lcg_logits(V, 17, 6.0);
    let mut s = SamplerScratch::new(V);
    for (name, p) in [
        ("top_k 2000", sp(1.0, 2000, 1.0)),
        ("top_k 2000 temperature 0.9", sp(0.9, 2000, 1.0)),
        ("top_k 0", sp(1.0, 0, 1.0)),
        ("top_k 1000 top_p 0.9", sp(1.0, 1000, 0.9)),
        ("top_k 0 top_p 0.9", sp(1.0, 0, 0.9)),
    ] {
        if std::env::var("BENCH_CASE").is_ok_and(|c| c != name) {
            continue;
        }
        // CPU time of this thread (Linux schedstat), not wall time: the build machine is shared.
        let iters = 3000u32;
        let mut acc = 0u64;
        let (t0, c0) = (std::time::Instant::now(), thread_cpu_ns());
        for i in 0..iters {
            acc += u64::from(sample(&logits, &p, uniform(0, u64::from(i), i), &mut s));
        }
        let ns = match (c0, thread_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64,
            _ => t0.elapsed().as_nanos() as f64,
        };
        let us = ns / 1e3 / f64::from(iters);
        println!("sample() V={V} {name}: {us:.1} us/call (checksum {acc})");
    }
}
