//! Cost model: FLOPs and bytes moved by one op, from its descriptor.
//!
//! FLOPs count multiply-adds as two (linear layers, convolutions, attention's two products); elementwise work is
//! counted but negligible. Bytes count every weight and KV-cache element the op reads or writes (at the storage
//! width) plus its activations read and written once (f32): the traffic of an implementation that touches each
//! value once. A stage's floor is then `max(bytes / bandwidth, flops / peak)` (spec §13).
use super::Io;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub flops: f64,
    pub bytes: f64,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            flops: self.flops + o.flops,
            bytes: self.bytes + o.bytes,
        }
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

impl std::ops::Mul<f64> for Cost {
    type Output = Cost;
    fn mul(self, k: f64) -> Cost {
        Cost {
            flops: self.flops * k,
            bytes: self.bytes * k,
        }
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(it: I) -> Cost {
        it.fold(Cost::default(), |a, b| a + b)
    }
}

/// What a descriptor does not say: the width of the GPT's big tensors (matmul weights, embedding tables and the KV
/// cache: 4 bytes for f32, 2 for bf16; norm weights, biases and the whole VQ tokenizer are f32 regardless).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widths {
    pub weight: usize,
}

impl Widths {
    pub const F32: Widths = Widths { weight: 4 };
    pub const BF16: Widths = Widths { weight: 2 };
}

/// Where an op runs: the sequence position of a decode step (0 for other graphs) and the storage widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostAt {
    pub pos: usize,
    pub widths: Widths,
}

impl CostAt {
    /// Bytes per element of a big GPT tensor (weights, KV cache).
    pub fn wb(&self) -> f64 {
        self.widths.weight as f64
    }
}

/// Activation bytes of an op that reads each input and writes its output once, 4 bytes per element.
pub fn activations(io: &Io) -> f64 {
    4.0 * (io.inputs.iter().map(|i| i.0).sum::<usize>() + io.output.0) as f64
}
