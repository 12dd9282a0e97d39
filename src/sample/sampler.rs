//! Classifier-free guidance and the official token sampling rule (spec §5.2-5.3).
//!
//! The official code turns a logit row into full-vocabulary probabilities (temperature, top-k, top-p, softmax) and
//! calls `torch.multinomial`. Here the same filtering is done on a short list of survivors instead: top-k keeps
//! only ~k of 16384 entries, so the k-th largest value is found by a radix select (no sort), and the softmax and
//! the draw touch the survivors alone. `probabilities` expands the survivors back to a dense row for comparison
//! with the reference; `sample` never does.
use crate::{Error, Result};

/// Per-image sampling settings. The defaults are those of the official `sample()` function (no filtering);
/// the entry points override them (spec §5.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 keeps the whole vocabulary.
    pub top_k: usize,
    /// 1.0 switches the nucleus filter off.
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl SamplingParams {
    /// Temperature 0 is allowed (the official code clamps it to 1e-5, i.e. near-greedy); top-p 0 would remove
    /// nothing under the shift-right rule yet reads like "keep nothing", so it is rejected as a likely mistake.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Invalid(format!(
                "--temperature must be finite and >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!("--top-p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

/// Guided logits `uncond + scale * (cond - uncond)` in f32, evaluated in the official order so the rounding
/// matches (no fused multiply-add).
pub fn cfg_mix(cond: &[f32], uncond: &[f32], scale: f32, out: &mut [f32]) {
    assert!(
        cond.len() == uncond.len() && cond.len() == out.len(),
        "cfg_mix: length mismatch (cond {}, uncond {}, out {})",
        cond.len(),
        uncond.len(),
        out.len()
    );
    for ((o, &c), &u) in out.iter_mut().zip(cond).zip(uncond) {
        *o = u + scale * (c - u);
    }
}

/// Reusable per-row workspace so a decode step allocates nothing (sized once for the vocabulary).
pub struct SamplerScratch {
    /// Temperature-scaled logits, the values every rule below compares.
    z: Vec<f32>,
    /// Radix histogram (`HIST_COPIES` interleaved copies) and the keys of the threshold bin.
    hist: Vec<u32>,
    keys: Vec<u32>,
    /// Survivors in vocabulary order: ids and values, then (after `filter`) unnormalised softmax weights.
    ids: Vec<u32>,
    w: Vec<f32>,
    /// Sums of `w` per block of `BLOCK`, so the draw can skip whole blocks.
    blocks: Vec<f32>,
    /// Top-p only: survivors as sortable (descending value, ascending id) integer pairs.
    order: Vec<u64>,
}

/// First radix digit: sign, exponent and 3 mantissa bits, so a bin spans 1/8 of an octave.
const RADIX_SHIFT: u32 = 20;
const RADIX_BINS: usize = 1 << (32 - RADIX_SHIFT);
/// Logits crowd into a few bins, and consecutive increments of one counter would serialise on store-to-load
/// forwarding; interleaved copies keep them independent.
const HIST_COPIES: usize = 4;
const BLOCK: usize = 64;

impl SamplerScratch {
    pub fn new(vocab: usize) -> Self {
        SamplerScratch {
            z: vec![0.0; vocab],
            hist: vec![0; RADIX_BINS * HIST_COPIES],
            keys: vec![0; vocab],
            ids: vec![0; vocab],
            w: vec![0.0; vocab],
            blocks: vec![0.0; vocab.div_ceil(BLOCK)],
            order: Vec::with_capacity(vocab),
        }
    }

    fn fit(&mut self, vocab: usize) {
        if self.z.len() < vocab {
            *self = SamplerScratch::new(vocab);
        }
    }
}

/// Maps an f32 to a u32 whose unsigned order is the float order (negative values flipped entirely, positive
/// values with the sign bit set), so selection can work on integer digits. Adding +0.0 turns -0.0 into +0.0:
/// the two compare equal as floats and must share a key.
#[inline(always)]
fn ord_key(x: f32) -> u32 {
    let b = (x + 0.0).to_bits();
    b ^ ((((b as i32) >> 31) as u32) | 0x8000_0000)
}

#[inline(always)]
fn from_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// Sum of `f(x)` with independent lanes so it vectorises; the reference's softmax sum is a vectorised
/// reduction too.
#[inline(always)]
fn lane_sum_by(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &t in tail {
        s += f(t);
    }
    s
}

fn lane_sum(x: &[f32]) -> f32 {
    lane_sum_by(x, |v| v)
}

/// Maximum ignoring NaN, in lanes so it vectorises (a plain `fold(f32::max)` stays scalar).
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    tail.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// e^x for x <= 0, the only case a softmax needs once the maximum is subtracted. A libm call per element
/// dominates the whole sampler when the vocabulary is unfiltered; this form vectorises. Error within 2 ulp, and
/// it underflows gradually like libm (the reference keeps denormal probabilities, and which entries are exactly
/// zero is part of what the fixture checks).
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds x*log2(e) to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that n * LN2_HI is exact for |n| < 512 (Cody-Waite reduction).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series to degree 7: the truncation error is below 1e-8 relative for |r| <= ln2/2.
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // 2^n in two factors so that n down to -150 (denormal results) needs no out-of-range exponent.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let n1 = ni >> 1;
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    let y = p * pow2(n1) * pow2(ni.wrapping_sub(n1));
    if x < -104.0 {
        0.0
    } else {
        y
    }
}

