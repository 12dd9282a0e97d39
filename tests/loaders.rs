//! Weight loaders against the golden fixtures and against crafted (hostile or broken) files.
use llamagen::weights::safetensors::SafeTensorsFile;
use llamagen::weights::{
    load_state_dict, load_state_dict_prefixed, save_safetensors, synth, torch_pt, StateDict, Tensor,
};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn fixture_weights(case: &str) -> StateDict {
    let sd = load_state_dict_prefixed(&data(&format!("{case}.safetensors")), "weights/").unwrap();
    assert!(sd.len() > 10, "{case}: only {} weights", sd.len());
    sd
}

/// Same names, shapes and bit patterns.
fn assert_same(a: &StateDict, b: &StateDict) {
    let an: Vec<_> = a.names().collect();
    let bn: Vec<_> = b.names().collect();
    assert_eq!(an, bn, "{} vs {}", a.source.display(), b.source.display());
    for (name, ta) in &a.tensors {
        let tb = &b.tensors[name];
        assert_eq!(ta.shape, tb.shape, "{name}");
        let same = ta.data.iter().zip(&tb.data).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same && ta.data.len() == tb.data.len(), "{name}: values differ");
    }
}

#[test]
fn pt_files_hold_the_safetensors_weights() {
    for (case, has_raw) in [("gpt_tiny_c2i", true), ("gpt_tiny_t2i", true), ("vq_tiny", false)] {
        let st = fixture_weights(case);
        let pt = load_state_dict(&data(&format!("{case}.pt"))).unwrap();
        assert_same(&st, &pt);
        assert_same(&st, &torch_pt::load_pt(&data(&format!("{case}.pt"))).unwrap());
        if has_raw {
            assert_same(&st, &load_state_dict(&data(&format!("{case}.raw.pt"))).unwrap());
        }
    }
    // Prefix filtering applies to .pt files too.
    let pt = load_state_dict_prefixed(&data("vq_tiny.pt"), "decoder.").unwrap();
    assert!(pt.len() > 10 && pt.names().all(|n| !n.starts_with("decoder.")));
    assert!(pt.get("conv_out.weight").is_some());
}

fn shapes_of(case: &str) -> Vec<(String, Vec<usize>)> {
    let f = SafeTensorsFile::open(&data(&format!("{case}.safetensors"))).unwrap();
    synth::shapes_from_json(&f.metadata().unwrap()["state_dict_shapes"]).unwrap()
}

#[test]
fn synth_regenerates_fixture_weights() {
    for case in ["gpt_tiny_c2i", "gpt_tiny_t2i", "vq_tiny"] {
        let shapes = shapes_of(case);
        let st = fixture_weights(case);
        assert_eq!(shapes.len(), st.len(), "{case}");
        assert_same(&st, &synth::state_dict(&shapes));
    }
    // The large cases store only shapes; the VQ-16 count is the spec's 344 keys.
    assert_eq!(shapes_of("vq16").len(), 344);
    let sd = synth::state_dict(&shapes_of("vq16"));
    let cb = sd.expect("quantize.embedding.weight", &[16384, 8]).unwrap();
    assert_eq!(cb.data.len(), 16384 * 8);
}

#[test]
fn synth_matches_python_reference() {
    // Printed by `python3 tests/data/weights.py`: the f32 results widened to f64, so exact.
    let want: [(&str, &[usize], &[f64]); 3] = [
        (
            "norm.weight",
            &[4],
            &[
                0.9051790833473206,
                1.1666514873504639,
                1.0121514797210693,
                1.162405014038086,
            ],
        ),
        (
            "output.weight",
            &[2, 3],
            &[
                -0.30970144271850586,
                0.5207618474960327,
                -0.9401963949203491,
                -0.8735414743423462,
                -0.9703173637390137,
                -0.17322874069213867,
            ],
        ),
        (
            "tok_embeddings.weight",
            &[2, 2],
            &[
                -0.6601250171661377,
                0.6379330158233643,
                -0.9701348543167114,
                -0.11080849170684814,
            ],
        ),
    ];
    for (name, shape, values) in want {
        let got: Vec<f64> = synth::value_f32(name, shape).iter().map(|&v| v as f64).collect();
        assert_eq!(got, values, "{name}");
    }
}

// ---- hand-written pickles -------------------------------------------------------------------

