//! File I/O: npy/npz round trips and numpy-made files, atomic writes, pixel conversions, PNG/JPEG, and the
//! encoder's ADM centre crop against Pillow-made references (tests/data/io, produced by numpy 2.4 / Pillow 13).
use std::path::{Path, PathBuf};

use llamagen::io::npy::{self, parse_npy, read_npy, NpyArray, NpyData};
use llamagen::io::npz::{npz_member, read_npz, write_npz};
use llamagen::io::png::{grid, preprocess_for_encoder, read_rgb, resize_bicubic_nchw, to_u8_hwc, write_png_rgb};
use llamagen::io::write_atomic;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/io").join(name)
}

fn err_text<T: std::fmt::Debug>(r: llamagen::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- npy

fn all_dtypes(shape: &[usize]) -> Vec<NpyArray> {
    let n: usize = shape.iter().product();
    let datas = [
        NpyData::I64((0..n as i64).map(|i| i * 1_000_000_007 - 5).collect()),
        NpyData::I32((0..n as i32).map(|i| -i * 3).collect()),
        NpyData::U8((0..n).map(|i| (i * 37 % 256) as u8).collect()),
        NpyData::F32((0..n).map(|i| i as f32 * -0.375 + 1e-7).collect()),
        NpyData::F64((0..n).map(|i| (i as f64).sqrt() * std::f64::consts::PI).collect()),
        NpyData::Bool((0..n).map(|i| i % 3 == 1).collect()),
    ];
    datas
        .into_iter()
        .map(|data| NpyArray {
            shape: shape.to_vec(),
            data,
        })
        .collect()
}

#[test]
fn npy_round_trip_every_dtype_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    for shape in [vec![], vec![0], vec![5], vec![2, 3], vec![3, 0, 2], vec![1, 2, 3, 4]] {
        for arr in all_dtypes(&shape) {
            let bytes = arr.to_npy_bytes();
            let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
            assert_eq!(header_end % 64, 0, "data must start 64-byte aligned");
            assert_eq!(parse_npy(&bytes, Path::new("mem")).unwrap(), arr);
            let p = dir.path().join("a.npy");
            npy::write_npy(&p, &arr).unwrap();
            assert_eq!(read_npy(&p).unwrap(), arr, "{shape:?} {}", arr.data.descr());
        }
    }
}

#[test]
fn npy_scalar_and_empty_headers() {
    let s = npy::npy_bytes_f32(&[], &[2.5]);
    assert!(std::str::from_utf8(&s[10..])
        .unwrap()
        .starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (), }"));
    assert_eq!(&s[s.len() - 4..], &2.5f32.to_le_bytes());
    let a = parse_npy(&s, Path::new("s")).unwrap();
    assert_eq!(
        (a.shape.clone(), a.numel(), a.to_f32().unwrap()),
        (vec![], 1, vec![2.5])
    );

    let e = npy::npy_bytes_u8(&[0], &[]);
    assert!(std::str::from_utf8(&e[10..])
        .unwrap()
        .starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (0,), }"));
    assert_eq!(e.len(), 128);
    assert_eq!(parse_npy(&e, Path::new("e")).unwrap().data, NpyData::U8(vec![]));
}

