//! Measurement support shared by `llamagen bench` and the criterion benches (`benches/ops.rs`): the machine's
//! ceilings (memory read bandwidth, GEMM peaks), a cost model of every op (FLOPs and bytes at a graph's shapes),
//! and single-op graphs at real LlamaGen shapes.
pub mod ceiling;
pub mod cost;
pub mod lab;
pub mod ops;

pub use ceiling::Ceilings;
pub use cost::Cost;

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}
