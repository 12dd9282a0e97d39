//! The `llamagen` binary end to end: every bad input fails cleanly (non-zero exit, no panic, a message naming
//! the culprit, nothing half-written), and the happy paths (generate with resume, batch-size and shard
//! invariance, merge, decode, convert, info) produce the promised files byte for byte.
use llamagen::io::{npy, npz, png};
use llamagen::weights::{self, synth, StateDict, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
#[macro_use]
mod support;
use support::cli::*;
use support::data;

// ---- model files --------------------------------------------------------------------------

const GPT_PT: &str = "gpt_tiny_c2i.pt";
const GPT_CONFIG: &str = "gpt_tiny_c2i.config.json";

fn config_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data(name)).unwrap()).unwrap()
}

fn save_with_config(path: &Path, sd: &StateDict, config: &serde_json::Value) {
    let meta = HashMap::from([("config".to_string(), config.to_string())]);
    weights::save_safetensors(path, sd, Some(&meta)).unwrap();
}

/// The tiny VQ (ch 32, downsampling 2) with a synthetic 512-entry codebook, so it decodes every token of the
/// tiny GPT (vocabulary 512). The config rides along as safetensors metadata.
fn vq512(dir: &Path) -> PathBuf {
    let path = dir.join("vq512.safetensors");
    let mut sd = weights::load_state_dict(&data("vq_tiny.pt")).unwrap();
    let name = "quantize.embedding.weight".to_string();
    let cb = synth::state_dict(&[(name.clone(), vec![512, 8])]);
    sd.insert(name.clone(), cb.get(&name).unwrap().clone());
    let mut cfg = config_json("vq_tiny.config.json");
    cfg["codebook_size"] = 512.into();
    save_with_config(&path, &sd, &cfg);
    path
}

/// The tiny c2i GPT as safetensors (config embedded), after `edit`.
fn gpt_safetensors(dir: &Path, file: &str, edit: impl FnOnce(&mut StateDict)) -> PathBuf {
    let mut sd = weights::load_state_dict(&data(GPT_PT)).unwrap();
    edit(&mut sd);
    let path = dir.join(file);
    save_with_config(&path, &sd, &config_json(GPT_CONFIG));
    path
}

/// `generate` with the tiny c2i GPT (.pt + config) and `vq`, plus `extra`.
fn gen(vq: &Path, out: &Path, extra: &[OsString]) -> Vec<OsString> {
    let mut a = args![
        "generate",
        "--gpt",
        data(GPT_PT),
        "--gpt-config",
        data(GPT_CONFIG),
        "--vq",
        vq,
        "--out",
        out,
        "--quiet",
    ];
    a.extend(extra.iter().cloned());
    a
}

/// `generate` with the given GPT weights (config from the file) and a working VQ.
fn gen_with_gpt(gpt: &Path, vq: &Path, out: &Path) -> Vec<OsString> {
    args![
        "generate",
        "--gpt",
        gpt,
        "--vq",
        vq,
        "--out",
        out,
        "--num-images",
        "1",
        "--quiet"
    ]
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every file under `dir` (recursively, hidden ones included), relative path -> bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Identity of a file's current version: a rewrite (atomic: a new inode renamed into place) changes it even
/// within one timestamp tick.
fn version(p: &Path) -> (u64, SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.modified().unwrap())
}

fn pngs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| name_of(&p))
        .filter(|n| n.ends_with(".png") && n != "grid.png" && !n.starts_with("grid."))
        .collect();
    v.sort();
    v
}

/// No temporary left anywhere under `dir`.
fn assert_no_tmp(dir: &Path) {
    for rel in snapshot(dir).keys() {
        let n = name_of(rel);
        assert!(
            !n.ends_with(".tmp") && !n.contains(".tmp"),
            "temporary file left behind: {}",
            rel.display()
        );
    }
}

fn read_tokens(p: &Path) -> (Vec<usize>, Vec<i64>) {
    let a = npy::read_npy(p).unwrap();
    let v = a.to_i64().unwrap();
    (a.shape, v)
}

// ---- bad weight files -----------------------------------------------------------------------

