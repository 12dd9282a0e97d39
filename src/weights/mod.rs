//! Weight files: safetensors (memory-mapped), PyTorch `torch.save` archives (read without executing
//! pickle code), the deterministic synthetic generator of the golden fixtures, and a safetensors writer.
//!
//! Every loader produces a [`StateDict`] of f32 tensors; consumers validate names and shapes through
//! [`StateDict::take_checked`] / [`StateDict::expect`] so that a wrong checkpoint fails loudly at load
//! time, not as garbage images later.
pub mod safetensors;
pub mod synth;
pub mod torch_pt;

use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// An f32 weight, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = numel(&shape).ok_or_else(|| Error::Invalid(format!("shape {shape:?} overflows")))?;
        if n != data.len() {
            return Err(Error::Invalid(format!(
                "shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Product of the dimensions, `None` on overflow (hostile headers can claim absurd shapes).
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Named f32 tensors plus the file they came from (for error messages).
#[derive(Clone, Debug, Default)]
pub struct StateDict {
    pub tensors: BTreeMap<String, Tensor>,
    pub source: PathBuf,
}

impl StateDict {
    pub fn new(source: impl Into<PathBuf>) -> Self {
        StateDict {
            tensors: BTreeMap::new(),
            source: source.into(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Removes and returns `name` after checking its shape and that every value is finite.
    /// On error the tensor stays in the dict.
    pub fn take_checked(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.expect(name, shape)?;
        self.tensors.remove(name).ok_or_else(|| self.missing(name))
    }

    /// Same checks as [`take_checked`](Self::take_checked), by reference.
    pub fn expect(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        if t.shape != shape {
            return Err(Error::tensor(
                name,
                format!(
                    "expected shape {:?}, found {:?} (in {})",
                    shape,
                    t.shape,
                    self.source.display()
                ),
            ));
        }
        const BLOCK: usize = 1 << 16;
        let bad_block = t
            .data
            .par_chunks(BLOCK)
            .position_first(|c| c.iter().any(|v| !v.is_finite()));
        let bad = bad_block.and_then(|b| {
            t.data[b * BLOCK..]
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| b * BLOCK + i)
        });
        if let Some(i) = bad {
            return Err(Error::tensor(
                name,
                format!(
                    "non-finite value {} at flat index {} (in {})",
                    t.data[i],
                    i,
                    self.source.display()
                ),
            ));
        }
        Ok(t)
    }

    fn missing(&self, name: &str) -> Error {
        Error::tensor(name, format!("missing from {}", self.source.display()))
    }
}

/// Element types found in weight files. Only the floating ones become state-dict entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl FileDtype {
    pub fn size(self) -> usize {
        match self {
            FileDtype::F64 | FileDtype::I64 => 8,
            FileDtype::F32 | FileDtype::I32 => 4,
            FileDtype::F16 | FileDtype::BF16 | FileDtype::I16 => 2,
            FileDtype::I8 | FileDtype::U8 | FileDtype::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, FileDtype::F64 | FileDtype::F32 | FileDtype::F16 | FileDtype::BF16)
    }
}

/// Little-endian element `i` of `bytes` as f32; `None` for non-float types. Callers bound-check `i`.
pub(crate) fn float_at(dtype: FileDtype, bytes: &[u8], i: usize) -> Option<f32> {
    let s = dtype.size();
    let b = bytes.get(i * s..i * s + s)?;
    Some(match dtype {
        FileDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        FileDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        FileDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        FileDtype::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        _ => return None,
    })
}

/// Converts a contiguous little-endian float buffer; `None` for non-float types or a ragged length.
pub(crate) fn floats_to_f32(dtype: FileDtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let size = dtype.size();
    if !bytes.len().is_multiple_of(size) || !dtype.is_float() || size == 0 {
        return None;
    }
    let mut out = vec![0f32; bytes.len() / size];
    // In parallel blocks: a GPT-B file is ~0.45 GB, and both the mapped file and the fresh vector
    // take a page fault every 4 KiB, so one thread would spend most of the load faulting.
    const BLOCK: usize = 1 << 16;
    out.par_chunks_mut(BLOCK)
        .zip(bytes.par_chunks(BLOCK * size))
        .for_each(|(dst, src)| convert_block(dtype, src, dst));
    Some(out)
}

/// Whole-slice loops (not float_at per element) so the compiler can vectorise the hot f32 path.
fn convert_block(dtype: FileDtype, src: &[u8], dst: &mut [f32]) {
    match dtype {
        FileDtype::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        FileDtype::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        FileDtype::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        FileDtype::F64 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
                *d = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
            }
        }
        _ => unreachable!("convert_block: {dtype:?} is not a float type (checked by floats_to_f32)"),
    }
}

enum Kind {
    SafeTensors,
    TorchZip,
}

fn sniff(path: &Path) -> Result<Kind> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    let head = &head[..got];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Kind::TorchZip);
    }
    // A safetensors header is a JSON object right after its 8-byte length.
    if head.len() == 9 && head[8] == b'{' {
        return Ok(Kind::SafeTensors);
    }
    if head.starts_with(&[0x80, 0x02]) {
        return Err(Error::format(
            path,
            "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a newer \
             torch or convert it to safetensors",
        ));
    }
    if head.len() < 9 {
        return Err(Error::format(
            path,
            format!("only {} bytes: too short for a weight file (truncated?)", head.len()),
        ));
    }
    Err(Error::format(
        path,
        "unrecognised weight file: neither safetensors nor a torch.save zip",
    ))
}