/// Minimal pickle writer for crafting torch.save archives in tests.
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
    fn int(&mut self, i: u16) -> &mut Self {
        self.0.push(b'M');
        self.0.extend(i.to_le_bytes());
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn tuple(&mut self, items: &[u16]) -> &mut Self {
        self.op(b'(');
        for &i in items {
            self.int(i);
        }
        self.op(b't')
    }
    fn empty_ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }
    /// Pushes the argument tuple of `_rebuild_tensor_v2`.
    fn tensor_args(&mut self, storage: (&str, &str, u16), offset: u16, size: &[u16], stride: &[u16]) -> &mut Self {
        self.op(b'(');
        self.op(b'(')
            .str("storage")
            .global("torch", storage.0)
            .str(storage.1)
            .str("cpu");
        self.int(storage.2).op(b't').op(b'Q');
        self.int(offset)
            .tuple(size)
            .tuple(stride)
            .op(0x89)
            .empty_ordered_dict()
            .op(b't')
    }
    fn tensor(&mut self, storage: (&str, &str, u16), offset: u16, size: &[u16], stride: &[u16]) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.tensor_args(storage, offset, size, stride).op(b'R')
    }
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])], method: zip::CompressionMethod) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// {"model": OrderedDict(a.weight = transposed view, b.bias = fp16 Parameter at an offset,
///  c.weight = _rebuild_from_type_v2 view sharing a.weight's storage, step = int64, note = str),
///  "epoch": 3}
fn crafted_pickle() -> Vec<u8> {
    let mut p = Pickle::new();
    p.op(b'}').str("model").empty_ordered_dict().op(b'q').op(0).op(b'(');
    p.str("a.weight").tensor(("FloatStorage", "0", 6), 0, &[3, 2], &[1, 3]);
    p.str("b.bias").global("torch._utils", "_rebuild_parameter").op(b'(');
    p.tensor(("HalfStorage", "1", 4), 1, &[3], &[1])
        .op(0x88)
        .empty_ordered_dict()
        .op(b't')
        .op(b'R');
    p.str("c.weight")
        .global("torch._tensor", "_rebuild_from_type_v2")
        .op(b'(');
    p.global("torch._utils", "_rebuild_tensor_v2")
        .global("torch._tensor", "Tensor");
    p.tensor_args(("FloatStorage", "0", 6), 2, &[2, 2], &[2, 1])
        .op(b'}')
        .op(b't')
        .op(b'R');
    p.str("step").tensor(("LongStorage", "2", 1), 0, &[], &[]);
    p.str("note").str("not a tensor");
    p.op(b'u');
    // OrderedDict state (`_metadata`), as torch writes it.
    p.op(b'}').str("_metadata").op(b'}').op(b's').op(b'b');
    p.op(b's').str("epoch").int(3).op(b's').op(b'.');
    p.0
}

fn crafted_storages() -> Vec<(String, Vec<u8>)> {
    let half: Vec<u8> = [10.0f32, 0.5, -2.0, 7.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    vec![
        ("arch/data/0".into(), f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])),
        ("arch/data/1".into(), half),
        ("arch/data/2".into(), 42i64.to_le_bytes().to_vec()),
    ]
}

fn write_crafted(path: &Path, pickle: &[u8], skip: Option<&str>, method: zip::CompressionMethod) {
    let storages = crafted_storages();
    let mut entries: Vec<(&str, &[u8])> = vec![("arch/data.pkl", pickle), ("arch/byteorder", b"little")];
    for (n, b) in &storages {
        if Some(n.as_str()) != skip {
            entries.push((n, b));
        }
    }
    write_zip(path, &entries, method);
}

