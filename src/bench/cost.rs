//! Cost model: FLOPs and bytes moved by each node of a graph, from the graph's own tensor shapes.
//!
//! FLOPs count multiply-adds as two (linear layers, convolutions, attention's two products); elementwise work is
//! counted but negligible. Bytes count every weight and KV-cache element the node reads or writes (at the storage
//! width) plus its activations read and written once (f32): the traffic of an implementation that touches each
//! value once. A stage's floor is then `max(bytes / bandwidth, flops / peak)` (spec §13).
use crate::runtime::{Graph, Node, Op};

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

/// What the graph does not say: the width of the GPT's big tensors (matmul weights, embedding tables and the KV
/// cache: 4 bytes for f32, 2 for bf16; norm weights, biases and the whole VQ tokenizer are f32 regardless), and the
/// codebook size that `quantize` searches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widths {
    pub weight: usize,
    pub codebook: usize,
}

impl Widths {
    pub const F32: Widths = Widths {
        weight: 4,
        codebook: 16384,
    };
    pub const BF16: Widths = Widths {
        weight: 2,
        codebook: 16384,
    };
}

fn numel(g: &Graph, t: crate::runtime::TensorId) -> f64 {
    g.info(t).numel() as f64
}

/// Cost of one node when the graph runs at sequence position `pos` (decode steps; 0 for other graphs).
pub fn node_cost(g: &Graph, node: &Node, pos: usize, w: Widths) -> Cost {
    let out = numel(g, node.output);
    let ins: f64 = node.inputs.iter().map(|&t| numel(g, t)).sum();
    let act = 4.0 * (ins + out);
    let wb = w.weight as f64;
    let oshape = g.shape(node.output);
    match &node.op {
        Op::Embed { .. } => Cost {
            flops: 0.0,
            bytes: out * (wb + 4.0) + 4.0 * ins,
        },
        Op::Matmul { .. } | Op::MatmulAdd { .. } => {
            let k = *g.shape(node.inputs[0]).last().unwrap_or(&1) as f64;
            let n = *oshape.last().unwrap_or(&1) as f64;
            let m = out / n.max(1.0);
            Cost {
                flops: 2.0 * m * k * n,
                bytes: n * k * wb + act,
            }
        }
        Op::Rmsnorm { .. } => Cost {
            flops: 4.0 * out,
            bytes: act + 4.0 * *oshape.last().unwrap_or(&0) as f64,
        },
        Op::Rope { .. } => {
            // qkv in, rotated q out, rotated k and v written to the cache.
            let d = *oshape.last().unwrap_or(&0) as f64;
            let rows = out / d.max(1.0);
            Cost {
                flops: 6.0 * out,
                bytes: act + 2.0 * rows * d * wb,
            }
        }
        Op::Attention { .. } => {
            // q [B', L, D]: query l at position pos + l reads keys and values 0..=pos + l.
            let s = g.shape(node.inputs[0]);
            let (b, l, d) = (s[0] as f64, s[1] as f64, s[2] as f64);
            let keys: f64 = (0..s[1]).map(|i| (pos + i + 1) as f64).sum();
            Cost {
                flops: 4.0 * b * d * keys,
                bytes: act + 2.0 * b * (pos as f64 + l) * d * wb,
            }
        }
        Op::Swiglu | Op::GeluTanh => Cost {
            flops: 8.0 * out,
            bytes: act,
        },
        Op::Concat | Op::TakeLast => Cost {
            flops: 0.0,
            bytes: 8.0 * out,
        },
        Op::Add => Cost { flops: out, bytes: act },
        Op::Sampling { .. } => Cost {
            // One pass over the logits: CFG mix, then the top-k threshold and the softmax on the same rows.
            flops: 4.0 * ins,
            bytes: act,
        },
        Op::Codebook { .. } => Cost {
            flops: 0.0,
            bytes: act + 4.0 * out,
        },
        Op::Quantize { .. } => {
            // z [n, dim, h, w] against every code: 2·dim FLOPs per (position, code).
            let s = g.shape(node.inputs[0]);
            let dim = s[1] as f64;
            let positions = numel(g, node.inputs[0]) / dim.max(1.0);
            let codes = w.codebook as f64;
            Cost {
                flops: 2.0 * positions * codes * dim,
                bytes: act + 4.0 * codes * dim,
            }
        }
        Op::Conv { k, .. } => {
            let ci = g.shape(node.inputs[0])[1] as f64;
            let co = oshape[1] as f64;
            let kk = (*k * *k) as f64;
            Cost {
                flops: 2.0 * ci * kk * out,
                bytes: act + 4.0 * (co * ci * kk + co),
            }
        }
        Op::UpsampleConv { .. } => {
            // Nearest ×2 then 3×3: per output phase only a 2×2 kernel touches distinct inputs (the folded form).
            let ci = g.shape(node.inputs[0])[1] as f64;
            let co = oshape[1] as f64;
            Cost {
                flops: 2.0 * ci * 4.0 * out,
                bytes: act + 4.0 * (co * ci * 16.0 + co),
            }
        }
        Op::Groupnorm { .. } => Cost {
            flops: 8.0 * out,
            bytes: act,
        },
        Op::VqAttention { .. } => {
            let s = g.shape(node.inputs[0]);
            let (n, c) = (s[0] as f64, s[1] as f64);
            let hw = s[2..].iter().product::<usize>() as f64;
            Cost {
                // q, k, v and proj 1×1 convs, then q·k and A·v.
                flops: n * (8.0 * c * c * hw + 4.0 * hw * hw * c),
                bytes: act + 4.0 * (4.0 * c * c + 4.0 * c),
            }
        }
    }
}

/// Cost of a whole graph at position `pos`.
pub fn graph_cost(g: &Graph, pos: usize, w: Widths) -> Cost {
    g.nodes.iter().map(|n| node_cost(g, n, pos, w)).sum()
}

/// Cost of the nodes of `g` whose op is (or, with `exclude`, is not) named `op`.
pub fn op_cost(g: &Graph, pos: usize, w: Widths, op: &str, exclude: bool) -> Cost {
    g.nodes
        .iter()
        .filter(|n| (n.op.name() == op) != exclude)
        .map(|n| node_cost(g, n, pos, w))
        .sum()
}