/// Loads every floating-point tensor of a safetensors file or `torch.save` archive as f32.
/// The format is detected by magic bytes, not by extension.
pub fn load_state_dict(path: &Path) -> Result<StateDict> {
    load_state_dict_prefixed(path, "")
}

/// Like [`load_state_dict`], keeping only tensors whose name starts with `prefix`, with the prefix
/// stripped (the golden fixtures store weights under `weights/<official name>`).
pub fn load_state_dict_prefixed(path: &Path, prefix: &str) -> Result<StateDict> {
    load_state_dict_where(path, prefix, &|_| true)
}

/// Like [`load_state_dict_prefixed`], reading (and converting) only the tensors whose stripped name `keep` accepts:
/// a VQ decode skips the encoder, half of the tokenizer's file.
pub fn load_state_dict_where(path: &Path, prefix: &str, keep: &dyn Fn(&str) -> bool) -> Result<StateDict> {
    match sniff(path)? {
        Kind::TorchZip => torch_pt::load_pt_where(path, prefix, keep),
        Kind::SafeTensors => {
            let file = safetensors::SafeTensorsFile::open(path)?;
            let mut sd = StateDict::new(path);
            for name in file.names() {
                let Some(short) = name.strip_prefix(prefix) else {
                    continue;
                };
                // Integer/bool buffers (token fixtures, counters) are not weights.
                if !file.dtype(&name)?.is_float() || !keep(short) {
                    continue;
                }
                let (shape, data) = file.f32(&name)?;
                sd.insert(short, Tensor { shape, data });
            }
            Ok(sd)
        }
    }
}

/// Writes `sd` as an f32 safetensors file, atomically: a temporary file in the same directory is
/// renamed over `path` only once fully written and synced, so readers never see a partial file.
pub fn save_safetensors(path: &Path, sd: &StateDict, metadata: Option<&HashMap<String, String>>) -> Result<()> {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        // Sorted so that equal inputs give byte-identical files.
        let sorted: BTreeMap<_, _> = m.iter().collect();
        header.insert("__metadata__".into(), serde_json::json!(sorted));
    }
    let mut offset = 0usize;
    for (name, t) in &sd.tensors {
        if numel(&t.shape) != Some(t.data.len()) {
            return Err(Error::tensor(
                name,
                format!("shape {:?} does not match {} values", t.shape, t.data.len()),
            ));
        }
        let end = offset + 4 * t.data.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut hbytes = serde_json::to_vec(&header).map_err(|e| Error::format(path, e.to_string()))?;
    // Pad with spaces so the data section starts 8-byte aligned (lets readers cast in place).
    while hbytes.len() % 8 != 0 {
        hbytes.push(b' ');
    }

    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fname = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", fname.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        w.write_all(&(hbytes.len() as u64).to_le_bytes())?;
        w.write_all(&hbytes)?;
        for t in sd.tensors.values() {
            for chunk in t.data.chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                w.write_all(&bytes)?;
            }
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