#[test]
fn crafted_pt_views_dtypes_and_wrappers() {
    let dir = tempfile::tempdir().unwrap();
    for method in [zip::CompressionMethod::Stored, zip::CompressionMethod::Deflated] {
        let path = dir.path().join("crafted.bin"); // extension must not matter
        write_crafted(&path, &crafted_pickle(), None, method);
        let sd = load_state_dict(&path).unwrap();
        assert_eq!(sd.names().collect::<Vec<_>>(), ["a.weight", "b.bias", "c.weight"]);
        assert_eq!(
            sd.expect("a.weight", &[3, 2]).unwrap().data,
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        assert_eq!(sd.expect("b.bias", &[3]).unwrap().data, [0.5, -2.0, 7.0]);
        assert_eq!(sd.expect("c.weight", &[2, 2]).unwrap().data, [2.0, 3.0, 4.0, 5.0]);
    }
}

fn err_of<T: std::fmt::Debug>(r: llamagen::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn crafted_pt_missing_storage_and_bad_pickles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nostorage.pt");
    write_crafted(
        &path,
        &crafted_pickle(),
        Some("arch/data/1"),
        zip::CompressionMethod::Stored,
    );
    let msg = err_of(load_state_dict(&path));
    assert!(msg.contains("nostorage.pt") && msg.contains("arch/data/1"), "{msg}");

    let bad: [(&[u8], &str); 4] = [
        (b"\x80\x02\xff", "opcode 0xff"),
        (b"\x80\x02}X\x10\x00\x00\x00ab", "truncated"),
        (b"\x80\x02t.", "MARK"),
        (b"\x80\x02]q\x00.", "not a dict"),
    ];
    for (pickle, want) in bad {
        let path = dir.path().join("badpickle.pt");
        write_crafted(&path, pickle, None, zip::CompressionMethod::Stored);
        let msg = err_of(load_state_dict(&path));
        assert!(msg.contains("badpickle.pt") && msg.contains(want), "{msg}");
    }

    // A view reaching past the end of its storage.
    let mut p = Pickle::new();
    p.op(b'}')
        .str("w")
        .tensor(("FloatStorage", "0", 6), 4, &[3], &[1])
        .op(b's')
        .op(b'.');
    let path = dir.path().join("overrun.pt");
    write_crafted(&path, &p.0, None, zip::CompressionMethod::Stored);
    let msg = err_of(load_state_dict(&path));
    assert!(
        msg.contains("overrun.pt") && msg.contains("`w`") && msg.contains("exceeds"),
        "{msg}"
    );
}

#[test]
fn disallowed_globals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.pt");
    let mut p = Pickle::new();
    p.global("os", "system").str("echo pwned").op(0x85).op(b'R').op(b'.');
    write_zip(&path, &[("evil/data.pkl", &p.0)], zip::CompressionMethod::Stored);
    let msg = err_of(load_state_dict(&path));
    assert!(
        msg.contains("disallowed pickle global `os.system`") && msg.contains("evil.pt"),
        "{msg}"
    );

    // Hidden inside an otherwise ordinary state dict.
    let mut p = Pickle::new();
    p.op(b'}')
        .str("model")
        .op(b'}')
        .str("w")
        .global("builtins", "eval")
        .str("1")
        .op(0x85)
        .op(b'R');
    p.op(b's').op(b's').op(b'.');
    write_zip(&path, &[("evil/data.pkl", &p.0)], zip::CompressionMethod::Stored);
    let msg = err_of(load_state_dict(&path));
    assert!(msg.contains("`builtins.eval`"), "{msg}");
}

// ---- broken files ---------------------------------------------------------------------------

fn truncated_copy(dir: &Path, name: &str, keep: usize) -> PathBuf {
    let bytes = std::fs::read(data(name)).unwrap();
    let path = dir.join(format!("cut_{name}"));
    std::fs::write(&path, &bytes[..keep.min(bytes.len())]).unwrap();
    path
}

