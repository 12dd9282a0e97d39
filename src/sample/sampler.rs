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
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 }
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
    /// Radix-select candidates (order-preserving integer keys).
    keys: Vec<u32>,
    hist: Vec<u32>,
    /// Survivors in vocabulary order: ids and (after `filter`) unnormalised softmax weights.
    ids: Vec<u32>,
    w: Vec<f32>,
    /// Top-p only: survivors as sortable (descending value, ascending id) integer pairs.
    order: Vec<u64>,
}

const RADIX_BINS: usize = 1 << 11;
/// Independent histogram copies for the first radix pass: logits crowd into a few bins, and consecutive
/// increments of one counter would serialise on store-to-load forwarding.
const HIST_COPIES: usize = 4;

impl SamplerScratch {
    pub fn new(vocab: usize) -> Self {
        SamplerScratch {
            z: vec![0.0; vocab],
            keys: vec![0; vocab],
            hist: vec![0; RADIX_BINS * HIST_COPIES],
            ids: vec![0; vocab],
            w: vec![0.0; vocab],
            order: Vec::with_capacity(vocab),
        }
    }

    fn fit(&mut self, vocab: usize) {
        if self.z.len() < vocab {
            *self = SamplerScratch::new(vocab);
        }
    }
}

/// Maps an f32 to a u32 whose unsigned order is the float's total order (negative values flipped entirely,
/// positive values with the sign bit set), so the radix select can work on integer digits.
#[inline(always)]
fn ord_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

#[inline(always)]
fn from_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// Bin holding the k-th largest (1-based) entry of a histogram, and the rank left inside that bin.
fn pick_bin(hist: &[u32], mut k: usize) -> (u32, usize) {
    for b in (0..hist.len()).rev() {
        let c = hist[b] as usize;
        if k <= c {
            return (b as u32, k);
        }
        k -= c;
    }
    unreachable!("rank exceeds the histogram total")
}

/// The k-th largest value of `z` (1 <= k <= len), by three radix passes of 11, 11 and 10 bits. Each pass keeps
/// only the entries sharing the digits found so far, so the work is O(V) with no sort and no data-dependent
/// worst case.
fn kth_largest(z: &[f32], k: usize, keys: &mut [u32], hist: &mut [u32]) -> f32 {
    debug_assert!(k >= 1 && k <= z.len());
    hist.fill(0);
    let (copies, _) = hist.split_at_mut(RADIX_BINS * HIST_COPIES);
    let (h0, rest) = copies.split_at_mut(RADIX_BINS);
    let (h1, rest) = rest.split_at_mut(RADIX_BINS);
    let (h2, h3) = rest.split_at_mut(RADIX_BINS);
    let quads = z.chunks_exact(4);
    for &x in quads.remainder() {
        h0[(ord_key(x) >> 21) as usize] += 1;
    }
    for q in quads {
        h0[(ord_key(q[0]) >> 21) as usize] += 1;
        h1[(ord_key(q[1]) >> 21) as usize] += 1;
        h2[(ord_key(q[2]) >> 21) as usize] += 1;
        h3[(ord_key(q[3]) >> 21) as usize] += 1;
    }
    for b in 0..RADIX_BINS {
        h0[b] += h1[b] + h2[b] + h3[b];
    }
    let hist = h0;
    let (b0, k) = pick_bin(hist, k);
    // Branch-free compaction: the slot is always written, the cursor only advances on a match.
    let mut n = 0;
    for &x in z {
        let key = ord_key(x);
        keys[n] = key;
        n += (key >> 21 == b0) as usize;
    }

    hist.fill(0);
    for &key in &keys[..n] {
        hist[((key >> 10) & 0x7ff) as usize] += 1;
    }
    let (b1, k) = pick_bin(hist, k);
    let mut m = 0;
    for j in 0..n {
        let key = keys[j];
        keys[m] = key;
        m += ((key >> 10) & 0x7ff == b1) as usize;
    }

    let hist = &mut hist[..1 << 10];
    hist.fill(0);
    for &key in &keys[..m] {
        hist[(key & 0x3ff) as usize] += 1;
    }
    let (b2, _) = pick_bin(hist, k);
    from_key((b0 << 21) | (b1 << 10) | b2)
}

/// Sum with independent lanes so it vectorises; the reference's softmax sum is a vectorised reduction too.
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &t in tail {
        s += t;
    }
    s
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
    tail.iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Applies temperature, top-k and top-p; leaves the survivors in `s.ids[..n]` (ascending ids) with their
