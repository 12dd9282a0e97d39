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
            let o = node.output.0 as usize;
            first[o] = first[o].min(n);
            last[o] = last[o].max(n);
            for t in &node.inputs {
                last[t.0 as usize] = last[t.0 as usize].max(n);
            }
        }
        let sizes: Vec<usize> = g
            .tensors
            .iter()
            .map(|t| (t.numel() * 4).div_ceil(ALIGN) * ALIGN)
            .collect();
        // Greedy by size (largest first), first fit among the already placed tensors that are live at the same time.
        let mut order: Vec<usize> = (0..nt).filter(|&i| first[i] != usize::MAX).collect();
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
        Plan { offsets, size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{concat::Concat, gelu::Gelu, swiglu::Swiglu};
    use crate::runtime::{Phase, Scalar};

    /// Checks the invariant directly: at every node, the tensors that must hold a value occupy disjoint bytes.
    fn assert_disjoint(g: &Graph, p: &Plan) {
        let n = g.nodes.len();
        let live = |t: usize, at: usize| {
            let info = &g.tensors[t];
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
            for (a, &x) in ls.iter().enumerate() {
                for &y in &ls[a + 1..] {
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
}