/// The reference removes entries with `logits < kth`, so ties with the k-th value survive, and so does NaN
/// (which compares false); `x >= t` would drop NaN.
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn kept_by(x: f32, t: f32) -> bool {
    !(x < t)
}

/// Top-k on `z`: keeps every entry >= the k-th largest value (1 <= k < len), writing the survivors' ids in
/// ascending order to `s.ids` and their values to `s.w`; returns their count. The threshold comes from a radix
/// histogram of the leading key bits; only the one bin that holds it is ever ordered, so the work is O(V)
/// without a sort.
fn top_k(v: usize, k: usize, s: &mut SamplerScratch) -> usize {
    let z = &s.z[..v];
    s.hist.fill(0);
    let (h0, rest) = s.hist.split_at_mut(RADIX_BINS);
    let (h1, rest) = rest.split_at_mut(RADIX_BINS);
    let (h2, h3) = rest.split_at_mut(RADIX_BINS);
    // The largest key (NaN included, unlike the float maximum) tells where the walk down the bins starts.
    let mut top = [0u32; 4];
    let quads = z.chunks_exact(4);
    for &x in quads.remainder() {
        let key = ord_key(x);
        top[0] = top[0].max(key);
        h0[(key >> RADIX_SHIFT) as usize] += 1;
    }
    for q in quads {
        let key = [ord_key(q[0]), ord_key(q[1]), ord_key(q[2]), ord_key(q[3])];
        for l in 0..4 {
            top[l] = top[l].max(key[l]);
        }
        h0[(key[0] >> RADIX_SHIFT) as usize] += 1;
        h1[(key[1] >> RADIX_SHIFT) as usize] += 1;
        h2[(key[2] >> RADIX_SHIFT) as usize] += 1;
        h3[(key[3] >> RADIX_SHIFT) as usize] += 1;
    }
    let top = top.into_iter().max().unwrap_or(0);
    let (mut bin, mut rank) = ((top >> RADIX_SHIFT) as usize, k);
    loop {
        let c = (h0[bin] + h1[bin] + h2[bin] + h3[bin]) as usize;
        if rank <= c {
            break;
        }
        rank -= c;
        bin -= 1;
    }

    // Gather everything at or above the threshold bin through 16-entry bit masks: the compare vectorises and
    // the loop over set bits runs only for the ~k candidates. Comparing floats against the bin's lowest value
    // selects what the key compare would (a NaN bound selects everything, a harmless superset).
    let lo = from_key((bin as u32) << RADIX_SHIFT);
    let mut n = 0;
    let mut push_mask = |base: usize, mut mask: u32| {
        while mask != 0 {
            s.ids[n] = base as u32 + mask.trailing_zeros();
            n += 1;
            mask &= mask - 1;
        }
    };
    let chunks = z.chunks_exact(16);
    let (tail, tail_base) = (chunks.remainder(), v - v % 16);
    for (c, chunk) in chunks.enumerate() {
        let mut mask = 0u32;
        for (l, &x) in chunk.iter().enumerate() {
            mask |= u32::from(kept_by(x, lo)) << l;
        }
        push_mask(c * 16, mask);
    }
    let mut mask = 0u32;
    for (l, &x) in tail.iter().enumerate() {
        mask |= u32::from(kept_by(x, lo)) << l;
    }
    push_mask(tail_base, mask);

    let mut m = 0;
    for &id in &s.ids[..n] {
        let key = ord_key(z[id as usize]);
        s.keys[m] = key;
        m += usize::from(key >> RADIX_SHIFT == bin as u32);
    }
    let (_, &mut kth, _) = s.keys[..m].select_nth_unstable(m - rank);
    let thr = from_key(kth);

    let mut kept = 0;
    for j in 0..n {
        let id = s.ids[j];
        let x = z[id as usize];
        s.ids[kept] = id;
        s.w[kept] = x;
        kept += usize::from(kept_by(x, thr));
    }
    kept
}