/// Header exactly as numpy 1.x writes it: dict, spaces to a 64-byte boundary, '\n'.
fn handmade(version: u8, dict: &str, body: &[u8]) -> Vec<u8> {
    let prefix = if version == 1 { 10 } else { 12 };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let hlen = total - prefix;
    let mut v = b"\x93NUMPY".to_vec();
    v.extend_from_slice(&[version, 0]);
    if version == 1 {
        v.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        v.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    v.extend_from_slice(dict.as_bytes());
    v.resize(total - 1, b' ');
    v.push(b'\n');
    v.extend_from_slice(body);
    v
}

fn le_i64(vals: &[i64]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn npy_switches_to_version_2_only_when_the_header_needs_it() {
    // "1, " per dimension: 21_800 dims pad to just under 64 KiB, 21_830 to just over.
    for (dims, version) in [(21_800, 1u8), (21_830, 2)] {
        let shape = vec![1usize; dims];
        let b = npy::npy_bytes_u8(&shape, &[42]);
        assert_eq!(b[6], version, "{dims} dims");
        let prefix = if version == 1 { 10 } else { 12 };
        let hlen = if version == 1 {
            u16::from_le_bytes([b[8], b[9]]) as usize
        } else {
            u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize
        };
        assert_eq!(((prefix + hlen) % 64, b.len()), (0, prefix + hlen + 1));
        let a = parse_npy(&b, Path::new("big")).unwrap();
        assert_eq!((a.shape.len(), a.data), (dims, NpyData::U8(vec![42])));
    }
}

#[test]
fn npy_parses_handwritten_numpy_header_all_versions() {
    let dict = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }";
    let body = le_i64(&[1, -2, 3, i64::MAX, i64::MIN, 0]);
    for version in [1, 2, 3] {
        let bytes = handmade(version, dict, &body);
        assert_eq!(bytes.len(), 128 + 48, "v{version}");
        let a = parse_npy(&bytes, Path::new("hand.npy")).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, NpyData::I64(vec![1, -2, 3, i64::MAX, i64::MIN, 0]));
    }
    // Our writer emits that very header for the same array.
    assert_eq!(
        npy::npy_bytes_i64(&[2, 3], &[1, -2, 3, i64::MAX, i64::MIN, 0]),
        handmade(1, dict, &body)
    );
}

#[test]
fn npy_reads_files_written_by_numpy() {
    let a = read_npy(&data("np_i64_2x3.npy")).unwrap();
    assert_eq!(
        (a.shape.clone(), a.to_i64().unwrap()),
        (vec![2, 3], vec![-3, -2, -1, 0, 1, 2])
    );
    // float16 widens to F32 exactly.
    let h = read_npy(&data("np_f16_3.npy")).unwrap();
    assert_eq!(h.data, NpyData::F32(vec![0.5, -2.0, 65504.0]));
    let s = read_npy(&data("np_u8_scalar.npy")).unwrap();
    assert_eq!((s.shape.clone(), s.data.clone()), (vec![], NpyData::U8(vec![7])));
}

#[test]
fn npy_narrow_dtypes_widen() {
    let p = Path::new("w.npy");
    let d = |descr: &str| format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
    let a = parse_npy(&handmade(1, &d("|i1"), &[0xff, 0x7f]), p).unwrap();
    assert_eq!(a.data, NpyData::I32(vec![-1, 127]));
    let a = parse_npy(&handmade(1, &d("<i2"), &[0x00, 0x80, 0xff, 0xff]), p).unwrap();
    assert_eq!(a.data, NpyData::I32(vec![-32768, -1]));
    let a = parse_npy(&handmade(1, &d("<u2"), &[0xff, 0xff, 1, 0]), p).unwrap();
    assert_eq!(a.data, NpyData::I32(vec![65535, 1]));
    let a = parse_npy(&handmade(1, &d("<u4"), &[0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0]), p).unwrap();
    assert_eq!(a.data, NpyData::I64(vec![4294967295, 2]));
    let ok = [5u64.to_le_bytes(), 6u64.to_le_bytes()].concat();
    assert_eq!(
        parse_npy(&handmade(1, &d("<u8"), &ok), p).unwrap().data,
        NpyData::I64(vec![5, 6])
    );
    let big = [5u64.to_le_bytes(), u64::MAX.to_le_bytes()].concat();
    assert!(err_text(parse_npy(&handmade(1, &d("<u8"), &big), p)).contains("does not fit"));
    let a = parse_npy(&handmade(1, &d("|b1"), &[0, 2]), p).unwrap();
    assert_eq!(a.data, NpyData::Bool(vec![false, true]));
}

