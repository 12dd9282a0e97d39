//! One criterion bench per op (the kernel names) at real LlamaGen shapes, on the CPU backend and, where a GPU and
//! its driver are present, on the CUDA backend too (`<op>/<case>/cuda`), each run through the runtime exactly as a
//! model step runs it (`llamagen::bench::ops`). A CUDA run is timed to completion: every iteration synchronises.
//!
//! Throughput: compute-bound cases (VQ convolutions, `vq_attention`, `quantize`, the t2i caption projection) report
//! FLOPs as criterion "elements" (read `Gelem/s` as GFLOP/s); the others report the bytes they must move (weights,
//! KV cache, activations once), as GiB/s.
//!
//!     cargo bench --bench ops                 # everything (~2 min on 2 cores, plus the GPU cases on a GPU)
//!     cargo bench --bench ops -- matmul/      # one op
//!     cargo bench --bench ops -- /cuda        # the GPU cases only
//!     cargo bench --bench ops -- --test       # run each case once (smoke test)
//!
//! `LLAMAGEN_BENCH_DEVICE=cpu` or `=cuda` keeps one device (`cuda` fails when there is no GPU, rather than
//! quietly benching nothing); `LLAMAGEN_BENCH_QUICK=1` shortens warm-up and measurement to 0.2 s and 0.5 s (what
//! scripts/gpu-check.sh uses within its device lease).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llamagen::backend::cuda::{gpu, launch, CudaBackend};
use llamagen::bench::ops::{cases, OpCase};
use llamagen::ops::Backend;
use std::time::Duration;

fn cuda(bf16: bool) -> llamagen::Result<Box<dyn Backend>> {
    let act = launch::Dtype::activations(bf16);
    Ok(Box::new(CudaBackend::new(gpu::GpuDevice::new(0)?, act)?))
}

/// Whether the CUDA backend can start here: a GPU, its driver, and kernels built into this binary.
fn cuda_usable() -> Result<(), String> {
    if !gpu::available() {
        return Err("no GPU or CUDA driver here".into());
    }
    gpu::GpuDevice::new(0).map(|_| ()).map_err(|e| e.to_string())
}

fn devices() -> Vec<&'static str> {
    match std::env::var("LLAMAGEN_BENCH_DEVICE").as_deref() {
        Ok("cpu") => vec!["cpu"],
        Ok("cuda") => match cuda_usable() {
            Ok(()) => vec!["cuda"],
            Err(e) => panic!("LLAMAGEN_BENCH_DEVICE=cuda: {e}"),
        },
        Ok(other) => panic!("LLAMAGEN_BENCH_DEVICE={other}: expected cpu or cuda"),
        Err(_) => match cuda_usable() {
            Ok(()) => vec!["cpu", "cuda"],
            Err(e) => {
                if gpu::available() {
                    eprintln!("a GPU is present but the CUDA cases are skipped: {e}");
                }
                vec!["cpu"]
            }
        },
    }
}

fn ops(c: &mut Criterion) {
    let all = cases();
    let mut names: Vec<&str> = all.iter().map(|k| k.op).collect();
    names.dedup();
    let devices = devices();
    let quick = std::env::var_os("LLAMAGEN_BENCH_QUICK").is_some();
    let (warm, measure) = if quick { (200, 500) } else { (500, 2000) };
    for op in names {
        let mut group = c.benchmark_group(op);
        group
            .warm_up_time(Duration::from_millis(warm))
            .measurement_time(Duration::from_millis(measure))
            .sample_size(10);
        for case in all.iter().filter(|k| k.op == op) {
            for &dev in &devices {
                let built = match dev {
                    "cuda" => case.build_on(&cuda),
                    _ => case.build(),
                };
                let mut b = built.unwrap_or_else(|e| panic!("{} on {dev}: {e}", case.id()));
                group.throughput(throughput(case, &b));
                let name = if dev == "cpu" {
                    case.case.to_string()
                } else {
                    format!("{}/{dev}", case.case)
                };
                group.bench_function(name, |bench| bench.iter(|| b.run().expect("op run")));
            }
        }
        group.finish();
    }
}

fn throughput(case: &OpCase, b: &llamagen::bench::ops::OpBench) -> Throughput {
    if case.compute {
        Throughput::Elements(b.cost.flops as u64)
    } else {
        Throughput::Bytes(b.cost.bytes as u64)
    }
}

criterion_group!(benches, ops);
criterion_main!(benches);