#[test]
fn missing_weights_file() {
    let d = tmp();
    let vq = vq512(d.path());
    let out = d.path().join("out");
    let gpt = d.path().join("nope.pt");
    let gpt_s = gpt.display().to_string();
    // The config from the (missing) file, or given.
    fails(d.path(), &gen_with_gpt(&gpt, &vq, &out), &[&gpt_s, "no such file"]);
    fails(
        d.path(),
        &args![
            "generate",
            "--gpt",
            &gpt,
            "--gpt-config",
            data(GPT_CONFIG),
            "--vq",
            &vq,
            "--out",
            &out,
            "--quiet"
        ],
        &[&gpt_s, "no such file"],
    );
    // The same for the tokenizer, in `generate` and `decode`.
    let novq = d.path().join("novq.safetensors");
    let novq_s = novq.display().to_string();
    fails(
        d.path(),
        &gen(&novq, &out, &args!["--num-images", "1"]),
        &[&novq_s, "no such file"],
    );
    let toks = d.path().join("t.npy");
    std::fs::write(&toks, npy::npy_bytes_i64(&[1, 2, 2], &[0, 1, 2, 3])).unwrap();
    fails(
        d.path(),
        &args![
            "decode",
            "--vq",
            &novq,
            "--vq-config",
            data("vq_tiny.config.json"),
            "--tokens",
            &toks,
            "--out",
            d.path().join("o")
        ],
        &[&novq_s, "no such file"],
    );
    // A missing tokens file.
    let nofile = d.path().join("no_tokens.npy");
    fails(
        d.path(),
        &decode_args(&vq, &nofile, &d.path().join("o")),
        &[&nofile.display().to_string()],
    );
}

#[test]
fn directory_given_as_weights() {
    let d = tmp();
    let vq = vq512(d.path());
    let dir = d.path().join("weights_dir.pt");
    std::fs::create_dir(&dir).unwrap();
    fails(
        d.path(),
        &args![
            "generate",
            "--gpt",
            &dir,
            "--gpt-config",
            data(GPT_CONFIG),
            "--vq",
            &vq,
            "--out",
            d.path().join("out"),
            "--quiet"
        ],
        &[&dir.display().to_string()],
    );
}

#[test]
fn truncated_safetensors() {
    let d = tmp();
    let vq = vq512(d.path());
    let full = gpt_safetensors(d.path(), "full.safetensors", |_| {});
    let bytes = std::fs::read(&full).unwrap();
    let cut = d.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        d.path(),
        &args![
            "generate",
            "--gpt",
            &cut,
            "--gpt-config",
            data(GPT_CONFIG),
            "--vq",
            &vq,
            "--out",
            d.path().join("out"),
            "--quiet"
        ],
        &[&cut.display().to_string(), "truncated"],
    );
}