#[test]
fn npy_conversions() {
    let mk = |data| NpyArray { shape: vec![3], data };
    assert_eq!(mk(NpyData::I32(vec![-1, 0, 7])).to_i64(), Some(vec![-1, 0, 7]));
    assert_eq!(mk(NpyData::U8(vec![0, 200, 255])).to_i64(), Some(vec![0, 200, 255]));
    assert_eq!(mk(NpyData::Bool(vec![true, false, true])).to_i64(), Some(vec![1, 0, 1]));
    assert_eq!(mk(NpyData::F32(vec![1.0, 2.0, 3.0])).to_i64(), None);
    assert_eq!(mk(NpyData::F64(vec![1.0, 2.0, 3.0])).to_i64(), None);
    assert_eq!(
        mk(NpyData::F64(vec![0.1, -2.5, 1e300])).to_f32(),
        Some(vec![0.1f32, -2.5, f32::INFINITY])
    );
    assert_eq!(
        mk(NpyData::I64(vec![-3, 0, 1 << 24])).to_f32(),
        Some(vec![-3.0, 0.0, 16777216.0])
    );
    assert_eq!(
        mk(NpyData::Bool(vec![true, false, true])).to_f32(),
        Some(vec![1.0, 0.0, 1.0])
    );
}

#[test]
fn npy_bad_inputs_name_the_source() {
    let p = Path::new("bad/file.npy");
    let dict = |s: &str| s.to_string();
    let good = handmade(
        1,
        "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }",
        &le_i64(&[0; 6]),
    );

    let e = err_text(parse_npy(&good[..good.len() - 1], p));
    assert!(
        e.contains("bad/file.npy") && e.contains("needs 48 data bytes") && e.contains("truncated"),
        "{e}"
    );
    let mut long = good.clone();
    long.push(0);
    assert!(err_text(parse_npy(&long, p)).contains("file has 49"));
    assert!(err_text(parse_npy(b"PK\x03\x04 not npy at all", p)).contains("magic"));
    assert!(err_text(parse_npy(&good[..40], p)).contains("runs past the end"));
    let mut v9 = good.clone();
    v9[6] = 9;
    assert!(err_text(parse_npy(&v9, p)).contains("version 9.0"));

    let f = handmade(
        1,
        &dict("{'descr': '<i8', 'fortran_order': True, 'shape': (2, 3), }"),
        &le_i64(&[0; 6]),
    );
    assert!(err_text(parse_npy(&f, p)).contains("Fortran"));
    let b = handmade(
        1,
        &dict("{'descr': '>i8', 'fortran_order': False, 'shape': (2, 3), }"),
        &le_i64(&[0; 6]),
    );
    let e = err_text(parse_npy(&b, p));
    assert!(e.contains("big-endian") && e.contains("bad/file.npy"), "{e}");
    let c = handmade(
        1,
        &dict("{'descr': '<c8', 'fortran_order': False, 'shape': (6,), }"),
        &le_i64(&[0; 6]),
    );
    assert!(err_text(parse_npy(&c, p)).contains("unsupported dtype '<c8'"));
    let u = handmade(
        1,
        &dict("{'descr': '<U3', 'fortran_order': False, 'shape': (1,), }"),
        &[0; 12],
    );
    assert!(err_text(parse_npy(&u, p)).contains("unsupported dtype"));
    let s = handmade(
        1,
        &dict("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }"),
        &[0; 4],
    );
    assert!(err_text(parse_npy(&s, p)).contains("structured"));
    let g = handmade(
        1,
        &dict("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3}"),
        &le_i64(&[0; 6]),
    );
    assert!(err_text(parse_npy(&g, p)).contains("header"));
    let o = handmade(
        1,
        &dict("{'descr': '<i8', 'fortran_order': False, 'shape': (99999999999, 99999999999)}"),
        &[],
    );
    assert!(err_text(parse_npy(&o, p)).contains("overflows"));

    let missing = Path::new("/nonexistent/dir/x.npy");
    assert!(err_text(read_npy(missing)).contains("/nonexistent/dir/x.npy"));
}

#[test]
fn npy_never_panics_on_corruption() {
    let good = npy::npy_bytes_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    for cut in 0..good.len() {
        assert!(
            parse_npy(&good[..cut], Path::new("cut")).is_err(),
            "prefix {cut} accepted"
        );
    }
    // Deterministic byte flips over the header: any outcome but a panic is acceptable.
    let mut state = 0x9e3779b97f4a7c15u64;
    for _ in 0..5000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut b = good.clone();
        let pos = (state % 64) as usize;
        b[pos] = (state >> 32) as u8;
        let _ = parse_npy(&b, Path::new("flip"));
    }
}