/// Applies temperature, top-k and top-p; leaves the survivors in `s.ids[..n]` (ascending ids) with their
/// weights `exp(z - max)` in `s.w[..n]` and the block sums in `s.blocks`, and returns `(n, sum of weights)`.
/// Entries outside are exactly zero probability, as the reference's `-inf` logits are.
fn filter(logits: &[f32], p: &SamplingParams, s: &mut SamplerScratch) -> (usize, f32) {
    let v = logits.len();
    assert!(v > 0, "sampling an empty logit row");
    s.fit(v);
    let tau = p.temperature.max(1e-5);
    if tau == 1.0 {
        // Dividing by one is exact; the common case skips the divisions.
        s.z[..v].copy_from_slice(logits);
    } else {
        for (z, &l) in s.z[..v].iter_mut().zip(logits) {
            *z = l / tau;
        }
    }
    let mut max = lane_max(&s.z[..v]);

    let mut n = if p.top_k > 0 && p.top_k < v {
        top_k(v, p.top_k, s)
    } else {
        // Keeping all entries is the same as a threshold at the minimum, so k >= V needs no selection.
        for (i, id) in s.ids[..v].iter_mut().enumerate() {
            *id = i as u32;
        }
        s.w[..v].copy_from_slice(&s.z[..v]);
        v
    };
    if p.top_p < 1.0 {
        n = nucleus(p.top_p, n, s);
        max = lane_max(&s.w[..n]);
    }

    let w = &mut s.w[..n];
    for x in w.iter_mut() {
        *x = exp_nonpos(*x - max);
    }
    let mut total = 0.0;
    for (b, chunk) in s.blocks.iter_mut().zip(w.chunks(BLOCK)) {
        *b = lane_sum(chunk);
        total += *b;
    }
    (n, total)
}

/// The nucleus rule on the `n` survivors: sort by value, softmax, and keep the shortest prefix whose inclusive
/// cumulative probability exceeds `top_p` (the reference's shift-right rule). Returns the new survivor count,
/// with `s.ids`/`s.w` (raw values) back in vocabulary order.
fn nucleus(top_p: f32, n: usize, s: &mut SamplerScratch) -> usize {
    // One u64 per survivor, high word the inverted order key: an integer sort then gives descending values,
    // and ties go to the lower id so the cut is deterministic (torch's sort leaves tie order unspecified).
    s.order.clear();
    let pairs = s.w[..n].iter().zip(&s.ids[..n]);
    s.order
        .extend(pairs.map(|(&x, &id)| (u64::from(!ord_key(x)) << 32) | u64::from(id)));
    let value = |e: u64| from_key(!((e >> 32) as u32));
    let top = lane_max(&s.w[..n]);
    let inv = 1.0 / lane_sum_by(&s.w[..n], |x| exp_nonpos(x - top));

    // The cut usually comes long before the end, so order a growing prefix (select, then sort it) instead of
    // sorting every survivor. torch.cumsum accumulates f32 in double on the CPU and stores f32; the comparison
    // is against f32(top_p).
    let mut cum = 0.0f64;
    let (mut sorted, mut keep) = (0, n);
    'grow: while sorted < n {
        let end = (sorted.max(32) * 4).min(n);
        let rest = &mut s.order[sorted..];
        if end < n {
            rest.select_nth_unstable(end - sorted - 1);
        }
        rest[..end - sorted].sort_unstable();
        for j in sorted..end {
            cum += f64::from(exp_nonpos(value(s.order[j]) - top) * inv);
            if (cum as f32) > top_p {
                keep = j + 1;
                break 'grow;
            }
        }
        sorted = end;
    }

    let kept = &mut s.order[..keep];
    kept.sort_unstable_by_key(|&o| o as u32);
    for (j, &o) in kept.iter().enumerate() {
        s.ids[j] = o as u32;
        s.w[j] = value(o);
    }
    keep
}

/// The official processing: z = logits / max(temperature, 1e-5); top-k keeps every value >= the k-th largest
/// (ties kept); top-p with the shift-right rule on the temperature-scaled, top-k-filtered values; then softmax.
/// Writes the probabilities into `probs` (len V).
pub fn probabilities(logits: &[f32], p: &SamplingParams, scratch: &mut SamplerScratch, probs: &mut [f32]) {
    assert_eq!(probs.len(), logits.len(), "probabilities: output length");
    let (n, total) = filter(logits, p, scratch);
    probs.fill(0.0);
    // The reference normalises by multiplying with the reciprocal of the sum.
    let inv = 1.0 / total;
    for (&id, &w) in scratch.ids[..n].iter().zip(&scratch.w[..n]) {
        probs[id as usize] = w * inv;
    }
}