#[test]
fn truncated_pt() {
    let d = tmp();
    let vq = vq512(d.path());
    let bytes = std::fs::read(data(GPT_PT)).unwrap();
    for keep in [bytes.len() / 2, bytes.len() - 30] {
        let cut = d.path().join(format!("cut{keep}.pt"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        fails(
            d.path(),
            &args![
                "generate",
                "--gpt",
                &cut,
                "--gpt-config",
                data(GPT_CONFIG),
                "--vq",
                &vq,
                "--out",
                d.path().join("out"),
                "--quiet"
            ],
            &[&cut.display().to_string()],
        );
    }
}

#[test]
fn corrupt_pt() {
    let d = tmp();
    let vq = vq512(d.path());
    let path = d.path().join("corrupt.pt");
    let mut bytes = b"PK\x03\x04".to_vec();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..8192 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    std::fs::write(&path, &bytes).unwrap();
    fails(
        d.path(),
        &args![
            "generate",
            "--gpt",
            &path,
            "--gpt-config",
            data(GPT_CONFIG),
            "--vq",
            &vq,
            "--out",
            d.path().join("out"),
            "--quiet"
        ],
        &[&path.display().to_string()],
    );
}

/// Minimal pickle writer (the subset tests/loaders.rs uses) for a hostile archive.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
}

#[test]
fn pt_with_disallowed_pickle_global() {
    let d = tmp();
    let vq = vq512(d.path());
    let path = d.path().join("evil.pt");
    let marker = d.path().join("pwned");
    // {"model": {"w": os.system("touch <marker>")}}
    let mut p = Pickle::new();
    p.op(b'}')
        .str("model")
        .op(b'}')
        .str("w")
        .global("os", "system")
        .str(&format!("touch {}", marker.display()))
        .op(0x85)
        .op(b'R');
    p.op(b's').op(b's').op(b'.');
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("evil/data.pkl", opts).unwrap();
    z.write_all(&p.0).unwrap();
    z.start_file("evil/byteorder", opts).unwrap();
    z.write_all(b"little").unwrap();
    z.finish().unwrap();
    fails(
        d.path(),
        &args![
            "generate",
            "--gpt",
            &path,
            "--gpt-config",
            data(GPT_CONFIG),
            "--vq",
            &vq,
            "--out",
            d.path().join("out"),
            "--quiet"
        ],
        &[&path.display().to_string(), "os.system"],
    );
    assert!(!marker.exists(), "the pickle's code was executed");
    // `convert` refuses it as well, and leaves no output.
    let out = d.path().join("evil.safetensors");
    fails(
        d.path(),
        &args!["convert", &path, &out],
        &[&path.display().to_string(), "os.system"],
    );
    assert!(!out.exists());
    assert!(!marker.exists());
}

#[test]
fn missing_tensor() {
    let d = tmp();
    let vq = vq512(d.path());
    let name = "layers.1.feed_forward.w2.weight";
    let gpt = gpt_safetensors(d.path(), "missing.safetensors", |sd| {
        sd.tensors.remove(name).unwrap();
    });
    fails(
        d.path(),
        &gen_with_gpt(&gpt, &vq, &d.path().join("out")),
        &[name, "missing.safetensors"],
    );
}

#[test]
fn wrong_shape() {
    let d = tmp();
    let vq = vq512(d.path());
    let gpt = gpt_safetensors(d.path(), "shape.safetensors", |sd| {
        sd.insert("norm.weight", Tensor::new(vec![63], vec![1.0; 63]).unwrap());
    });
    fails(
        d.path(),
        &gen_with_gpt(&gpt, &vq, &d.path().join("out")),
        &["norm.weight", "[64]", "[63]"],
    );
}

#[test]
fn nan_in_a_weight() {
    let d = tmp();
    let vq = vq512(d.path());
    let name = "layers.0.attention.wo.weight";
    let gpt = gpt_safetensors(d.path(), "nan.safetensors", |sd| {
        sd.tensors.get_mut(name).unwrap().data[5] = f32::NAN;
    });
    fails(
        d.path(),
        &gen_with_gpt(&gpt, &vq, &d.path().join("out")),
        &[name, "NaN"],
    );
    // In the tokenizer too, through `decode`.
    let bad_vq = d.path().join("nan_vq.safetensors");
    let mut sd = weights::load_state_dict(&vq).unwrap();
    sd.tensors.get_mut("post_quant_conv.weight").unwrap().data[0] = f32::INFINITY;
    let mut cfg = config_json("vq_tiny.config.json");
    cfg["codebook_size"] = 512.into();
    save_with_config(&bad_vq, &sd, &cfg);
    let toks = d.path().join("t.npy");
    std::fs::write(&toks, npy::npy_bytes_i64(&[1, 2, 2], &[0, 1, 2, 3])).unwrap();
    fails(
        d.path(),
        &args![
            "decode",
            "--vq",
            &bad_vq,
            "--tokens",
            &toks,
            "--out",
            d.path().join("o")
        ],
        &["post_quant_conv.weight"],
    );
}

// ---- bad configs ----------------------------------------------------------------------------

#[test]
fn unparseable_config_json() {
    let d = tmp();
    let vq = vq512(d.path());
    let cfg = d.path().join("broken.config.json");
    std::fs::write(&cfg, "{\"model_type\": \"c2i\", \"dim\": 64,").unwrap();
    fails(
        d.path(),
        &args![
            "generate",
            "--gpt",
            data(GPT_PT),
            "--gpt-config",
            &cfg,
            "--vq",
            &vq,
            "--out",
            d.path().join("out"),
            "--quiet"
        ],
        &[&cfg.display().to_string()],
    );
    // A broken VQ config names its file as well.
    fails(
        d.path(),
        &args![
            "generate",
            "--gpt",
            data(GPT_PT),
            "--gpt-config",
            data(GPT_CONFIG),
            "--vq",
            &vq,
            "--vq-config",
            &cfg,
            "--out",
            d.path().join("out"),
            "--quiet"
        ],
        &[&cfg.display().to_string()],
    );
}

#[test]
fn config_disagrees_with_weights() {
    let d = tmp();
    let vq = vq512(d.path());
    let mut cfg = config_json(GPT_CONFIG);
    cfg["dim"] = 32.into();
    let path = d.path().join("dim32.config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let msg = fails(
        d.path(),
        &args![
            "generate",
            "--gpt",
            data(GPT_PT),
            "--gpt-config",
            &path,
            "--vq",
            &vq,
            "--out",
            d.path().join("out"),
            "--quiet"
        ],
        &["expected shape", "found"],
    );
    // Whichever tensor is checked first, both shapes are named: the expected one with 32, the found one with 64.
    assert!(msg.contains("32]") && msg.contains("64]"), "{msg}");
    assert!(msg.contains("gpt_tiny_c2i.pt"), "{msg}");
}

#[test]
fn gpt_vocabulary_larger_than_the_codebook() {
    // The tiny GPT samples from 512 tokens; vq_tiny has 64 codes.
    let d = tmp();
    let out = d.path().join("out");
    fails(
        d.path(),
        &gen(&data("vq_tiny.pt"), &out, &args!["--num-images", "2"]),
        &["512", "64", "vq_tiny"],
    );
}

// ---- bad flags ------------------------------------------------------------------------------

fn bad_flag(extra: &[OsString], needles: &[&str]) {
    let d = tmp();
    let vq = vq512(d.path());
    let out = d.path().join("out");
    let mut a = extra.to_vec();
    a.extend(args!["--num-images", "1"]);
    fails(d.path(), &gen(&vq, &out, &a), needles);
    // Nothing was generated.
    if out.exists() {
        assert!(pngs(&out).is_empty());
        assert!(!out.join("manifest.jsonl").exists());
    }
}

#[test]
fn class_10_of_10() {
    bad_flag(&args!["--class", "10"], &["--class", "10"]);
}

#[test]
fn class_negative() {
    bad_flag(&args!["--class", "-1"], &["--class", "-1"]);
}

#[test]
fn top_k_negative() {
    bad_flag(&args!["--top-k", "-1"], &["--top-k", "-1"]);
}

#[test]
fn top_p_zero() {
    bad_flag(&args!["--top-p", "0"], &["--top-p", "0"]);
}

#[test]
fn top_p_above_one() {
    bad_flag(&args!["--top-p", "1.5"], &["--top-p", "1.5"]);
}

#[test]
fn temperature_negative() {
    bad_flag(&args!["--temperature", "-1"], &["--temperature", "-1"]);
}

#[test]
fn cfg_scale_negative() {
    bad_flag(&args!["--cfg-scale", "-1"], &["--cfg-scale", "-1"]);
}

#[test]
fn shard_3_of_2() {
    bad_flag(&args!["--shard", "3/2"], &["--shard", "3/2"]);
}

#[test]
fn batch_size_zero() {
    bad_flag(&args!["--batch-size", "0"], &["--batch-size"]);
    // `decode` too.
    let d = tmp();
    let vq = vq512(d.path());
    let toks = d.path().join("t.npy");
    std::fs::write(&toks, npy::npy_bytes_i64(&[1, 2, 2], &[0, 1, 2, 3])).unwrap();
    fails(
        d.path(),
        &args![
            "decode",
            "--vq",
            &vq,
            "--tokens",
            &toks,
            "--out",
            d.path().join("o"),
            "--batch-size",
            "0"
        ],
        &["--batch-size"],
    );
}

#[test]
fn negative_value_for_an_unsigned_flag() {
    for flag in ["--seed", "--num-images", "--batch-size"] {
        bad_flag(&args![flag, "-1"], &[flag, "-1"]);
    }
    let d = tmp();
    fails(
        d.path(),
        &args!["decode", "--tokens", "t.npy", "--batch-size", "-1"],
        &["--batch-size", "-1"],
    );
}

// ---- decode / encode inputs -----------------------------------------------------------------

fn decode_args(vq: &Path, tokens: &Path, out: &Path) -> Vec<OsString> {
    args!["decode", "--vq", vq, "--tokens", tokens, "--out", out]
}

#[test]
fn decode_tokens_outside_the_codebook() {
    let d = tmp();
    let vq = vq512(d.path());
    let toks = d.path().join("big_tokens.npy");
    let mut v: Vec<i64> = (0..32).collect();
    v[31] = 512;
    std::fs::write(&toks, npy::npy_bytes_i64(&[2, 4, 4], &v)).unwrap();
    let out = d.path().join("out");
    fails(d.path(), &decode_args(&vq, &toks, &out), &["big_tokens.npy", "512"]);
    let toks = d.path().join("neg_tokens.npy");
    v[31] = -3;
    std::fs::write(&toks, npy::npy_bytes_i64(&[2, 4, 4], &v)).unwrap();
    fails(d.path(), &decode_args(&vq, &toks, &out), &["neg_tokens.npy", "-3"]);
}

#[test]
fn decode_non_square_token_count() {
    let d = tmp();
    let vq = vq512(d.path());
    let toks = d.path().join("fifteen.npy");
    std::fs::write(&toks, npy::npy_bytes_i64(&[1, 15], &(0..15).collect::<Vec<_>>())).unwrap();
    fails(
        d.path(),
        &decode_args(&vq, &toks, &d.path().join("out")),
        &["fifteen.npy", "15"],
    );
}

#[test]
fn encode_image_size_not_divisible() {
    let d = tmp();
    let img = d.path().join("in.png");
    let px: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 7 % 256) as u8).collect();
    png::write_png_rgb(&img, &px, 8, 8).unwrap();
    let out = d.path().join("tokens.npy");
    fails(
        d.path(),
        &args![
            "encode",
            "--vq",
            data("vq_tiny.pt"),
            "--image-size",
            "9",
            "--out",
            &out,
            &img
        ],
        &["--image-size", "9"],
    );
    assert!(!out.exists());
    // The same image at a proper size encodes.
    ok(
        d.path(),
        &args![
            "encode",
            "--vq",
            data("vq_tiny.pt"),
            "--image-size",
            "8",
            "--out",
            &out,
            &img
        ],
    );
    assert_eq!(read_tokens(&out).0, vec![1, 4, 4]);
}