// ---------------------------------------------------------------- npz

#[test]
fn npz_round_trip_two_members() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.npz");
    let tokens: Vec<i64> = (0..12).map(|i| i * 1000 + 7).collect();
    let image: Vec<u8> = (0..2 * 4 * 4 * 3).map(|i| (i * 5) as u8).collect();
    write_npz(
        &p,
        &[
            ("tokens", npy::npy_bytes_i64(&[3, 4], &tokens)),
            ("images", npy::npy_bytes_u8(&[2, 4, 4, 3], &image)),
        ],
    )
    .unwrap();
    assert_eq!(listing(dir.path()), vec!["out.npz"]);
    let m = read_npz(&p).unwrap();
    assert_eq!(
        m.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        vec!["tokens", "images"]
    );
    let t = npz_member(&m, "tokens").unwrap();
    assert_eq!((t.shape.clone(), t.to_i64().unwrap()), (vec![3, 4], tokens));
    let i = npz_member(&m, "images").unwrap();
    assert_eq!(
        (i.shape.clone(), i.data.clone()),
        (vec![2, 4, 4, 3], NpyData::U8(image))
    );
    assert!(npz_member(&m, "nope").is_none());
}

#[test]
fn npz_reads_numpy_savez_and_savez_compressed() {
    let m = read_npz(&data("np_savez.npz")).unwrap();
    assert_eq!(
        npz_member(&m, "tokens").unwrap().to_i64().unwrap(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(npz_member(&m, "tokens").unwrap().shape, vec![2, 3]);
    assert_eq!(npz_member(&m, "probs").unwrap().data, NpyData::F32(vec![0.25, 0.5]));

    let c = read_npz(&data("np_savez_compressed.npz")).unwrap();
    assert_eq!(npz_member(&c, "a").unwrap().data, NpyData::I32((0..100).collect()));
    assert_eq!(
        npz_member(&c, "b").unwrap().data,
        NpyData::Bool(vec![true, false, true])
    );
}

#[test]
fn npz_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.npz");
    std::fs::write(&p, b"definitely not a zip file").unwrap();
    let e = err_text(read_npz(&p));
    assert!(e.contains("bad.npz") && e.contains("zip"), "{e}");

    let good = std::fs::read(data("np_savez.npz")).unwrap();
    for cut in [0, 10, good.len() / 2, good.len() - 1] {
        std::fs::write(&p, &good[..cut]).unwrap();
        assert!(err_text(read_npz(&p)).contains("bad.npz"));
    }

    write_npz(&p, &[("junk", b"not npy".to_vec())]).unwrap();
    let e = err_text(read_npz(&p));
    assert!(e.contains("bad.npz[junk.npy]") && e.contains("magic"), "{e}");

    let dup = [
        ("a", npy::npy_bytes_u8(&[1], &[1])),
        ("a", npy::npy_bytes_u8(&[1], &[2])),
    ];
    assert!(err_text(write_npz(&p, &dup)).contains("repeated"));
    assert!(err_text(read_npz(&dir.path().join("missing.npz"))).contains("missing.npz"));
}

// ---------------------------------------------------------------- atomic writes

#[test]
fn write_atomic_replaces_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.bin");
    write_atomic(&p, b"first version, longer").unwrap();
    write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    assert_eq!(listing(dir.path()), vec!["f.bin"]);
    write_atomic(&p, b"").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"");
    let long = dir.path().join("n".repeat(250));
    write_atomic(&long, b"long name").unwrap();
    assert_eq!(std::fs::read(&long).unwrap(), b"long name");
}

#[test]
fn write_atomic_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no/such/dir/f.png");
    let e = err_text(write_atomic(&p, b"x"));
    assert!(e.contains("no/such/dir/f.png"), "{e}");

    // A regular file where a directory is expected fails even for root.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    let e = err_text(write_png_rgb(&file.join("img.png"), &[0; 3], 1, 1));
    assert!(e.contains("plain/img.png"), "{e}");

    // Target is an existing directory: rename fails and the temporary must go.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("keep"), b"").unwrap();
    assert!(err_text(write_atomic(&sub, b"x")).contains("sub"));
    assert_eq!(listing(dir.path()), vec!["plain", "sub"]);
}