/// weights `exp(z - max)` in `s.w[..n]`, and returns `(n, sum of weights)`. Entries outside are exactly zero
/// probability, as the reference's `-inf` logits are.
fn filter(logits: &[f32], p: &SamplingParams, s: &mut SamplerScratch) -> (usize, f32) {
    let v = logits.len();
    assert!(v > 0, "sampling an empty logit row");
    s.fit(v);
    let tau = p.temperature.max(1e-5);
    let z = &mut s.z[..v];
    for (z, &l) in z.iter_mut().zip(logits) {
        *z = l / tau;
    }
    let mut max = lane_max(z);

    // Keeping all entries is the same as a threshold at the minimum, so k >= V needs no selection.
    let thr = if p.top_k > 0 && p.top_k < v {
        kth_largest(z, p.top_k, &mut s.keys, &mut s.hist)
    } else {
        f32::NEG_INFINITY
    };
    // `!(x < thr)` mirrors the reference's `logits < kth` removal test: ties with the k-th value survive.
    let mut n = 0;
    for (i, &x) in z.iter().enumerate() {
        s.ids[n] = i as u32;
        s.w[n] = x;
        n += !(x < thr) as usize;
    }

    if p.top_p < 1.0 {
        n = nucleus(p.top_p, n, s);
        max = lane_max(&s.w[..n]);
    }

    let w = &mut s.w[..n];
    for x in w.iter_mut() {
        *x = (*x - max).exp();
    }
    (n, lane_sum(w))
}

/// The nucleus rule on the `n` survivors: sort by value, softmax, and keep the shortest prefix whose inclusive
/// cumulative probability exceeds `top_p` (the reference's shift-right rule). Returns the new survivor count,
/// with `s.ids`/`s.w` (raw values) back in vocabulary order.
fn nucleus(top_p: f32, n: usize, s: &mut SamplerScratch) -> usize {
    // One u64 per survivor, high word the inverted order key: an integer sort then gives descending values,
    // and ties go to the lower id so the cut is deterministic (torch's sort leaves tie order unspecified).
    s.order.clear();
    let pairs = s.w[..n].iter().zip(&s.ids[..n]);
    s.order.extend(pairs.map(|(&x, &id)| (u64::from(!ord_key(x)) << 32) | u64::from(id)));
    s.order.sort_unstable();
    let value = |e: u64| from_key(!((e >> 32) as u32));
    let top = value(s.order[0]);
    let e = &mut s.w[..n];
    for (e, &o) in e.iter_mut().zip(&s.order) {
        *e = (value(o) - top).exp();
    }
    let inv = 1.0 / lane_sum(e);
    // torch.cumsum accumulates f32 in double on the CPU and stores f32; the comparison is against f32(top_p).
    let mut cum = 0.0f64;
    let mut keep = n;
    for (j, &e) in e.iter().enumerate() {
        cum += f64::from(e * inv);
        if (cum as f32) > top_p {
            keep = j + 1;
            break;
        }
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
/// token whose cumulative interval contains `u * total`. Rounding can leave `u * total` at or beyond the running
/// sum's end; the last token with nonzero probability is returned then, so a filtered-out token is never drawn.
/// For a row without any finite weight (NaN or infinite logits) the first survivor is returned.
pub fn sample(logits: &[f32], p: &SamplingParams, u: f32, scratch: &mut SamplerScratch) -> u32 {
    let (n, total) = filter(logits, p, scratch);
    let target = u * total;
    let mut cum = 0.0f32;
    let mut last = None;
    for (&id, &w) in scratch.ids[..n].iter().zip(&scratch.w[..n]) {
        if w > 0.0 {
            cum += w;
            last = Some(id);
            if target < cum {
                return id;
            }
        }
    }
    last.unwrap_or(scratch.ids[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ord_key_is_monotone_and_invertible() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 7.25, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(ord_key(w[0]) < ord_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        for &x in &xs {
            assert_eq!(from_key(ord_key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn kth_largest_matches_sort() {
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
        let mut keys = vec![0; z.len()];
        let mut hist = vec![0; RADIX_BINS * HIST_COPIES];
        for k in [1, 2, 17, 51, 999, 2500, 4999, 5000] {
            assert_eq!(kth_largest(&z, k, &mut keys, &mut hist), sorted[k - 1], "k = {k}");
        }
    }

    #[test]
    fn validate_names_the_flag() {
        let ok = SamplingParams { temperature: 0.0, top_k: 5, top_p: 1.0 };
        assert!(ok.validate().is_ok());
        let e = SamplingParams { temperature: -1.0, ..ok }.validate().unwrap_err().to_string();
        assert!(e.contains("--temperature"), "{e}");
        let e = SamplingParams { temperature: f32::NAN, ..ok }.validate().unwrap_err().to_string();
        assert!(e.contains("--temperature"), "{e}");
        for bad in [0.0, -0.5, 1.5, f32::NAN] {
            let e = SamplingParams { top_p: bad, ..ok }.validate().unwrap_err().to_string();
            assert!(e.contains("--top-p"), "{e}");
        }
    }
}
