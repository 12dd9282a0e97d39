//! The VQ tokenizer against the official implementation's float32 fixtures: decode (square and non-square grids),
//! encode, reconstruction, and the uint8 conversion.
mod support;
use llamagen::backend::cpu::CpuBackend;
use llamagen::io::png::to_u8_hwc;
use llamagen::model::vq::VqRunner;
use llamagen::model::VqConfig;
use llamagen::weights::{self, StateDict};
use support::*;

fn runner(case: &str) -> VqRunner {
    let cfg = VqConfig::from_json_file(&data(&format!("{case}.config.json"))).unwrap();
    let f = fixture(&format!("{case}.safetensors"));
    let mut sd: StateDict = if case == "vq_tiny" {
        weights::load_state_dict_prefixed(&data("vq_tiny.safetensors"), "weights/").unwrap()
    } else {
        let shapes = weights::synth::shapes_from_json(&f.metadata().unwrap()["state_dict_shapes"]).unwrap();
        weights::synth::state_dict(&shapes)
    };
    VqRunner::new(cfg, &mut sd, true, Box::new(CpuBackend::new(false))).unwrap()
}

/// Float images within 1e-5 relative L2; uint8 at most one level off on at most 0.1% of pixels.
fn check_decode(case: &str, r: &mut VqRunner, i: usize) {
    let f = fixture(&format!("{case}.safetensors"));
    let (shape, codes) = f.i64(&format!("codes{i}")).unwrap();
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    let codes: Vec<u32> = codes.iter().map(|&c| c as u32).collect();
    let got = r.decode(&codes, n, h, w).unwrap();
    let want = f.f32(&format!("image{i}")).unwrap().1;
    assert_finite(&got, "image");
    let err = rel_l2(&got, &want);
    assert!(err <= 1e-5, "{case} image{i}: rel L2 {err:e}");
    let (ih, iw) = (h * r.cfg.downsample(), w * r.cfg.downsample());
    let u8s = to_u8_hwc(&got, n, ih, iw);
    let want_u8 = f.u8(&format!("image{i}_u8")).unwrap().1;
    let off: Vec<i32> = u8s
        .iter()
        .zip(&want_u8)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .collect();
    let max = off.iter().copied().max().unwrap_or(0);
    let count = off.iter().filter(|&&d| d > 0).count();
    assert!(max <= 1, "{case} image{i}_u8: a pixel is {max} levels off");
    assert!(
        count as f64 <= 0.001 * off.len() as f64,
        "{case} image{i}_u8: {count} of {} values differ",
        off.len()
    );
    eprintln!("{case} image{i} ({n}×{h}×{w} codes): rel L2 {err:.2e}, {count} uint8 values one level off");
}

fn check_encode(case: &str, r: &mut VqRunner) {
    let f = fixture(&format!("{case}.safetensors"));
    let (shape, x) = f.f32("input_image").unwrap();
    let (n, s) = (shape[0], shape[2]);
    let codes = r.encode(&x, n, s, s).unwrap();
    let want: Vec<u32> = f.i64("encoded_codes").unwrap().1.iter().map(|&c| c as u32).collect();
    assert_eq!(codes, want, "{case}: encoded codes");
    let g = s / r.cfg.downsample();
    let rec = r.decode(&codes, n, g, g).unwrap();
    let err = rel_l2(&rec, &f.f32("reconstruction").unwrap().1);
    assert!(err <= 1e-5, "{case}: reconstruction rel L2 {err:e}");
    eprintln!("{case}: {} codes equal, reconstruction rel L2 {err:.2e}", codes.len());
}

#[test]
fn vq_tiny_decode_encode_reconstruct() {
    let mut r = runner("vq_tiny");
    check_decode("vq_tiny", &mut r, 0);
    check_decode("vq_tiny", &mut r, 1);
    check_encode("vq_tiny", &mut r);
}

#[test]
fn vq16_decode_encode_reconstruct() {
    let mut r = runner("vq16");
    check_decode("vq16", &mut r, 0);
    check_encode("vq16", &mut r);
    check_decode("vq16", &mut r, 1);
}

#[test]
fn out_of_range_codes_are_an_error_not_a_panic() {
    let mut r = runner("vq_tiny");
    let e = r.decode(&[0, 1, 64, 2], 1, 2, 2).unwrap_err().to_string();
    assert!(e.contains("64") && e.contains("codebook"), "{e}");
}

/// Wall time of the 256² VQ-16 decode (batch 1, the 16×16 latent of the golden case), best of several runs, with
/// the per-op split of one profiled run. `cargo test --release --test golden_vq -- --ignored --nocapture`
#[test]
#[ignore]
fn vq16_decode_timing() {
    let t = std::time::Instant::now();
    let mut r = runner("vq16");
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