#[cfg(unix)]
#[test]
fn write_atomic_read_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores directory permissions; the check is meaningful only for other users.
    let probe = ro.join("probe");
    let privileged = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    if !privileged {
        let e = err_text(npy::write_npy(&ro.join("a.npy"), &all_dtypes(&[1]).remove(0)));
        assert!(e.contains("ro/a.npy"), "{e}");
        assert!(listing(&ro).is_empty());
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------------------------------------------------------------- pixels

#[test]
fn to_u8_edge_values() {
    // (x, 127.5x + 128 truncated)
    let cases = [
        (-1.0f32, 0u8), // 0.5
        (1.0, 255),
        (0.0, 128),
        (0.996, 254), // 254.99
        (-0.9961, 0), // 0.997
        (-0.992, 1),  // 1.52
        (0.5, 191),   // 191.75
        (-5.0, 0),
        (7.0, 255),
        (f32::NAN, 0),
        (f32::INFINITY, 255),
        (f32::NEG_INFINITY, 0),
    ];
    let (vals, want): (Vec<f32>, Vec<u8>) = cases.into_iter().unzip();
    // One pixel per value, all three channels equal.
    let n = vals.len();
    let x: Vec<f32> = (0..3).flat_map(|_| vals.iter().copied()).collect();
    let u = to_u8_hwc(&x, 1, 1, n);
    assert!(to_u8_hwc(&[], 2, 0, 5).is_empty());
    for (i, &w) in want.iter().enumerate() {
        assert_eq!(&u[i * 3..i * 3 + 3], &[w, w, w], "value {}", vals[i]);
    }
}

#[test]
fn to_u8_layout_is_nchw_to_hwc() {
    // n=2, h=1, w=2: value encodes (image, channel, x).
    let mut x = Vec::new();
    for i in 0..2 {
        for c in 0..3 {
            for px in 0..2 {
                x.push((i * 6 + c * 2 + px) as f32 / 127.5);
            }
        }
    }
    let u = to_u8_hwc(&x, 2, 1, 2);
    // 128 + k for value k/127.5 (exactly representable steps).
    let want: Vec<u8> = [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11].iter().map(|k| 128 + k).collect();
    assert_eq!(u, want);
}

#[test]
fn to_u8_matches_golden_decoder_bytes() {
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vq_tiny.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (img, u8s) in [("image0", "image0_u8"), ("image1", "image1_u8")] {
        let t = st.tensor(img).unwrap();
        let s = t.shape().to_vec();
        let x: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(to_u8_hwc(&x, s[0], s[2], s[3]), st.tensor(u8s).unwrap().data(), "{img}");
    }
}

#[test]
fn grid_layout_and_padding() {
    let (h, w) = (2, 3);
    let imgs: Vec<Vec<u8>> = (0..5u8).map(|k| vec![10 + k; h * w * 3]).collect();
    let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
    let (g, gh, gw) = grid(&refs, h, w, 3);
    assert_eq!((gh, gw), (2 * (h + 2) + 2, 3 * (w + 2) + 2));
    assert_eq!(g.len(), gh * gw * 3);
    let px = |y: usize, x: usize| &g[(y * gw + x) * 3..(y * gw + x) * 3 + 3];
    assert_eq!(px(0, 0), &[0, 0, 0]);
    assert_eq!(px(2, 2), &[10, 10, 10]); // image 0, top-left
    assert_eq!(px(3, 4), &[10, 10, 10]); // image 0, bottom-right
    assert_eq!(px(2, 5), &[0, 0, 0]); // gap between 0 and 1
    assert_eq!(px(2, 7), &[11, 11, 11]); // image 1
    assert_eq!(px(6, 2 + 2 * (w + 2)), &[0, 0, 0]); // unused sixth cell stays black
    assert_eq!(px(7, 2 + w + 2), &[14, 14, 14]); // image 4 (row 1, col 1), bottom-left
                                                 // A distinctive pixel lands where expected: image 3 (row 1, col 0), pixel (1, 2).
    let mut m = imgs.clone();
    m[3][(w + 2) * 3..(w + 2) * 3 + 3].copy_from_slice(&[1, 2, 3]);
    let refs: Vec<&[u8]> = m.iter().map(|v| v.as_slice()).collect();
    let (g, _, gw) = grid(&refs, h, w, 3);
    let (y, x) = (h + 2 + 2 + 1, 2 + 2);
    assert_eq!(&g[(y * gw + x) * 3..(y * gw + x) * 3 + 3], &[1, 2, 3]);

    // More columns than images: one row, as wide as needed.
    let (_, gh, gw) = grid(&refs[..2], h, w, 8);
    assert_eq!((gh, gw), (h + 4, 2 * (w + 2) + 2));
    // One image comes back unpadded (torchvision's make_grid does the same).
    assert_eq!(grid(&refs[..1], h, w, 4), (m[0].clone(), h, w));
    assert_eq!(grid(&[], h, w, 4), (vec![], 0, 0));
}

#[test]
fn png_round_trip_and_read_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = (5, 7);
    let img: Vec<u8> = (0..h * w * 3).map(|i| (i * 31 % 256) as u8).collect();
    let p = dir.path().join("x.png");
    write_png_rgb(&p, &img, h, w).unwrap();
    assert_eq!(&std::fs::read(&p).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(read_rgb(&p).unwrap(), (img.clone(), h, w));
    assert_eq!(listing(dir.path()), vec!["x.png"]);

    assert!(err_text(write_png_rgb(&p, &img[1..], h, w)).contains("x.png"));
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    assert!(err_text(read_rgb(&junk)).contains("junk.png"));
    assert!(err_text(read_rgb(&dir.path().join("absent.jpg"))).contains("absent.jpg"));
}

#[test]
fn read_rgb_converts_grey_alpha_and_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let grey = dir.path().join("g.png");
    image::GrayImage::from_raw(2, 1, vec![9, 200])
        .unwrap()
        .save(&grey)
        .unwrap();
    assert_eq!(read_rgb(&grey).unwrap(), (vec![9, 9, 9, 200, 200, 200], 1, 2));
    let rgba = dir.path().join("a.png");
    image::RgbaImage::from_raw(1, 1, vec![1, 2, 3, 0])
        .unwrap()
        .save(&rgba)
        .unwrap();
    assert_eq!(read_rgb(&rgba).unwrap(), (vec![1, 2, 3], 1, 1));

    // A flat JPEG decodes to (nearly) its colour; the extension is irrelevant.
    let jpg = dir.path().join("photo.dat");
    let flat = image::RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]));
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95)
        .encode(flat.as_raw(), 16, 8, image::ExtendedColorType::Rgb8)
        .unwrap();
    std::fs::write(&jpg, &buf).unwrap();
    let (px, h, w) = read_rgb(&jpg).unwrap();
    assert_eq!((h, w), (8, 16));
    for c in px.chunks_exact(3) {
        assert!(
            c.iter().zip([200i32, 100, 50]).all(|(&a, b)| (a as i32 - b).abs() <= 3),
            "{c:?}"
        );
    }
}

