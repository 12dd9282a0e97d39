//! Memory-mapped safetensors reader, used for weights and for the golden fixtures alike.
//!
//! The header is parsed and validated here (rather than through the `safetensors` crate) so that
//! every defect — truncation especially — is reported with the file and tensor it concerns.
use super::{numel, FileDtype};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Headers beyond this are certainly corrupt; refusing them bounds the JSON parser's allocation.
const MAX_HEADER: u64 = 100 << 20;

#[derive(Clone, Debug)]
struct Entry {
    dtype: FileDtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

pub struct SafeTensorsFile {
    path: PathBuf,
    map: memmap2::Mmap,
    entries: BTreeMap<String, Entry>,
    metadata: Option<HashMap<String, String>>,
}

impl std::fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

fn parse_dtype(s: &str) -> Option<FileDtype> {
    Some(match s {
        "F64" => FileDtype::F64,
        "F32" => FileDtype::F32,
        "F16" => FileDtype::F16,
        "BF16" => FileDtype::BF16,
        "I64" => FileDtype::I64,
        "I32" => FileDtype::I32,
        "I16" => FileDtype::I16,
        "I8" => FileDtype::I8,
        "U8" => FileDtype::U8,
        "BOOL" => FileDtype::Bool,
        _ => return None,
    })
}

impl SafeTensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let bad = |msg: String| Error::format(path, msg);
        if len < 8 {
            return Err(bad(format!("truncated safetensors file: {len} bytes, no header")));
        }
        // SAFETY: the map is read-only; like every mmap-based reader we rely on the file not being
        // truncated by another process while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(&map[..8]);
        let n = u64::from_le_bytes(n8);
        if n > MAX_HEADER {
            return Err(bad(format!(
                "safetensors header length {n} is implausible (corrupt file?)"
            )));
        }
        if 8 + n > len {
            return Err(bad(format!(
                "truncated safetensors file: header needs {} bytes, file has {len}",
                8 + n
            )));
        }
        let data_start = 8 + n as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&map[8..data_start]).map_err(|e| bad(format!("bad safetensors header: {e}")))?;

        let mut entries = BTreeMap::new();
        let mut metadata = None;
        for (name, v) in header {
            if name == "__metadata__" {
                let m: HashMap<String, String> =
                    serde_json::from_value(v).map_err(|e| bad(format!("bad safetensors __metadata__: {e}")))?;
                metadata = Some(m);
                continue;
            }
            let e = parse_entry(&v, data_start, map.len()).map_err(|msg| bad(format!("tensor `{name}`: {msg}")))?;
            entries.insert(name, e);
        }
        Ok(SafeTensorsFile {
            path: path.to_path_buf(),
            map,
            entries,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.entry(name)?.shape.clone())
    }

    pub fn dtype(&self, name: &str) -> Result<FileDtype> {
        Ok(self.entry(name)?.dtype)
    }

    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let e = self.entry(name)?;
        Ok(&self.map[e.start..e.end])
    }

    /// Any floating-point tensor (F32/F16/BF16/F64) converted to f32.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let e = self.entry(name)?;
        let data = super::floats_to_f32(e.dtype, &self.map[e.start..e.end])
            .ok_or_else(|| self.wrong_type(name, e.dtype, "a float type"))?;
        Ok((e.shape.clone(), data))
    }

    /// An I64 or I32 tensor widened to i64.
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let e = self.entry(name)?;
        let b = &self.map[e.start..e.end];
        let data = match e.dtype {
            FileDtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            FileDtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            d => return Err(self.wrong_type(name, d, "I64 or I32")),
        };
        Ok((e.shape.clone(), data))
    }

    pub fn u8(&self, name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let e = self.entry(name)?;
        if e.dtype != FileDtype::U8 {
            return Err(self.wrong_type(name, e.dtype, "U8"));
        }
        Ok((e.shape.clone(), self.map[e.start..e.end].to_vec()))
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| Error::tensor(name, format!("not found in {}", self.path.display())))
    }

    fn wrong_type(&self, name: &str, found: FileDtype, want: &str) -> Error {
        Error::tensor(
            name,
            format!("has dtype {found:?} in {}, expected {want}", self.path.display()),
        )
    }
}

fn parse_entry(v: &serde_json::Value, data_start: usize, file_len: usize) -> std::result::Result<Entry, String> {
    let dtype_s = v.get("dtype").and_then(|d| d.as_str()).ok_or("no dtype")?;
    let dtype = parse_dtype(dtype_s).ok_or_else(|| format!("unsupported dtype {dtype_s}"))?;
    let shape: Vec<usize> = v
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or("no shape")?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<_>>()
        .ok_or("shape is not a list of sizes")?;
    let offs = v
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .ok_or("no data_offsets")?;
    let (b, e) = match offs.as_slice() {
        [b, e] => (
            b.as_u64().ok_or("bad data_offsets")?,
            e.as_u64().ok_or("bad data_offsets")?,
        ),
        _ => return Err("data_offsets must have two entries".into()),
    };
    let nbytes = numel(&shape)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or("shape overflows")?;
    if e < b || e - b != nbytes as u64 {
        return Err(format!(
            "data_offsets [{b}, {e}] do not match shape {shape:?} of {dtype_s}"
        ));
    }
    let start = (data_start as u64).checked_add(b).ok_or("offset overflows")?;
    let end = (data_start as u64).checked_add(e).ok_or("offset overflows")?;
    if end > file_len as u64 {
        return Err(format!(
            "truncated file: data ends at byte {end}, file has {file_len} bytes"
        ));
    }
    Ok(Entry {
        dtype,
        shape,
        start: start as usize,
        end: end as usize,
    })
}
