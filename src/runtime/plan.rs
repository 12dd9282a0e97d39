//! Liveness planning: every tensor of a graph gets an offset in one arena, tensors whose lifetimes overlap never
//! share bytes, so a run allocates nothing. Inputs live for the whole graph, outputs from their producer to the end.
use super::graph::{Graph, Role};

/// Offsets are aligned to 64 bytes (one cache line, and 16-byte vector loads on the GPU).
pub const ALIGN: usize = 64;

#[derive(Clone, Debug)]
pub struct Plan {
    /// Byte offset of every tensor of the graph.
    pub offsets: Vec<usize>,
    /// Arena size in bytes.
    pub size: usize,
}

impl Plan {
    pub fn new(g: &Graph) -> Plan {
        let nt = g.tensors.len();
        let end = g.nodes.len();
        // [first, last] node indices during which the tensor must hold its value (inclusive both ends).
        let mut first = vec![usize::MAX; nt];
        let mut last = vec![0usize; nt];
        for (i, t) in g.tensors.iter().enumerate() {
            // Inputs persist across runs (a decode step rewrites only the token ids), so they live for the whole graph.
            if t.role == Role::Input {
                first[i] = 0;
                last[i] = end;
            }
            if t.role == Role::Output {
                last[i] = end;
            }
        }
        for (n, node) in g.nodes.iter().enumerate() {
            for o in std::iter::once(node.output).chain(node.scratch) {
                let o = o.0 as usize;
                first[o] = first[o].min(n);
                last[o] = last[o].max(n);
            }
            for t in &node.inputs {
                last[t.0 as usize] = last[t.0 as usize].max(n);
            }
        }
        let sizes: Vec<usize> = g
            .tensors
            .iter()
            .map(|t| (t.numel() * 4).div_ceil(ALIGN) * ALIGN)
            .collect();
        // A scratch that may reuse input 0 takes its bytes where input 0 is an intermediate read by no later node
        // (nor twice by this one), so the fused op needs no more memory than the pair it replaces.
        let mut alias: Vec<(usize, usize)> = Vec::new();
        for (n, node) in g.nodes.iter().enumerate() {
            let (Some(s), Some(&i0)) = (node.scratch, node.inputs.first()) else {
                continue;
            };
            let (s, i) = (s.0 as usize, i0.0 as usize);
            let once = node.inputs.iter().filter(|&&t| t == i0).count() == 1;
            if node.op.scratch_reuses_input()
                && once
                && last[i] == n
                && g.tensors[i].role == Role::Intermediate
                && sizes[s] <= sizes[i]
            {
                alias.push((s, i));
            }
        }
        // Greedy by size (largest first), first fit among the already placed tensors that are live at the same time.
        let mut order: Vec<usize> = (0..nt)
            .filter(|&i| first[i] != usize::MAX && !alias.iter().any(|&(s, _)| s == i))
            .collect();
        order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
        let mut offsets = vec![0usize; nt];
        let mut placed: Vec<usize> = Vec::new();
        let mut size = 0;
        for &i in &order {
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&j| first[j] <= last[i] && first[i] <= last[j])
                .map(|&j| (offsets[j], offsets[j] + sizes[j]))
                .collect();
            busy.sort_unstable();
            let mut off = 0;
            for (s, e) in busy {
                if off + sizes[i] <= s {
                    break;
                }
                off = off.max(e);
            }
            offsets[i] = off;
            size = size.max(off + sizes[i]);
            placed.push(i);
        }
        for (s, i) in alias {
            offsets[s] = offsets[i];
        }
        Plan { offsets, size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{
        concat::Concat, conv::Conv, gelu::Gelu, groupnorm::Groupnorm, groupnorm_conv::GroupnormConv, swiglu::Swiglu,
        WeightId,
    };
    use crate::runtime::{Phase, Scalar};

    /// Checks the invariant directly: at every node, the tensors that must hold a value occupy disjoint bytes.
    fn assert_disjoint(g: &Graph, p: &Plan) {
        let n = g.nodes.len();
        let live = |t: usize, at: usize| {
            let info = &g.tensors[t];
            if let Some(k) = g
                .nodes
                .iter()
                .position(|x| x.scratch.is_some_and(|s| s.0 as usize == t))
            {
                return k == at; // a scratch holds values only while its node runs
            }
            let def = g.nodes.iter().position(|x| x.output.0 as usize == t);
            let start = if info.role == Role::Input {
                0
            } else {
                def.unwrap_or(usize::MAX)
            };
            let uses = g
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, x)| x.inputs.iter().any(|i| i.0 as usize == t));
            let mut end = uses.map(|(k, _)| k).max().unwrap_or(start).max(start);
            if info.role != Role::Intermediate {
                end = n;
            }
            start <= at && at <= end
        };
        for at in 0..n {
            let ls: Vec<usize> = (0..g.tensors.len()).filter(|&t| live(t, at)).collect();
            // a scratch may take its node's input 0 bytes (`scratch_reuses_input`): that input is read by no later node
            let node = &g.nodes[at];
            let shared = |x: usize, y: usize| {
                let (s, i0) = (node.scratch.map(|s| s.0 as usize), node.inputs[0].0 as usize);
                s.is_some() && (s == Some(x) && y == i0 || s == Some(y) && x == i0) && p.offsets[x] == p.offsets[y]
            };
            for (a, &x) in ls.iter().enumerate() {
                for &y in ls[a + 1..].iter().filter(|&&y| !shared(x, y)) {
                    let (xs, xe) = (p.offsets[x], p.offsets[x] + g.tensors[x].numel() * 4);
                    let (ys, ye) = (p.offsets[y], p.offsets[y] + g.tensors[y].numel() * 4);
                    assert!(xe <= ys || ye <= xs, "tensors {x} and {y} overlap at node {at}");
                }
            }
        }
    }

    #[test]
    fn live_tensors_never_share_bytes_and_dead_ones_are_reused() {
        let mut g = Graph::new(Phase::Decode);
        // Sizes that shrink and grow (512 B down to 128 B and back), so first fit meets holes of several sizes.
        let x = g.input("x", &[1, 128], Scalar::F32);
        let cat = |d| Concat {
            batch: 1,
            la: 1,
            lb: 1,
            d,
        };
        let s0 = g.push(Swiglu { rows: 1, f: 64 }, &[x], "s0", &[1, 64]).unwrap();
        let s1 = g.push(Swiglu { rows: 1, f: 32 }, &[s0], "s1", &[1, 32]).unwrap();
        let g1 = g.push(Gelu { n: 32 }, &[s1], "g1", &[1, 32]).unwrap();
        let c = g.push(cat(32), &[g1, s1], "c", &[1, 64]).unwrap();
        let s2 = g.push(Swiglu { rows: 1, f: 32 }, &[c], "s2", &[1, 32]).unwrap();
        let g2 = g.push(Gelu { n: 32 }, &[s2], "g2", &[1, 32]).unwrap();
        let s = g.push(cat(32), &[g2, g1], "both", &[2, 32]).unwrap();
        g.mark_output(s);
        let p = Plan::new(&g);
        assert_disjoint(&g, &p);
        // Far less than the sum of all tensors: dead ones are reused.
        let total: usize = g.tensors.iter().map(|t| (t.numel() * 4).div_ceil(ALIGN) * ALIGN).sum();
        assert!(p.size <= 4 * 512, "arena {} bytes, sum of tensors {}", p.size, total);
        assert!(p.size < total);
    }

    /// A fused op's scratch takes the bytes of its input 0 where nothing later reads that input (no more memory than
    /// the unfused pair), and gets bytes of its own where something does.
    #[test]
    fn a_scratch_reuses_a_dying_input_only() {
        let op = GroupnormConv {
            norm: Groupnorm {
                gamma: WeightId(0),
                beta: WeightId(1),
                n: 1,
                c: 32,
                hw: 64,
                groups: 32,
                eps: 1e-6,
                silu: true,
            },
            conv: Conv {
                w: WeightId(2),
                b: WeightId(3),
                n: 1,
                c_in: 32,
                h: 8,
                w_in: 8,
                c_out: 16,
                k: 3,
                stride: 1,
                pad: [1; 4],
                residual: false,
            },
        };
        for keep in [false, true] {
            let mut g = Graph::new(Phase::VqDecode);
            let x = g.input("x", &[1, 32, 8, 8], Scalar::F32);
            let h = g.push(Gelu { n: 2048 }, &[x], "h", &[1, 32, 8, 8]).unwrap();
            let y = g.push(op.clone(), &[h], "y", &[1, 16, 8, 8]).unwrap();
            g.mark_output(y);
            if keep {
                let z = g.push(Gelu { n: 2048 }, &[h], "z", &[1, 32, 8, 8]).unwrap();
                g.mark_output(z);
            }
            let p = Plan::new(&g);
            assert_disjoint(&g, &p);
            let s = g.nodes[1].scratch.expect("a scratch tensor").0 as usize;
            assert_eq!(g.tensors[s].numel(), 2048);
            assert_eq!(p.offsets[s] == p.offsets[h.0 as usize], !keep, "keep h: {keep}");
        }
    }
}
