//! `--device` and the CPU kernel family from the command line: `info` names what runs, `LLAMAGEN_CPU_KERNELS`
//! forces a family (and a bad value is refused, naming the variable), and the VQ subcommands run on every device,
//! the official fixtures' decodes reproduced through `llamagen decode` on the CPU and on the CUDA emulator.
use llamagen::backend::cpu::KernelFamily;
use llamagen::io::{npy, png};
use llamagen::weights::{self, synth, StateDict};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
#[macro_use]
mod support;
use support::cli::*;
use support::{data, fixture};

#[test]
fn info_names_the_device_and_the_cpu_kernel_family() {
    let d = tmp();
    let r = ok(d.path(), &args!["info", "--device", "cpu"]);
    let detected = KernelFamily::detected();
    assert!(r.stdout.contains(&format!("device: cpu/{detected}")), "{}", r.stdout);
    // With no model flag, the demo model's figures.
    assert!(r.stdout.contains("1838592"), "{}", r.stdout);
    for f in KernelFamily::all_supported() {
        let r = run_env(
            d.path(),
            &args!["info", "--device", "cpu"],
            &[("LLAMAGEN_CPU_KERNELS", f.name())],
        );
        assert!(r.success, "{}", r.stderr);
        assert!(r.stdout.contains(&format!("device: cpu/{f}")), "{f}: {}", r.stdout);
    }
    let r = ok(d.path(), &args!["info", "--device", "cuda-emu", "--dtype", "bf16"]);
    assert!(
        r.stdout.contains("device: cuda-emu") && r.stdout.contains("KV cache (bf16)"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_bad_cpu_kernel_family_is_refused() {
    let d = tmp();
    let info = args!["info", "--device", "cpu"];
    fails_env(
        d.path(),
        &info,
        &[("LLAMAGEN_CPU_KERNELS", "sse9")],
        &["LLAMAGEN_CPU_KERNELS", "sse9", "avx2"],
    );
    if let Some(f) = KernelFamily::ALL.into_iter().find(|f| !f.supported()) {
        fails_env(
            d.path(),
            &info,
            &[("LLAMAGEN_CPU_KERNELS", f.name())],
            &["LLAMAGEN_CPU_KERNELS", f.name()],
        );
    }
    // Where a model runs, before any output is written.
    let out = d.path().join("out");
    let gen = args!["generate", "--num-images", "1", "--device", "cpu", "--out", &out];
    fails_env(
        d.path(),
        &gen,
        &[("LLAMAGEN_CPU_KERNELS", "fast")],
        &["LLAMAGEN_CPU_KERNELS", "fast"],
    );
    assert!(!out.join("000000.png").exists());
}

/// A golden VQ case as files: the official weights (a release-style .pt, or regenerated into safetensors) and the
/// config, for the command line.
fn vq_files(case: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let config = data(&format!("{case}.config.json"));
    if case == "vq_tiny" {
        return (data("vq_tiny.pt"), config);
    }
    let shapes =
        synth::shapes_from_json(&fixture(&format!("{case}.safetensors")).metadata().unwrap()["state_dict_shapes"]);
    let sd: StateDict = synth::state_dict(&shapes.unwrap());
    let path = dir.join(format!("{case}.safetensors"));
    weights::save_safetensors(&path, &sd, Some(&HashMap::new())).unwrap();
    (path, config)
}

/// `llamagen decode` of the fixture's `codes{i}` on `device`: every PNG within one uint8 level of the official
/// `image{i}_u8`, on at most 0.1 % of the values (the bound of the library-level golden test).
fn decode_matches_the_fixture(case: &str, i: usize, device: &str, dir: &Path) {
    decode_within(case, i, device, "f32", dir, 1, 1e-3);
}

/// As [`decode_matches_the_fixture`] with `--vq-dtype vq_dtype`: no value more than `max_levels` off, at most
/// `frac` of them off at all.
fn decode_within(case: &str, i: usize, device: &str, vq_dtype: &str, dir: &Path, max_levels: i32, frac: f64) {
    let (weights, config) = vq_files(case, dir);
    let f = fixture(&format!("{case}.safetensors"));
    let (shape, codes) = f.i64(&format!("codes{i}")).unwrap();
    let tokens = dir.join(format!("{case}_codes{i}.npy"));
    std::fs::write(&tokens, npy::npy_bytes_i64(&shape, &codes)).unwrap();
    let out = dir.join(format!("{case}_{i}_{device}_{vq_dtype}"));
    let a = args![
        "decode",
        "--vq",
        &weights,
        "--vq-config",
        &config,
        "--tokens",
        &tokens,
        "--out",
        &out,
        "--device",
        device,
        "--vq-dtype",
        vq_dtype
    ];
    ok(dir, &a);
    let (want_shape, want) = f.u8(&format!("image{i}_u8")).unwrap();
    let per = want_shape[1..].iter().product::<usize>();
    let (mut off, mut max) = (0, 0);
    for k in 0..shape[0] {
        let (px, h, w) = png::read_rgb(&out.join(format!("{k:06}.png"))).unwrap();
        assert_eq!((h, w), (want_shape[1], want_shape[2]), "{case} image {k} size");
        for (a, b) in px.iter().zip(&want[k * per..(k + 1) * per]) {
            let d = (*a as i32 - *b as i32).abs();
            max = max.max(d);
            off += (d > 0) as usize;
        }
    }
    eprintln!(
        "llamagen decode --device {device} --vq-dtype {vq_dtype}, {case} codes{i}: {off} of {} uint8 values off, \
         at most {max} levels",
        want.len()
    );
    assert!(
        max <= max_levels,
        "{case} codes{i} on {device} {vq_dtype}: a value is {max} levels off"
    );
    assert!(
        off as f64 <= frac * want.len() as f64,
        "{case} codes{i} on {device} {vq_dtype}: {off} values differ"
    );
}

/// The tensor-core convs through the command line, against the same fixtures (the tiny tokenizer: the emulator
/// runs every mma as a 32-fiber rendezvous, ~70 s for two 64×64 VQ-16 images). 3xTF32 within the f32 bound; TF32
/// within one level; bf16 within a few (the README's `--vq-dtype` table has the VQ-16 figures). The CPU refuses
/// them.
#[test]
fn decode_on_tensor_cores_reproduces_the_golden_vq_cases() {
    let d = tmp();
    for i in 0..2 {
        decode_within("vq_tiny", i, "cuda-emu", "tf32x3", d.path(), 1, 1e-3);
        decode_within("vq_tiny", i, "cuda-emu", "tf32", d.path(), 1, 0.15); // measured 7 % and 5 %
                                                                            // bf16 operands (8 significant bits): measured 55 % and 53 % off, at most 4 and 3 levels
        decode_within("vq_tiny", i, "cuda-emu", "bf16", d.path(), 6, 0.7);
    }
    let (weights, config) = vq_files("vq_tiny", d.path());
    let tokens = d.path().join("vq_tiny_codes0.npy");
    let a = args![
        "decode",
        "--vq",
        &weights,
        "--vq-config",
        &config,
        "--tokens",
        &tokens,
        "--device",
        "cpu"
    ];
    let mut a = a;
    a.extend(args!["--vq-dtype", "tf32"]);
    let r = run(d.path(), &a);
    assert!(
        !r.success && r.stderr.contains("--vq-dtype") && r.stderr.contains("cuda"),
        "{}",
        r.stderr
    );
}

/// The README's `--vq-dtype` figures: VQ-16 `codes0` (two 64×64 images) through the tensor-core convs on the
/// emulator (~70 s each): `cargo test --release --test cli_devices vq16_on_tensor_cores -- --ignored --nocapture`.
#[test]
#[ignore = "minutes on the emulator; the README's --vq-dtype table"]
fn vq16_on_tensor_cores() {
    let d = tmp();
    decode_within("vq16", 0, "cuda-emu", "tf32x3", d.path(), 1, 1e-3);
    decode_within("vq16", 0, "cuda-emu", "tf32", d.path(), 1, 0.1);
    decode_within("vq16", 0, "cuda-emu", "bf16", d.path(), 8, 0.6); // measured 44 %, at most 6 levels
}

#[test]
fn decode_reproduces_the_golden_vq_cases_on_every_device() {
    let d = tmp();
    for device in ["cpu", "cuda-emu"] {
        decode_matches_the_fixture("vq_tiny", 0, device, d.path());
        decode_matches_the_fixture("vq_tiny", 1, device, d.path());
        decode_matches_the_fixture("vq16", 0, device, d.path());
        decode_matches_the_fixture("vq16", 1, device, d.path());
    }
}

/// `encode` and `reconstruct` take `--device` too, and the emulated CUDA kernels give the CPU's codes.
#[test]
fn encode_and_reconstruct_run_on_the_cuda_emulator() {
    let d = tmp();
    let (weights, config) = vq_files("vq_tiny", d.path());
    let img = d.path().join("in.png");
    let px: Vec<u8> = (0..16 * 16 * 3).map(|i| ((i * 37) % 251) as u8).collect();
    png::write_png_rgb(&img, &px, 16, 16).unwrap();
    let vq = args!["--vq", &weights, "--vq-config", &config, "--image-size", "16"];
    let mut codes = Vec::new();
    for device in ["cpu", "cuda-emu"] {
        let out = d.path().join(format!("{device}.npy"));
        let mut a = args!["encode", &img, "--out", &out, "--device", device];
        a.extend(vq.iter().cloned());
        ok(d.path(), &a);
        codes.push(npy::read_npy(&out).unwrap().to_i64().unwrap());
        let rec = d.path().join(format!("rec-{device}"));
        let mut a = args!["reconstruct", &img, "--out", &rec, "--device", device];
        a.extend(vq.iter().cloned());
        ok(d.path(), &a);
        assert!(rec.join("000000.png").is_file());
    }
    assert_eq!(codes[0], codes[1], "encode: cuda-emu codes vs cpu");
}
