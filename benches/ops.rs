//! One criterion bench per op (the kernel names), on the CPU backend at real LlamaGen shapes, each run through the
//! runtime exactly as a model step runs it (`llamagen::bench::ops`).
//!
//! Throughput: compute-bound cases (VQ convolutions, `vq_attention`, `quantize`, the t2i caption projection) report
//! FLOPs as criterion "elements" (read `Gelem/s` as GFLOP/s); the others report the bytes they must move (weights,
//! KV cache, activations once), as GiB/s.
//!
//!     cargo bench --bench ops                 # everything (~2 min on 2 cores)
//!     cargo bench --bench ops -- matmul/      # one op
//!     cargo bench --bench ops -- --test       # run each case once (smoke test)
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llamagen::bench::ops::cases;
use std::time::Duration;

fn ops(c: &mut Criterion) {
    let all = cases();
    let mut names: Vec<&str> = all.iter().map(|k| k.op).collect();
    names.dedup();
    for op in names {
        let mut group = c.benchmark_group(op);
        group
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(10);
        for case in all.iter().filter(|k| k.op == op) {
            let mut b = case.build().unwrap_or_else(|e| panic!("{}: {e}", case.id()));
            let t = if case.compute {
                Throughput::Elements(b.cost.flops as u64)
            } else {
                Throughput::Bytes(b.cost.bytes as u64)
            };
            group.throughput(t);
            group.bench_function(case.case, |bench| bench.iter(|| b.run().expect("op run")));
        }
        group.finish();
    }
}

criterion_group!(benches, ops);
criterion_main!(benches);
