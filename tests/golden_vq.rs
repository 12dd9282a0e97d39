//! The VQ tokenizer against the official implementation's float32 fixtures: decode (square and non-square grids),
//! encode, reconstruction, and the uint8 conversion.
mod support;
use support::golden::*;
use support::*;

cpu_family_tests!(vq_tiny_decode_encode_reconstruct, vq16_decode_encode_reconstruct);

fn vq_tiny_decode_encode_reconstruct(make: MakeBackend) {
    let mut r = vq_runner("vq_tiny", make);
    check_decode("vq_tiny", &mut r, 0);
    check_decode("vq_tiny", &mut r, 1);
    check_encode("vq_tiny", &mut r);
}

fn vq16_decode_encode_reconstruct(make: MakeBackend) {
    let mut r = vq_runner("vq16", make);
    check_decode("vq16", &mut r, 0);
    check_encode("vq16", &mut r);
    check_decode("vq16", &mut r, 1);
}

#[test]
fn out_of_range_codes_are_an_error_not_a_panic() {
    let mut r = vq_runner("vq_tiny", &cpu);
    let e = r.decode(&[0, 1, 64, 2], 1, 2, 2).unwrap_err().to_string();
    assert!(e.contains("64") && e.contains("codebook"), "{e}");
}

/// Wall time of the 256² VQ-16 decode (batch 1, the 16×16 latent of the golden case), best of several runs, with
/// the per-op split of one profiled run. `cargo test --release --test golden_vq -- --ignored --nocapture`
#[test]
#[ignore]
fn vq16_decode_timing() {
    let t = std::time::Instant::now();
    let mut r = vq_runner("vq16", &cpu);
    eprintln!(
        "vq16 runner (synthetic state dict + weight upload): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let f = fixture("vq16.safetensors");
    let codes: Vec<u32> = f.i64("codes1").unwrap().1.iter().map(|&c| c as u32).collect();
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
    };
    let t = std::time::Instant::now();
    r.decode(&codes, 1, 16, 16).unwrap();
    eprintln!(
        "first decode (weight layouts prepared, graph planned): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let runs: usize = std::env::var("VQ_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let (mut best, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..runs {
        let (t, c) = (std::time::Instant::now(), cpu());
        r.decode(&codes, 1, 16, 16).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        best_cpu = best_cpu.min(cpu() - c);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "vq16 256² decode: best of {runs} {:.3} s wall, {best_cpu:.3} s CPU (loadavg {})",
        best,
        load.trim()
    );
    let s = r.session_mut().unwrap();
    s.set_profiling(true);
    s.reset_profile();
    r.decode(&codes, 1, 16, 16).unwrap();
    for (op, secs, calls) in r.session().unwrap().profile().by_op() {
        eprintln!("  {op:>14}: {:7.1} ms in {calls} calls", secs * 1e3);
    }
}