// ---- output directories ---------------------------------------------------------------------

#[test]
fn output_directory_not_creatable() {
    let d = tmp();
    let vq = vq512(d.path());
    let file = d.path().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("sub");
    fails(
        d.path(),
        &gen(&vq, &out, &args!["--num-images", "1"]),
        &[&file.display().to_string()],
    );
    let toks = d.path().join("t.npy");
    std::fs::write(&toks, npy::npy_bytes_i64(&[1, 2, 2], &[0, 1, 2, 3])).unwrap();
    fails(d.path(), &decode_args(&vq, &toks, &out), &[&file.display().to_string()]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn output_directory_not_writable() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp();
    let vq = vq512(d.path());
    let out = d.path().join("readonly");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores directory permissions: then an existing regular file stands in for the output directory
    // (as unwritable as a directory gets for root).
    let probe = out.join("probe");
    let out = if std::fs::write(&probe, b"").is_ok() {
        std::fs::remove_file(&probe).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!("running as root: chmod has no effect, using a regular file as the output directory");
        let f = d.path().join("regular_file");
        std::fs::write(&f, b"x").unwrap();
        f
    } else {
        out
    };
    fails(
        d.path(),
        &gen(&vq, &out, &args!["--num-images", "1"]),
        &[&out.display().to_string()],
    );
    let toks = d.path().join("t.npy");
    std::fs::write(&toks, npy::npy_bytes_i64(&[1, 2, 2], &[0, 1, 2, 3])).unwrap();
    fails(d.path(), &decode_args(&vq, &toks, &out), &[&out.display().to_string()]);
    if out.is_dir() {
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(snapshot(&out).is_empty());
    }
}

#[test]
fn nothing_half_written_after_a_failure() {
    let d = tmp();
    let vq = vq512(d.path());

    // decode: a bad token in the last image fails before any PNG is written.
    let out = d.path().join("dec");
    std::fs::create_dir(&out).unwrap();
    let toks = d.path().join("t.npy");
    let mut v: Vec<i64> = (0..48).collect();
    v[47] = 100_000;
    std::fs::write(&toks, npy::npy_bytes_i64(&[3, 4, 4], &v)).unwrap();
    fails(d.path(), &decode_args(&vq, &toks, &out), &["t.npy"]);
    assert!(snapshot(&out).is_empty(), "{:?}", snapshot(&out).keys());

    // generate: image 3's PNG cannot be written (a directory squats on its name). Images 0..2 are complete,
    // nothing of image 3 (no record, no temporary) and no aggregate is left.
    let out = d.path().join("gen");
    std::fs::create_dir_all(out.join("000003.png")).unwrap();
    let cmd = gen(
        &vq,
        &out,
        &args!["--num-images", "5", "--batch-size", "1", "--save-tokens"],
    );
    fails(d.path(), &cmd, &["000003.png"]);
    assert_no_tmp(&out);
    assert_eq!(pngs(&out), ["000000.png", "000001.png", "000002.png"]);
    for p in pngs(&out) {
        png::read_rgb(&out.join(p)).unwrap();
    }
    assert!(!out.join(".parts/000003.json").exists());
    assert!(!out.join("manifest.jsonl").exists());
    assert!(!out.join("tokens.npy").exists());
    // Once the obstacle is gone, a rerun finishes the job.
    std::fs::remove_dir(out.join("000003.png")).unwrap();
    ok(d.path(), &cmd);
    assert_no_tmp(&out);
    assert_eq!(pngs(&out).len(), 5);
    let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 5);
}

