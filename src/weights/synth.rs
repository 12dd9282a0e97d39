//! The deterministic weight generator of `tests/data/weights.py`, bit-exact.
//!
//! A value depends only on (tensor name, flat index), so the large golden cases (whose weights are
//! not stored) can be regenerated here. See the Python docstring for the specification.
use super::{StateDict, Tensor};
use rayon::prelude::*;

const EMBEDDING_NAMES: [&str; 4] = [
    "tok_embeddings.weight",
    "cls_embedding.embedding_table.weight",
    "cls_embedding.uncond_embedding",
    "quantize.embedding.weight",
];

pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `i` of the name's stream, in [-1, 1); exact in f64 (24-bit mantissa).
pub fn uniform(h: u64, i: u64) -> f64 {
    let u = (splitmix64(h.wrapping_add(i)) >> 40) as f64 / (1u64 << 24) as f64;
    2.0 * u - 1.0
}

/// `(offset, scale)` of a tensor, or `None` for the all-zero `quantize.codebook_used` buffer.
pub fn offset_scale(name: &str, shape: &[usize]) -> Option<(f64, f64)> {
    if name == "quantize.codebook_used" {
        return None;
    }
    Some(if shape.len() == 1 {
        if name.ends_with(".bias") {
            (0.0, 0.1)
        } else {
            (1.0, 0.2)
        }
    } else if EMBEDDING_NAMES.contains(&name) {
        (0.0, 1.0)
    } else {
        // Python's prod(shape[1:]) is 1 for a 0-d tensor; f64 like numpy's int -> float64.
        let fan_in = shape.iter().skip(1).product::<usize>() as f64;
        (0.0, (3.0 / fan_in).sqrt())
    })
}

/// The whole tensor, row-major.
pub fn value_f32(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let Some((offset, scale)) = offset_scale(name, shape) else {
        return vec![0.0; n];
    };
    let h = fnv1a64(name);
    let mut out = vec![0f32; n];
    // Parallel in chunks because the large cases need ~10^8 values; the result is order-independent.
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        let base = (c as u64) << 16;
        for (j, v) in chunk.iter_mut().enumerate() {
            // f64 arithmetic, then round-to-nearest-even to f32, exactly as numpy's astype.
            *v = (offset + scale * uniform(h, base + j as u64)) as f32;
        }
    });
    out
}

/// A state dict of generated weights for the given `(name, shape)` list.
pub fn state_dict(shapes: &[(String, Vec<usize>)]) -> StateDict {
    let mut sd = StateDict::new("<synthetic weights.py>");
    for (name, shape) in shapes {
        sd.insert(
            name.clone(),
            Tensor {
                shape: shape.clone(),
                data: value_f32(name, shape),
            },
        );
    }
    sd
}

/// Parses a `{"name": [dims...], ...}` JSON object, the `state_dict_shapes` metadata of the golden
/// fixtures, into the list [`state_dict`] takes (sorted by name).
pub fn shapes_from_json(json: &str) -> crate::Result<Vec<(String, Vec<usize>)>> {
    let map: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_str(json).map_err(|e| crate::Error::Config(format!("state_dict_shapes: {e}")))?;
    Ok(map.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by `python3 tests/data/weights.py` (the reference implementation).
    #[test]
    fn matches_python_reference() {
        // Python prints the f32 results widened to f64, so the comparison is exact in f64.
        let cases: [(&str, &[usize], &[f64]); 3] = [
            (
                "norm.weight",
                &[4],
                &[
                    0.9051790833473206,
                    1.1666514873504639,
                    1.0121514797210693,
                    1.162405014038086,
                ],
            ),
            (
                "output.weight",
                &[2, 3],
                &[
                    -0.30970144271850586,
                    0.5207618474960327,
                    -0.9401963949203491,
                    -0.8735414743423462,
                    -0.9703173637390137,
                    -0.17322874069213867,
                ],
            ),
            (
                "tok_embeddings.weight",
                &[2, 2],
                &[
                    -0.6601250171661377,
                    0.6379330158233643,
                    -0.9701348543167114,
                    -0.11080849170684814,
                ],
            ),
        ];
        for (name, shape, want) in cases {
            let got: Vec<f64> = value_f32(name, shape).iter().map(|&v| v as f64).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn rules() {
        assert_eq!(value_f32("quantize.codebook_used", &[5]), vec![0.0; 5]);
        assert!(value_f32("x.bias", &[1000]).iter().all(|v| v.abs() <= 0.1));
        assert!(value_f32("x.weight", &[1000]).iter().all(|v| (v - 1.0).abs() <= 0.2));
        // Chunk boundaries of the parallel fill must not change the stream.
        let big = value_f32("a.weight", &[3, 70_000]);
        let h = fnv1a64("a.weight");
        let s = (3.0f64 / 70_000.0).sqrt();
        for i in [0usize, 65_535, 65_536, 209_999] {
            assert_eq!(big[i], (s * uniform(h, i as u64)) as f32);
        }
    }
}
