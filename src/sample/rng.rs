//! Counter-based random numbers for token sampling.
//!
//! A counter-based generator has no state to carry between steps, images or devices: every draw is a pure
//! function of (seed, image index, step). That is what lets a batch be split, reordered, sharded or moved to the
//! GPU without changing a single image. Philox4x32-10 is chosen because cuRAND implements the same function, so
//! the CUDA sampling kernel can reproduce these numbers bit for bit.

/// Multipliers and Weyl key increments of Philox4x32 (Salmon et al., SC'11, table 2).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

#[inline(always)]
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M0, c[0]);
    let (hi1, lo1) = mulhilo(M1, c[2]);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// Philox4x32 with an arbitrary number of rounds. Only 10 is used for sampling; the reduced-round variants exist so
/// the tests can check the round function against more of the published known-answer vectors.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2], rounds: u32) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for r in 0..rounds {
        if r > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        c = round(c, k);
    }
    c
}

/// Philox4x32-10 (Salmon et al. 2011, the generator cuRAND uses), so the CUDA kernels can produce the very same
/// numbers.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32(counter, key, 10)
}

/// The per-image stream: image `index` of a run with `seed` draws its uniform for generation step `step`
/// (0 = token 0) from key = seed (lo, hi words), counter = [step, 0, index lo, index hi]. The result is
/// (first word >> 8) * 2^-24: 24 bits fit an f32 mantissa exactly, so the value lies in [0, 1) with no rounding up
/// to 1.0 and is the same on every backend. The same (seed, index) gives the same image whatever the batch size,
/// the number of images, the backend or the shard.
#[inline]
pub fn uniform(seed: u64, index: u64, step: u32) -> f32 {
    let key = [seed as u32, (seed >> 32) as u32];
    let counter = [step, 0, index as u32, (index >> 32) as u32];
    let w = philox4x32_10(counter, key)[0];
    (w >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_24_bit_grid() {
        for step in 0..1000 {
            let u = uniform(7, 3, step);
            assert!((0.0..1.0).contains(&u));
            assert_eq!((u * 16_777_216.0).fract(), 0.0);
        }
    }

    #[test]
    fn index_words_both_matter() {
        assert_ne!(uniform(1, 1, 0), uniform(1, 1 << 32, 0));
        assert_ne!(uniform(1, 0, 0), uniform(1 << 32, 0, 0));
    }
}