// ---- happy paths ----------------------------------------------------------------------------

fn manifest(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn generate_resume_and_regenerate() {
    let d = tmp();
    let vq = vq512(d.path());
    let out = d.path().join("D");
    let npz_path = d.path().join("x.npz");
    let cmd = gen(
        &vq,
        &out,
        &args![
            "--num-images",
            "5",
            "--batch-size",
            "2",
            "--save-tokens",
            "--npz",
            &npz_path
        ],
    );
    ok(d.path(), &cmd);
    let names: Vec<String> = (0..5).map(|i| format!("{i:06}.png")).collect();
    assert_eq!(pngs(&out), names);
    assert!(out.join("grid.png").exists());
    assert_no_tmp(&out);

    let lines = manifest(&out.join("manifest.jsonl"));
    assert_eq!(lines.len(), 5);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i, "{l}");
        assert_eq!(l["class"], i % 10, "{l}");
        assert_eq!(l["file"], names[i], "{l}");
    }
    let (shape, toks) = read_tokens(&out.join("tokens.npy"));
    assert_eq!(shape, [5, 4, 4]);
    assert!(toks.iter().all(|&t| (0..512).contains(&t)));

    // The npz holds the PNGs' pixels in index order.
    let members = npz::read_npz(&npz_path).unwrap();
    let arr = npz::npz_member(&members, "arr_0").unwrap();
    assert_eq!(arr.shape, [5, 8, 8, 3]);
    let npy::NpyData::U8(px) = &arr.data else {
        panic!("arr_0 is not uint8")
    };
    for (i, n) in names.iter().enumerate() {
        let (rgb, h, w) = png::read_rgb(&out.join(n)).unwrap();
        assert_eq!((h, w), (8, 8));
        assert_eq!(&px[i * 192..(i + 1) * 192], &rgb[..], "image {i}");
    }
    // grid.png: one column per class (5 images of the first 5 classes: 5 columns × 1 row of 8×8 cells with
    // 2-pixel padding).
    let (_, gh, gw) = png::read_rgb(&out.join("grid.png")).unwrap();
    assert_eq!((gh, gw), (10 + 2, 5 * 10 + 2));

    // Rerun: everything is skipped, every file identical, no PNG rewritten.
    let before = snapshot(&out);
    let npz_before = std::fs::read(&npz_path).unwrap();
    let times: Vec<_> = names.iter().map(|n| version(&out.join(n))).collect();
    ok(d.path(), &cmd);
    assert_eq!(snapshot(&out), before);
    assert_eq!(std::fs::read(&npz_path).unwrap(), npz_before);
    for (n, t) in names.iter().zip(&times) {
        assert_eq!(version(&out.join(n)), *t, "{n} was rewritten");
    }

    // Forget image 3: exactly that one is regenerated, identically.
    std::fs::remove_file(out.join(".parts/000003.json")).unwrap();
    ok(d.path(), &cmd);
    assert_eq!(snapshot(&out), before);
    assert_eq!(std::fs::read(&npz_path).unwrap(), npz_before);
    for (i, (n, t)) in names.iter().zip(&times).enumerate() {
        if i == 3 {
            assert_ne!(version(&out.join(n)), *t, "{n} was not regenerated");
        } else {
            assert_eq!(version(&out.join(n)), *t, "{n} was rewritten");
        }
    }
}