// ---------------------------------------------------------------- encoder preprocessing

fn to_u8_from_encoder(x: &[f32], size: usize) -> Vec<u8> {
    // Invert x = 2u/255 - 1 (exact to well under half a level) back to HWC for comparison.
    let mut out = vec![0u8; size * size * 3];
    for c in 0..3 {
        for p in 0..size * size {
            out[p * 3 + c] = ((x[c * size * size + p] + 1.0) * 127.5).round() as u8;
        }
    }
    out
}

#[test]
fn preprocess_normalisation_and_layout() {
    // Already the target size: no resampling, just the mapping and CHW layout.
    let img: Vec<u8> = vec![0, 128, 255, 51, 102, 204, 1, 2, 3, 254, 253, 252];
    let x = preprocess_for_encoder(&img, 2, 2, 2);
    assert_eq!(x.len(), 12);
    let f = |u: u8| 2.0 * (u as f32 / 255.0) - 1.0;
    assert_eq!(x[0], -1.0);
    assert_eq!(x[8], 1.0);
    assert_eq!(x[4], f(128)); // channel 1, pixel 0
    assert_eq!(&x[0..4], &[f(0), f(51), f(1), f(254)]);
    assert_eq!(&x[8..12], &[f(255), f(204), f(3), f(252)]);
}

