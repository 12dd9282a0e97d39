//! `llamagen bench` end to end on the tiny synthetic configs: every output format has the promised columns, one row
//! per stage and configuration, and positive timings, rates and ceiling shares.
use std::path::{Path, PathBuf};
use std::process::Command;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn bench(extra: &[&str]) -> String {
    let gpt = data("gpt_tiny_c2i.config.json");
    let vq = data("vq_tiny.config.json");
    let out = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .arg("bench")
        .arg("--gpt-config")
        .arg(&gpt)
        .arg("--vq-config")
        .arg(&vq)
        .arg("--synthetic-weights")
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot start the llamagen binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {extra:?} failed: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot start the llamagen binary");
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const STAGES: [&str; 6] = [
    "prefill",
    "decode_step",
    "sampling",
    "gpt_generate",
    "vq_decode",
    "total",
];

#[test]
fn csv_has_every_stage_with_positive_numbers() {
    let out = bench(&["--format", "csv", "-r", "2", "-b", "1,2", "--top-k", "0,2000"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    for col in [
        "commit",
        "device",
        "threads",
        "dtype",
        "model",
        "image_size",
        "batch",
        "cfg",
        "top_k",
        "stage",
        "time_ms",
        "time_ms_std",
        "images_per_s",
        "tokens_per_s",
        "floor_ms",
        "pct_of_ceiling",
        "bound",
    ] {
        assert!(header.contains(&col), "no column {col} in {header:?}");
    }
    let idx = |c: &str| header.iter().position(|h| *h == c).expect("column");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2 * 2 * STAGES.len(), "{out}");
    let num = |r: &[&str], c: &str| -> f64 {
        r[idx(c)]
            .parse()
            .unwrap_or_else(|_| panic!("{c} = `{}` is not a number", r[idx(c)]))
    };
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{r:?}");
        assert!(!r[idx("commit")].is_empty());
        assert!(r[idx("device")].starts_with("cpu"), "{r:?}");
        assert!(num(r, "threads") >= 1.0);
        assert_eq!(r[idx("dtype")], "f32");
        assert_eq!(r[idx("model")], "gpt_tiny_c2i");
        assert!(STAGES.contains(&r[idx("stage")]), "{r:?}");
        assert!(num(r, "time_ms") > 0.0, "{r:?}");
        assert!(num(r, "tokens_per_s") > 0.0, "{r:?}");
        assert!(num(r, "floor_ms") > 0.0 && num(r, "pct_of_ceiling") > 0.0, "{r:?}");
        assert!(["mem", "gemm-f32", "gemm-bf16"].contains(&r[idx("bound")]), "{r:?}");
        if ["gpt_generate", "vq_decode", "total"].contains(&r[idx("stage")]) {
            assert!(num(r, "images_per_s") > 0.0, "{r:?}");
        }
    }
    // The total is the GPT and the VQ stage together.
    for chunk in rows.chunks(STAGES.len()) {
        let t = |s: &str| num(chunk.iter().find(|r| r[idx("stage")] == s).expect("stage"), "time_ms");
        let (g, v, tot) = (t("gpt_generate"), t("vq_decode"), t("total"));
        assert!((g + v - tot).abs() <= 1e-6 * tot.max(1.0) + 1e-9, "{g} + {v} != {tot}");
    }
}

/// With a weights file (the demo model's) every configuration also reports `load`: the file to weights ready in
/// the backend, as bytes moved against the memory ceiling.
#[test]
fn a_weights_file_adds_a_load_row() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .arg("bench")
        .arg("--gpt")
        .arg(root.join("models/demo/gpt.safetensors"))
        .arg("--gpt-config")
        .arg(root.join("models/demo/gpt.config.json"))
        .args([
            "--no-vq", "-r", "1", "--warmup", "0", "--dtype", "f32,bf16", "--format", "json",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot start the llamagen binary");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = v["rows"].as_array().expect("rows");
    let loads: Vec<&serde_json::Value> = rows.iter().filter(|r| r["stage"] == "load").collect();
    assert_eq!(loads.len(), 2, "one load row per dtype: {rows:?}");
    for r in loads {
        assert_eq!(r["per"], "model");
        assert!(r["time_ms"].as_f64().unwrap() > 0.0, "{r}");
        // the demo file is read once and its weights written once (f32: 4, bf16: 2 bytes each)
        let file = std::fs::metadata(root.join("models/demo/gpt.safetensors"))
            .unwrap()
            .len() as f64;
        let gb = r["gbytes"].as_f64().unwrap() * 1e9;
        let width = if r["dtype"] == "bf16" { 1.5 } else { 2.0 };
        assert!(
            (gb / file - width).abs() < 0.05,
            "{r}: {gb} bytes moved for a {file}-byte file"
        );
        assert!(r["floor_ms"].as_f64().unwrap() > 0.0 && r["bound"] == "mem", "{r}");
    }
    assert!(rows.iter().any(|r| r["stage"] == "gpt_generate"));
}

#[test]
fn markdown_and_json_sweep_dtypes_with_ops() {
    let md = bench(&[
        "--no-ceilings",
        "--ops",
        "-r",
        "1",
        "--warmup",
        "1",
        "--dtype",
        "f32,bf16",
        "--cfg-scale",
        "1.0",
    ]);
    let header = md.lines().find(|l| l.starts_with("| commit")).expect("table header");
    for col in [
        "commit",
        "device",
        "threads",
        "dtype",
        "stage",
        "time (ms)",
        "images/s",
        "tokens/s",
        "% of ceiling",
    ] {
        assert!(header.contains(col), "no column {col} in {header}");
    }
    for dtype in ["f32", "bf16"] {
        for stage in STAGES {
            let row = format!("| {dtype} | gpt_tiny_c2i | vq_tiny | 8 | 1 | 1 | 2000 | {stage} |");
            assert!(md.contains(&row), "no row `{row}` in\n{md}");
        }
        for op in ["decode/matmul", "decode/sampling", "vq_decode/conv"] {
            assert!(md.contains(&format!("| {op} |")), "no op row {op} in\n{md}");
        }
    }
    let js = bench(&["--no-ceilings", "--no-profile", "-r", "1", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&js).expect("valid JSON");
    let rows = v["rows"].as_array().expect("rows");
    // Without profiling there is no split: the GPT total, the VQ stage and the sum.
    let stages: Vec<&str> = rows.iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["gpt_generate", "vq_decode", "total"]);
    for r in rows {
        assert!(r["time_ms"].as_f64().unwrap() > 0.0 && r["images_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["threads"].as_u64().unwrap() >= 1 && r["commit"].as_str().is_some());
    }
}

#[test]
fn bad_arguments_fail_cleanly() {
    let gpt = data("gpt_tiny_c2i.config.json");
    let gpt = gpt.to_str().unwrap();
    let e = fails(&[
        "bench",
        "--gpt-config",
        gpt,
        "--no-vq",
        "--synthetic-weights",
        "--reps",
        "0",
    ]);
    assert!(e.contains("--reps"), "{e}");
    let e = fails(&["bench", "--gpt-model", "GPT-B", "--no-vq"]);
    assert!(e.contains("--synthetic-weights"), "{e}");
    let e = fails(&[
        "bench",
        "--gpt-model",
        "GPT-B",
        "--gpt-config",
        gpt,
        "--synthetic-weights",
    ]);
    assert!(e.contains("not both"), "{e}");
}

// ---- the measurement machinery under the command ---------------------------------------------------------------

use llamagen::backend::cpu::CpuBackend;
use llamagen::bench::cost::{graph_cost, Widths};
use llamagen::model::gpt::{Condition, GptOptions, GptRunner};
use llamagen::model::gpt_graph::{self, GptGraphSpec, GptWeightIds, LayerIds};
use llamagen::model::{Dtype, GptConfig};
use llamagen::runtime::{Phase, WeightId};
use llamagen::sample::sampler::SamplingParams;

fn tiny_runner(batch: usize) -> GptRunner {
    let cfg = GptConfig::from_json_file(&data("gpt_tiny_c2i.config.json")).unwrap();
    let mut sd = llamagen::weights::synth::state_dict(&cfg.weight_shapes());
    let opts = GptOptions {
        dtype: Dtype::F32,
        batch,
        cfg_scale: 4.0,
        cfg_interval: -1,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 20,
            top_p: 1.0,
        },
    };
    GptRunner::new(cfg, &mut sd, opts, Box::new(CpuBackend::new(false))).unwrap()
}

#[test]
fn profiling_counts_every_node_and_changes_nothing() {
    let cond = Condition::Classes(vec![1, 7]);
    let mut plain = tiny_runner(2);
    let want = plain.generate(&cond, &[0, 1], 5, |_| {}).unwrap();
    assert!(
        plain.session().profile().graphs.is_empty(),
        "profiling is off by default"
    );
    let mut prof = tiny_runner(2);
    prof.session_mut().set_profiling(true);
    let got = prof.generate(&cond, &[0, 1], 5, |_| {}).unwrap();
    assert_eq!(got, want, "profiling changed the tokens");
    let n = prof.cfg.block_size as u64;
    let layers = prof.cfg.n_layer as u64;
    let p = prof.session().profile();
    assert_eq!(p.phase(Phase::Prefill).1, 1);
    assert_eq!(p.phase(Phase::Decode).1, n - 1);
    assert_eq!(p.op(None, "sampling").1, n, "one sampling node per generated token");
    assert_eq!(p.op(Some(Phase::Decode), "attention").1, layers * (n - 1));
    for g in &p.graphs {
        let nodes: f64 = p.ops.iter().filter(|o| o.graph == g.graph).map(|o| o.seconds).sum();
        assert!(
            nodes > 0.0 && nodes <= g.seconds * (1.0 + 1e-9),
            "{nodes} s of nodes in {} s of runs",
            g.seconds
        );
    }
    let by_op = prof.session().profile().by_op();
    assert!(
        by_op.windows(2).all(|w| w[0].1 >= w[1].1),
        "by_op is sorted slowest first"
    );
    prof.session_mut().reset_profile();
    assert!(prof.session().profile().graphs.is_empty());
}

/// GPT weight ids for building graphs without weights (the cost model reads shapes only).
fn fake_ids(cfg: &GptConfig) -> GptWeightIds {
    let l = LayerIds {
        attention_norm: WeightId(0),
        wqkv: WeightId(0),
        wo: WeightId(0),
        ffn_norm: WeightId(0),
        w13: WeightId(0),
        w2: WeightId(0),
    };
    GptWeightIds {
        cls_table: Some(WeightId(0)),
        cap_fc: None,
        tok: WeightId(0),
        rope: WeightId(0),
        layers: vec![l; cfg.n_layer],
        norm: WeightId(0),
        output: WeightId(0),
    }
}

#[test]
fn cost_model_matches_the_spec_for_gpt_b() {
    let cfg = GptConfig::preset("GPT-B", 256, 16).unwrap();
    let spec = GptGraphSpec {
        images: 1,
        cfg_scale: 4.0,
        sampling: SamplingParams::default(),
        continuous: false,
    };
    let ids = fake_ids(&cfg);
    let (pre, dec) = (
        gpt_graph::prefill(&cfg, &ids, &spec).unwrap(),
        gpt_graph::decode(&cfg, &ids, &spec).unwrap(),
    );
    // A decode step reads every matmul weight once (plus one embedding row per sequence and the KV cache).
    let linear: usize = cfg
        .weight_shapes()
        .iter()
        .filter(|(n, s)| s.len() == 2 && !n.contains("embedding") && !n.starts_with("tok_"))
        .map(|(_, s)| s[0] * s[1])
        .sum();
    for (w, width) in [(Widths::F32, 4.0), (Widths::BF16, 2.0)] {
        let step = graph_cost(&dec, 1, w);
        let weights = linear as f64 * width;
        assert!(
            step.bytes >= weights && step.bytes < 1.02 * weights,
            "{} vs {weights}",
            step.bytes
        );
    }
    // Spec §13.1: about 105 GFLOP per image with guidance at 256 tokens (it counts attention over the whole padded
    // cache; the engine attends over the causal prefix only, so slightly less).
    let total: f64 = graph_cost(&pre, 0, Widths::F32).flops
        + (0..cfg.block_size - 1)
            .map(|i| graph_cost(&dec, 1 + i, Widths::F32).flops)
            .sum::<f64>();
    assert!((95e9..106e9).contains(&total), "{total:e} FLOPs");
}

#[test]
fn op_cases_build_and_run() {
    for case in llamagen::bench::ops::cases() {
        let mut b = case.build().unwrap_or_else(|e| panic!("{}: {e}", case.id()));
        assert!(b.cost.bytes > 0.0, "{}", case.id());
        if case.compute {
            assert!(
                b.cost.flops > 8.0 * b.cost.bytes,
                "{}: compute-bound case with few FLOPs per byte",
                case.id()
            );
        }
        // The big VQ convolutions take a while on two cores: `cargo bench --bench ops -- --test` runs them.
        if b.cost.flops < 2e9 {
            b.run().unwrap_or_else(|e| panic!("{}: {e}", case.id()));
        }
    }
}

/// The CUDA side of the op benches (`benches/ops.rs` runs them on a GPU as `<op>/<case>/cuda`), here on the
/// emulator: every case small enough to emulate quickly builds on the CUDA backend, runs to completion, and gives
/// the CPU backend's output (tokens and codes exactly; values within the kernel tests' bounds, looser for bf16 storage).
#[cfg(llamagen_cuemu)]
#[test]
fn op_cases_run_on_the_cuda_backend() {
    use llamagen::backend::cuda::{emu::EmuDevice, launch, CudaBackend};
    let emu = |bf16: bool| -> llamagen::Result<Box<dyn llamagen::ops::Backend>> {
        let act = launch::Dtype::activations(bf16);
        Ok(Box::new(CudaBackend::new(EmuDevice::new(), act)?))
    };
    let mut ran = Vec::new();
    for case in llamagen::bench::ops::cases() {
        let mut cpu = case.build().unwrap();
        // the emulator runs a thread per CUDA thread's work: keep to the cheap cases
        if cpu.cost.flops > 5e7 || cpu.cost.bytes > 6e7 {
            continue;
        }
        let mut gpu = case
            .build_on(&emu)
            .unwrap_or_else(|e| panic!("{} on cuda-emu: {e}", case.id()));
        cpu.run().unwrap();
        gpu.run().unwrap_or_else(|e| panic!("{} on cuda-emu: {e}", case.id()));
        let (want, got) = (cpu.output().unwrap(), gpu.output().unwrap());
        assert_eq!(want.len(), got.len(), "{}", case.id());
        assert!(got.iter().all(|v| v.is_finite()), "{}: non-finite output", case.id());
        if cpu.output_is_int() {
            assert_eq!(want, got, "{}: tokens differ from the CPU's", case.id());
        }
        let num: f64 = want
            .iter()
            .zip(&got)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|&a| (a as f64).powi(2)).sum();
        let nmse = num / den.max(1e-30);
        let bound = if cpu.bf16 { 1e-4 } else { 1e-9 };
        assert!(
            nmse <= bound,
            "{}: NMSE {nmse:e} against the CPU (bound {bound:e})",
            case.id()
        );
        ran.push(case.id());
    }
    eprintln!("on cuda-emu: {ran:?}");
    assert!(ran.len() >= 12, "only {ran:?} ran");
}