#[test]
fn classes_cycle_through_all_classes() {
    let d = tmp();
    let out = d.path().join("out");
    ok(
        d.path(),
        &args![
            "generate",
            "--gpt",
            data(GPT_PT),
            "--gpt-config",
            data(GPT_CONFIG),
            "--no-images",
            "--num-images",
            "12",
            "--out",
            &out,
            "--quiet"
        ],
    );
    let lines = manifest(&out.join("manifest.jsonl"));
    let classes: Vec<u64> = lines.iter().map(|l| l["class"].as_u64().unwrap()).collect();
    assert_eq!(classes, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    assert!(lines.iter().all(|l| l.get("file").is_none()));
    assert!(pngs(&out).is_empty());
    assert_eq!(read_tokens(&out.join("tokens.npy")).0, [12, 4, 4]);
}

#[test]
fn batch_size_does_not_change_results() {
    let d = tmp();
    let vq = vq512(d.path());
    let mut results = Vec::new();
    for bs in ["1", "3", "8"] {
        let out = d.path().join(format!("bs{bs}"));
        ok(
            d.path(),
            &gen(
                &vq,
                &out,
                &args![
                    "--num-images",
                    "9",
                    "--batch-size",
                    bs,
                    "--seed",
                    "1234",
                    "--class",
                    "3",
                    "--class",
                    "7",
                    "--save-tokens"
                ],
            ),
        );
        let lines = manifest(&out.join("manifest.jsonl"));
        let classes: Vec<u64> = lines.iter().map(|l| l["class"].as_u64().unwrap()).collect();
        assert_eq!(classes, [3, 7, 3, 7, 3, 7, 3, 7, 3]);
        let mut snap = snapshot(&out);
        snap.retain(|p, _| !p.starts_with(".parts"));
        results.push(snap);
    }
    assert!(results[0].keys().any(|p| p.ends_with("tokens.npy")));
    assert_eq!(results[0], results[1], "batch size 1 vs 3");
    assert_eq!(
        results[0], results[2],
        "batch size 1 vs 8 (the last batch holds one image)"
    );
}

#[test]
fn shards_merge_into_the_unsharded_result() {
    let d = tmp();
    let vq = vq512(d.path());
    let common = |npz_path: &Path| {
        args![
            "--num-images",
            "5",
            "--batch-size",
            "2",
            "--seed",
            "9",
            "--save-tokens",
            "--npz",
            npz_path
        ]
    };
    let full = d.path().join("full");
    ok(d.path(), &gen(&vq, &full, &common(&full.join("x.npz"))));

    let sh = d.path().join("sharded");
    for s in ["0/2", "1/2"] {
        let mut extra = common(&sh.join("x.npz"));
        extra.extend(args!["--shard", s]);
        ok(d.path(), &gen(&vq, &sh, &extra));
    }
    assert!(!sh.join("manifest.jsonl").exists());
    // The PNGs of both shards are those of the unsharded run.
    assert_eq!(pngs(&sh), pngs(&full));
    for p in pngs(&full) {
        assert_eq!(
            std::fs::read(sh.join(&p)).unwrap(),
            std::fs::read(full.join(&p)).unwrap(),
            "{p}"
        );
    }
    let s0 = manifest(&sh.join("manifest.shard-0-of-2.jsonl"));
    let s1 = manifest(&sh.join("manifest.shard-1-of-2.jsonl"));
    assert_eq!(
        s0.iter().map(|l| l["index"].as_u64().unwrap()).collect::<Vec<_>>(),
        [0, 2, 4]
    );
    assert_eq!(
        s1.iter().map(|l| l["index"].as_u64().unwrap()).collect::<Vec<_>>(),
        [1, 3]
    );

    let merged = d.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    // Bad merges fail naming the culprit and write nothing: tokens files in the wrong order (shard 1's two
    // images for shard 0's three) ...
    let t0 = sh.join("tokens.shard-0-of-2.npy");
    let t1 = sh.join("tokens.shard-1-of-2.npy");
    fails(
        d.path(),
        &args![
            "merge",
            sh.join("manifest.shard-0-of-2.jsonl"),
            sh.join("manifest.shard-1-of-2.jsonl"),
            "--out",
            merged.join("manifest.jsonl"),
            "--tokens-in",
            &t1,
            "--tokens-in",
            &t0,
            "--tokens",
            merged.join("tokens.npy"),
        ],
        &[&t1.display().to_string()],
    );
    // ... and a shard given twice.
    fails(
        d.path(),
        &args![
            "merge",
            sh.join("manifest.shard-0-of-2.jsonl"),
            sh.join("manifest.shard-0-of-2.jsonl"),
            "--out",
            merged.join("manifest.jsonl"),
        ],
        &["image 0"],
    );
    assert!(snapshot(&merged).is_empty(), "{:?}", snapshot(&merged).keys());
    ok(
        d.path(),
        &args![
            "merge",
            sh.join("manifest.shard-0-of-2.jsonl"),
            sh.join("manifest.shard-1-of-2.jsonl"),
            "--out",
            merged.join("manifest.jsonl"),
            "--npz-in",
            sh.join("x.shard-0-of-2.npz"),
            "--npz-in",
            sh.join("x.shard-1-of-2.npz"),
            "--npz",
            merged.join("x.npz"),
            "--tokens-in",
            sh.join("tokens.shard-0-of-2.npy"),
            "--tokens-in",
            sh.join("tokens.shard-1-of-2.npy"),
            "--tokens",
            merged.join("tokens.npy"),
        ],
    );
    for f in ["manifest.jsonl", "x.npz", "tokens.npy"] {
        assert_eq!(
            std::fs::read(merged.join(f)).unwrap(),
            std::fs::read(full.join(f)).unwrap(),
            "merged {f} differs from the unsharded run's"
        );
    }
}

#[test]
fn decode_reproduces_generated_pngs() {
    let d = tmp();
    let vq = vq512(d.path());
    let out = d.path().join("gen");
    ok(
        d.path(),
        &gen(&vq, &out, &args!["--num-images", "3", "--seed", "5", "--save-tokens"]),
    );
    let dec = d.path().join("dec");
    ok(
        d.path(),
        &args![
            "decode",
            "--vq",
            &vq,
            "--tokens",
            out.join("tokens.npy"),
            "--out",
            &dec,
            "--batch-size",
            "2"
        ],
    );
    assert_eq!(pngs(&dec), pngs(&out));
    for p in pngs(&out) {
        assert_eq!(
            std::fs::read(dec.join(&p)).unwrap(),
            std::fs::read(out.join(&p)).unwrap(),
            "{p}"
        );
    }
    assert_no_tmp(&dec);
    // The flat B×(h·w) layout decodes to the same images.
    let (_, toks) = read_tokens(&out.join("tokens.npy"));
    let flat = d.path().join("flat.npy");
    std::fs::write(&flat, npy::npy_bytes_i64(&[3, 16], &toks)).unwrap();
    let dec2 = d.path().join("dec2");
    ok(d.path(), &decode_args(&vq, &flat, &dec2));
    assert_eq!(snapshot(&dec2), snapshot(&dec));
}

#[test]
fn converted_safetensors_generate_the_same_tokens() {
    let d = tmp();
    let st = d.path().join("out.safetensors");
    ok(
        d.path(),
        &args!["convert", data(GPT_PT), &st, "--config", data(GPT_CONFIG)],
    );
    assert_no_tmp(d.path());
    let opts = args!["--num-images", "4", "--seed", "3", "--no-images", "--quiet"];
    let a = d.path().join("from_pt");
    let mut cmd = args![
        "generate",
        "--gpt",
        data(GPT_PT),
        "--gpt-config",
        data(GPT_CONFIG),
        "--out",
        &a
    ];
    cmd.extend(opts.clone());
    ok(d.path(), &cmd);
    let b = d.path().join("from_st");
    let mut cmd = args!["generate", "--gpt", &st, "--out", &b];
    cmd.extend(opts);
    ok(d.path(), &cmd);
    let (shape, ta) = read_tokens(&a.join("tokens.npy"));
    assert_eq!(shape, [4, 4, 4]);
    let (_, tb) = read_tokens(&b.join("tokens.npy"));
    assert_eq!(ta, tb);
    assert_eq!(
        std::fs::read(a.join("manifest.jsonl")).unwrap(),
        std::fs::read(b.join("manifest.jsonl")).unwrap()
    );
}

#[test]
fn info_gpt_b_parameter_count() {
    let d = tmp();
    let r = ok(d.path(), &args!["info", "--gpt-model", "GPT-B", "--vq-model", "VQ-16"]);
    // Spec §4.1: GPT-B c2i has 88 keys and 110,888,448 parameters.
    assert!(r.stdout.contains("110888448"), "{}", r.stdout);
    assert!(r.stdout.contains("110.9M"), "{}", r.stdout);
}

/// Text-to-image end to end: T5 features and mask from .npy files, greedy decoding, guided and unguided; the tokens
/// equal the official implementation's up to the first position whose margin is below 1e-3.
#[test]
fn t2i_from_caption_npy_files_matches_the_official_greedy_tokens() {
    let d = tmp();
    let f = llamagen::weights::safetensors::SafeTensorsFile::open(&data("gpt_tiny_t2i.safetensors")).unwrap();
    let (es, embs) = f.f32("caption_embs").unwrap();
    let (ms, mask) = f.i64("emb_masks").unwrap();
    let (embs_p, mask_p) = (d.path().join("embs.npy"), d.path().join("mask.npy"));
    std::fs::write(&embs_p, npy::npy_bytes_f32(&es, &embs)).unwrap();
    std::fs::write(&mask_p, npy::npy_bytes_i64(&ms, &mask)).unwrap();
    for (key, scale) in [("greedy_cfg", "7.5"), ("greedy_nocfg", "1.0")] {
        let out = d.path().join(key);
        let a = args![
            "generate",
            "--gpt",
            data("gpt_tiny_t2i.pt"),
            "--gpt-config",
            data("gpt_tiny_t2i.config.json"),
            "--caption-embs",
            &embs_p,
            "--caption-mask",
            &mask_p,
            "--no-images",
            "--top-k",
            "1",
            "--cfg-scale",
            scale,
            "--out",
            &out,
            "--quiet"
        ];
        ok(d.path(), &a);
        let (shape, got) = read_tokens(&out.join("tokens.npy"));
        assert_eq!(shape, [2, 4, 4]);
        let want = f.i64(key).unwrap().1;
        let margin = f.f32(&format!("{key}_margin")).unwrap().1;
        for i in 0..2 {
            for j in 0..16 {
                if margin[i * 16 + j] < 1e-3 {
                    break;
                }
                assert_eq!(got[i * 16 + j], want[i * 16 + j], "{key}: caption {i} token {j}");
            }
        }
        let lines = manifest(&out.join("manifest.jsonl"));
        let captions: Vec<u64> = lines.iter().map(|l| l["caption"].as_u64().unwrap()).collect();
        assert_eq!(captions, [0, 1]);
    }
}

/// `encode` then `decode` equals `reconstruct` (both through the engine), and encode names its input images' grid.
#[test]
fn reconstruct_equals_encode_then_decode() {
    let d = tmp();
    let vq = vq512(d.path());
    // Two 8×8 test pictures written as PNG.
    let imgs: Vec<PathBuf> = (0..2)
        .map(|k| {
            let px: Vec<u8> = (0..8 * 8 * 3).map(|i| ((i * (7 + k) * 13) % 256) as u8).collect();
            let p = d.path().join(format!("in{k}.png"));
            llamagen::io::png::write_png_rgb(&p, &px, 8, 8).unwrap();
            p
        })
        .collect();
    let tokens = d.path().join("t.npy");
    ok(
        d.path(),
        &args![
            "encode",
            "--vq",
            &vq,
            "--image-size",
            "8",
            "--out",
            &tokens,
            &imgs[0],
            &imgs[1]
        ],
    );
    assert_eq!(read_tokens(&tokens).0, [2, 4, 4]);
    let (dec, rec) = (d.path().join("dec"), d.path().join("rec"));
    ok(
        d.path(),
        &args!["decode", "--vq", &vq, "--tokens", &tokens, "--out", &dec],
    );
    ok(
        d.path(),
        &args![
            "reconstruct",
            "--vq",
            &vq,
            "--image-size",
            "8",
            "--out",
            &rec,
            &imgs[0],
            &imgs[1]
        ],
    );
    for name in ["000000.png", "000001.png"] {
        assert_eq!(
            std::fs::read(dec.join(name)).unwrap(),
            std::fs::read(rec.join(name)).unwrap(),
            "{name}"
        );
    }
}