#[test]
fn preprocess_crops_the_centre_without_resampling_when_short_side_fits() {
    // 4x9 to 4: scale 1, so only the crop at x0 = (9 - 4) / 2 = 2 applies.
    let (h, w) = (4, 9);
    let img: Vec<u8> = (0..h * w)
        .flat_map(|p| [(p % w * 20) as u8, (p / w * 50) as u8, 7])
        .collect();
    let got = to_u8_from_encoder(&preprocess_for_encoder(&img, h, w, 4), 4);
    let want: Vec<u8> = (0..16)
        .flat_map(|p| [((p % 4 + 2) * 20) as u8, (p / 4 * 50) as u8, 7])
        .collect();
    assert_eq!(got, want);
}

#[test]
fn preprocess_matches_pillow_center_crop_arr() {
    for (name, size) in [("crop_a", 16), ("crop_b", 10), ("crop_c", 12)] {
        let (img, h, w) = read_rgb(&data(&format!("{name}.png"))).unwrap();
        let want = read_npy(&data(&format!("{name}_expected.npy"))).unwrap();
        assert_eq!(want.shape, vec![size, size, 3]);
        let got = to_u8_from_encoder(&preprocess_for_encoder(&img, h, w, size), size);
        assert_eq!(NpyData::U8(got), want.data, "{name} ({h}x{w} -> {size})");
    }
    // Sharp wrap-around edges exercise the negative bicubic lobes and clipping; 150x203 halves once.
    let (h, w) = (150, 203);
    let img: Vec<u8> = (0..h * w * 3)
        .map(|i| {
            let (y, x, c) = (i / (w * 3), i / 3 % w, i % 3);
            ((x * 7 + y * 13 + c * 50 + (x * y) % 17) % 256) as u8
        })
        .collect();
    let want = read_npy(&data("crop_formula_150x203_64.npy")).unwrap();
    let got = to_u8_from_encoder(&preprocess_for_encoder(&img, h, w, 64), 64);
    assert_eq!(NpyData::U8(got), want.data);
}

#[test]
fn bicubic_resize_reference_values() {
    // PyTorch bicubic (A = -0.75, align_corners=False) does not reproduce a linear ramp exactly; e.g. output 2
    // of 4 -> 8 samples src 0.75 with weights (-0.03515625, 0.26171875, 0.87890625, -0.10546875) over inputs
    // (0, 0, 1, 2) (edge clamped) = 0.66796875. Values from an independent float64 evaluation of the formula.
    let x: Vec<f32> = (0..4).map(|v| v as f32).collect();
    let up = resize_bicubic_nchw(&x, 1, 1, 4, 1, 8);
    let want = [
        -0.10546875f64,
        0.19140625,
        0.66796875,
        1.296875,
        1.703125,
        2.33203125,
        2.80859375,
        3.10546875,
    ];
    for (&a, b) in up.iter().zip(want) {
        assert!((a as f64 - b).abs() < 1e-6, "{up:?}");
    }
    // Downscaling 9 -> 5 (no antialiasing in torch), applied along H of a 2-channel batch.
    let col: Vec<f32> = (0..2).flat_map(|c| (0..9).map(move |v| (v + c * 10) as f32)).collect();
    let down = resize_bicubic_nchw(&col, 2, 9, 1, 5, 1);
    let want = [0.316f32, 2.248, 4.0, 5.752, 7.684];
    for c in 0..2 {
        for (a, b) in down[c * 5..c * 5 + 5].iter().zip(want) {
            assert!((a - (b + c as f32 * 10.0)).abs() < 1e-4, "{down:?}");
        }
    }
}