#[test]
fn truncated_and_corrupt_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let len = std::fs::metadata(data("gpt_tiny_c2i.safetensors")).unwrap().len() as usize;
    for keep in [0, 4, 8, 100, len / 2, len - 1] {
        let path = truncated_copy(dir.path(), "gpt_tiny_c2i.safetensors", keep);
        let msg = err_of(load_state_dict(&path));
        assert!(msg.contains("cut_gpt_tiny_c2i.safetensors"), "keep {keep}: {msg}");
        if keep > 100 {
            assert!(msg.contains("truncated"), "{msg}");
            assert!(SafeTensorsFile::open(&path).is_err());
        }
    }
    let len = std::fs::metadata(data("gpt_tiny_c2i.pt")).unwrap().len() as usize;
    for keep in [3, 100, len / 2, len - 30] {
        let path = truncated_copy(dir.path(), "gpt_tiny_c2i.pt", keep);
        let msg = err_of(load_state_dict(&path));
        assert!(msg.contains("cut_gpt_tiny_c2i.pt"), "keep {keep}: {msg}");
        // The .pt reader on its own (no magic-byte sniffing in front) must fail as cleanly.
        let msg = err_of(torch_pt::load_pt(&path));
        assert!(msg.contains("cut_gpt_tiny_c2i.pt"), "keep {keep}: {msg}");
    }
    let empty = truncated_copy(dir.path(), "vq_tiny.pt", 0);
    assert!(err_of(torch_pt::load_pt(&empty)).contains("cut_vq_tiny.pt"));
    assert!(err_of(SafeTensorsFile::open(&empty)).contains("cut_vq_tiny.pt"));

    // Corrupt header JSON.
    let mut bytes = std::fs::read(data("vq_tiny.safetensors")).unwrap();
    bytes[20] = b'\x01';
    let path = dir.path().join("corrupt.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let msg = err_of(load_state_dict(&path));
    assert!(msg.contains("corrupt.safetensors") && msg.contains("header"), "{msg}");

    let missing = dir.path().join("does_not_exist.pt");
    assert!(matches!(load_state_dict(&missing), Err(llamagen::Error::Io { .. })));
    assert!(err_of(load_state_dict(&missing)).contains("does_not_exist.pt"));
}

// ---- StateDict checks and the writer --------------------------------------------------------

#[test]
fn take_checked_reports_shape_nan_and_missing() {
    let mut sd = StateDict::new("model.safetensors");
    sd.insert("w", Tensor::new(vec![2, 3], vec![1.0; 6]).unwrap());
    sd.insert(
        "n",
        Tensor {
            shape: vec![4],
            data: vec![0.0, 1.0, f32::NAN, 2.0],
        },
    );

    let msg = err_of(sd.take_checked("w", &[3, 2]));
    assert!(
        msg.contains("`w`") && msg.contains("[3, 2]") && msg.contains("[2, 3]"),
        "{msg}"
    );
    let msg = err_of(sd.expect("n", &[4]));
    assert!(
        msg.contains("`n`") && msg.contains("NaN") && msg.contains("index 2"),
        "{msg}"
    );
    let msg = err_of(sd.take_checked("absent", &[1]));
    assert!(msg.contains("`absent`") && msg.contains("model.safetensors"), "{msg}");

    assert_eq!(sd.take_checked("w", &[2, 3]).unwrap().data, vec![1.0; 6]);
    assert!(sd.get("w").is_none() && sd.get("n").is_some());
}

#[test]
fn save_safetensors_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    let src = fixture_weights("gpt_tiny_t2i");
    let meta = HashMap::from([("config".to_string(), "{\"x\": 1}".to_string())]);
    std::fs::write(&path, b"old contents").unwrap(); // replaced atomically
    save_safetensors(&path, &src, Some(&meta)).unwrap();

    let f = SafeTensorsFile::open(&path).unwrap();
    assert_eq!(f.metadata(), Some(&meta));
    assert_eq!(f.names().len(), src.len());
    assert_same(&src, &load_state_dict(&path).unwrap());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary file left behind");

    save_safetensors(&path, &StateDict::new("empty"), None).unwrap();
    assert!(load_state_dict(&path).unwrap().is_empty());
    assert!(SafeTensorsFile::open(&path).unwrap().metadata().is_none());
}

#[test]
fn safetensors_reader_typed_access() {
    let f = SafeTensorsFile::open(&data("vq_tiny.safetensors")).unwrap();
    let (shape, codes) = f.i64("codes1").unwrap();
    assert_eq!((shape, codes.len()), (vec![1, 3, 5], 15));
    assert!(codes.iter().all(|&c| (0..64).contains(&c)));
    let (shape, px) = f.u8("image0_u8").unwrap();
    assert_eq!((shape, px.len()), (vec![2, 8, 8, 3], 384));
    assert_eq!(f.shape("image1").unwrap(), [1, 3, 6, 10]);
    let msg = err_of(f.f32("codes1"));
    assert!(msg.contains("`codes1`") && msg.contains("I64"), "{msg}");
    assert!(err_of(f.i64("nope")).contains("vq_tiny.safetensors"));
    // Non-weight (integer) tensors are not state-dict entries.
    let all = load_state_dict(&data("vq_tiny.safetensors")).unwrap();
    assert!(all.get("codes1").is_none() && all.get("image0").is_some());
}
