//! Cost of graphs: each node's FLOPs and bytes come from its op's descriptor (`ops::<op>::cost`, see `ops::cost` for
//! what is counted); this module sums them over graphs and ops for the bench tables.
pub use crate::ops::cost::{Cost, CostAt, Widths};
use crate::runtime::{Graph, Node};

/// Cost of one node when the graph runs at sequence position `pos` (decode steps; 0 for other graphs).
pub fn node_cost(_g: &Graph, node: &Node, pos: usize, w: Widths) -> Cost {
    node.op.cost(&CostAt { pos, widths: w })
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