/// Draws one token with uniform `u` in [0, 1): inverse CDF over the probabilities in vocabulary order, i.e. the
/// token whose cumulative interval contains `u * total`. Whole blocks are skipped by their sums, then the block
/// is scanned. Rounding can leave `u * total` at or beyond the end of a running sum; the last token with nonzero
/// probability before that point is returned then, so a filtered-out token is never drawn. A row without any
/// finite weight (NaN or infinite logits) yields its first survivor.
pub fn sample(logits: &[f32], p: &SamplingParams, u: f32, scratch: &mut SamplerScratch) -> u32 {
    let (n, total) = filter(logits, p, scratch);
    let target = u * total;
    let (ids, w) = (&scratch.ids[..n], &scratch.w[..n]);
    let nblocks = n.div_ceil(BLOCK);
    let mut cum = 0.0f32;
    let mut end = n;
    for (b, &bs) in scratch.blocks[..nblocks].iter().enumerate() {
        if target < cum + bs {
            let range = b * BLOCK..((b + 1) * BLOCK).min(n);
            for (&id, &x) in ids[range.clone()].iter().zip(&w[range.clone()]) {
                cum += x;
                if x > 0.0 && target < cum {
                    return id;
                }
            }
            end = range.end;
            break;
        }
        cum += bs;
    }
    match w[..end].iter().rposition(|&x| x > 0.0) {
        Some(j) => ids[j],
        None => ids[0],
    }
}

/// One image's token at generation step `step`: the CFG mix when `uncond` is given (written to `mix`), the filters,
/// and the draw from the image's own RNG stream (seed, image index, step). Every CPU sampler of the engine (the
/// batch op and the serving scheduler) goes through here, so they cannot drift apart.
#[allow(clippy::too_many_arguments)]
pub fn draw(
    cond: &[f32],
    uncond: Option<&[f32]>,
    cfg_scale: f32,
    p: &SamplingParams,
    seed: u64,
    index: u64,
    step: u32,
    mix: &mut [f32],
    scratch: &mut SamplerScratch,
) -> u32 {
    let row: &[f32] = match uncond {
        Some(u) => {
            cfg_mix(cond, u, cfg_scale, mix);
            mix
        }
        None => cond,
    };
    sample(row, p, super::rng::uniform(seed, index, step), scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ord_key_is_monotone_and_invertible() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, 0.0, 1e-30, 2.0, 7.25, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(ord_key(w[0]) < ord_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        for &x in &xs {
            assert_eq!(from_key(ord_key(x)).to_bits(), x.to_bits());
        }
        assert_eq!(ord_key(-0.0), ord_key(0.0));
        assert!(ord_key(f32::NAN) > ord_key(f32::INFINITY));
    }

    #[test]
    fn top_k_matches_sort() {
        let mut st = 0x1234_5678u64;
        let z: Vec<f32> = (0..5000)
            .map(|_| {
                st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Few distinct values, both signs: many ties and shared radix digits.
                ((st >> 40) % 301) as f32 * 0.25 - 37.0
            })
            .collect();
        let mut sorted = z.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut s = SamplerScratch::new(z.len());
        s.z.copy_from_slice(&z);
        for k in [1, 2, 17, 51, 999, 2500, 4999] {
            let n = top_k(z.len(), k, &mut s);
            let want: Vec<u32> = (0..z.len() as u32)
                .filter(|&i| z[i as usize] >= sorted[k - 1])
                .collect();
            assert_eq!(&s.ids[..n], &want[..], "k = {k}");
        }
    }

    #[test]
    fn exp_nonpos_is_accurate() {
        let mut x = 0.0f32;
        while x > -110.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpos(x));
            // 3 ulp relative in the normal range, one denormal step below it.
            assert!(
                (got - want).abs() <= 3.0 * 6e-8 * want + 1.5e-45,
                "x {x}: {got:e} vs {want:e}"
            );
            x -= 0.001_37;
        }
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-105.0), 0.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpos(f32::NAN).is_nan());
    }

    #[test]
    fn validate_names_the_flag() {
        let ok = SamplingParams {
            temperature: 0.0,
            top_k: 5,
            top_p: 1.0,
        };
        assert!(ok.validate().is_ok());
        let e = SamplingParams {
            temperature: -1.0,
            ..ok
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--temperature"), "{e}");
        let e = SamplingParams {
            temperature: f32::NAN,
            ..ok
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--temperature"), "{e}");
        for bad in [0.0, -0.5, 1.5, f32::NAN] {
            let e = SamplingParams { top_p: bad, ..ok }.validate().unwrap_err().to_string();
            assert!(e.contains("--top-p"), "{e}");
        }
    }
}
