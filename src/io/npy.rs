//! NumPy `.npy` files (format versions 1.0, 2.0 and 3.0), little-endian, C order.
//!
//! Layout: magic `\x93NUMPY`, major and minor version bytes, header length (u16 LE for v1, u32 LE for v2/v3),
//! a Python dict literal such as `{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }` padded with
//! spaces and a final '\n', then the raw array data.
use std::path::Path;

use crate::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element data of an array. Narrow integer and half-float files are widened on read to the nearest variant
/// that holds every value (`i1`/`i2`/`u2` -> `I32`, `u4`/`u8` -> `I64`, `f2` -> `F32`) so that callers need
/// to handle only these six.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
}

impl NpyData {
    pub fn len(&self) -> usize {
        match self {
            NpyData::I64(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numpy `descr` this data is written with.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::I64(_) => "<i8",
            NpyData::I32(_) => "<i4",
            NpyData::U8(_) => "|u1",
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::Bool(_) => "|b1",
        }
    }
}

/// An n-dimensional array in C order. `shape == []` is a 0-d array holding one element.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// The elements as i64, for integer and bool arrays; `None` for floats (token ids must not come from a
    /// float array silently).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match &self.data {
            NpyData::I64(v) => Some(v.clone()),
            NpyData::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            NpyData::U8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            NpyData::Bool(v) => Some(v.iter().map(|&x| x as i64).collect()),
            NpyData::F32(_) | NpyData::F64(_) => None,
        }
    }

    /// The elements as f32. Always `Some`: f64 and large integers round to the nearest f32, which is what
    /// every consumer of float arrays here (images, logits) wants.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        Some(match &self.data {
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        })
    }

    /// Number of elements implied by the shape (1 for a 0-d array).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Serialise as a version-1.0 `.npy` file (2.0 if the header does not fit in 64 KiB).
    ///
    /// # Panics
    /// If the data length does not match the shape: that is a bug in the caller, not bad input.
    pub fn to_npy_bytes(&self) -> Vec<u8> {
        let body: Vec<u8> = match &self.data {
            NpyData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::U8(v) => v.clone(),
            NpyData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        };
        encode(&self.shape, self.data.descr(), self.data.len(), &body)
    }
}

/// Read a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    parse_npy(&super::read_file(path)?, path)
}

/// Write a `.npy` file atomically.
pub fn write_npy(path: &Path, array: &NpyArray) -> Result<()> {
    super::write_atomic(path, &array.to_npy_bytes())
}

pub fn npy_bytes_i64(shape: &[usize], data: &[i64]) -> Vec<u8> {
    NpyArray {
        shape: shape.to_vec(),
        data: NpyData::I64(data.to_vec()),
    }
    .to_npy_bytes()
}

pub fn npy_bytes_i32(shape: &[usize], data: &[i32]) -> Vec<u8> {
    NpyArray {
        shape: shape.to_vec(),
        data: NpyData::I32(data.to_vec()),
    }
    .to_npy_bytes()
}

pub fn npy_bytes_u8(shape: &[usize], data: &[u8]) -> Vec<u8> {
    NpyArray {
        shape: shape.to_vec(),
        data: NpyData::U8(data.to_vec()),
    }
    .to_npy_bytes()
}

pub fn npy_bytes_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    NpyArray {
        shape: shape.to_vec(),
        data: NpyData::F32(data.to_vec()),
    }
    .to_npy_bytes()
}

fn encode(shape: &[usize], descr: &str, len: usize, body: &[u8]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    assert_eq!(numel, len, "npy: shape {shape:?} needs {numel} elements, got {len}");
    let shape_repr = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_repr}, }}");
    // numpy aligns the data to 64 bytes so that it can be memory-mapped with any element type.
    let padded = |prefix: usize| (prefix + dict.len() + 1).div_ceil(64) * 64 - prefix;
    // Version 1 stores the (padded) header length in a u16; only absurd shapes need version 2.
    let (version, prefix) = if padded(10) <= u16::MAX as usize {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let header_len = padded(prefix);
    let mut out = Vec::with_capacity(prefix + header_len + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + header_len - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// Parse `.npy` bytes; `what` names the source (a file, or `archive.npz[member]`) in errors.
pub fn parse_npy(bytes: &[u8], what: &Path) -> Result<NpyArray> {
    let bad = |msg: String| Error::format(what, format!("not a valid .npy file: {msg}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing \\x93NUMPY magic".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(|| bad("truncated header length".into()))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        _ => return Err(bad(format!("unsupported format version {major}.{minor}"))),
    };
    let header = start
        .checked_add(header_len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| bad(format!("header of {header_len} bytes runs past the end of the file")))?;
    // v1/v2 headers are latin-1, v3 utf-8; the keys and values we accept are plain ASCII either way.
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not ASCII/UTF-8 text".into()))?;
    let h = parse_header(header).map_err(|m| {
        // A corrupt length can make the "header" most of the file; quote only its start.
        let shown: String = header.trim_end().chars().take(160).collect();
        bad(format!("header {shown:?}: {m}"))
    })?;
    if h.fortran_order {
        return Err(Error::format(
            what,
            "Fortran-order (column-major) arrays are not supported; save with np.ascontiguousarray first",
        ));
    }
    let numel = h
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {:?} overflows", h.shape)))?;
    let dtype = Dtype::from_descr(&h.descr).map_err(|m| Error::format(what, m))?;
    let body = &bytes[start + header_len..];
    let expected = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(format!("shape {:?} overflows", h.shape)))?;
    if body.len() != expected {
        return Err(Error::format(
            what,
            format!(
                "shape {:?} of '{}' needs {expected} data bytes, file has {}{}",
                h.shape,
                h.descr,
                body.len(),
                if body.len() < expected { " (truncated?)" } else { "" }
            ),
        ));
    }
    let data = dtype.decode(body).map_err(|m| Error::format(what, m))?;
    Ok(NpyArray { shape: h.shape, data })
}

#[derive(Clone, Copy, Debug)]
enum Dtype {
    Bool,
    I1,
    U1,
    I2,
    U2,
    I4,
    U4,
    I8,
    U8,
    F2,
    F4,
    F8,
}

impl Dtype {
    fn from_descr(descr: &str) -> std::result::Result<Dtype, String> {
        // Split by char, not byte: a malformed header could start the descr with a multi-byte character.
        let order = descr.chars().next().unwrap_or(' ');
        let code = &descr[order.len_utf8().min(descr.len())..];
        let single = matches!(code, "b1" | "i1" | "u1");
        if order == '>' && !single {
            return Err(format!(
                "big-endian dtype '{descr}' is not supported; convert with arr.astype(arr.dtype.newbyteorder('<'))"
            ));
        }
        // '|' (not applicable) is what numpy writes for 1-byte types; '=' is native, little-endian on every
        // machine this engine targets.
        let order_ok = match order {
            '<' | '=' => true,
            '|' | '>' => single,
            _ => false,
        };
        let dt = match code {
            "b1" => Dtype::Bool,
            "i1" => Dtype::I1,
            "u1" => Dtype::U1,
            "i2" => Dtype::I2,
            "u2" => Dtype::U2,
            "i4" => Dtype::I4,
            "u4" => Dtype::U4,
            "i8" => Dtype::I8,
            "u8" => Dtype::U8,
            "f2" => Dtype::F2,
            "f4" => Dtype::F4,
            "f8" => Dtype::F8,
            _ => {
                return Err(format!(
                    "unsupported dtype '{descr}' (supported: bool, int8-64, uint8-64, float16-64)"
                ))
            }
        };
        if !order_ok {
            return Err(format!("unsupported dtype '{descr}' (bad byte-order character)"));
        }
        Ok(dt)
    }

    fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::I1 | Dtype::U1 => 1,
            Dtype::I2 | Dtype::U2 | Dtype::F2 => 2,
            Dtype::I4 | Dtype::U4 | Dtype::F4 => 4,
            Dtype::I8 | Dtype::U8 | Dtype::F8 => 8,
        }
    }

    fn decode(self, b: &[u8]) -> std::result::Result<NpyData, String> {
        fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
            // `chunks_exact` of length N always converts; the body length was checked against the shape.
            b.chunks_exact(N).map(|c| <[u8; N]>::try_from(c).unwrap_or([0; N]))
        }
        Ok(match self {
            Dtype::Bool => NpyData::Bool(b.iter().map(|&x| x != 0).collect()),
            Dtype::U1 => NpyData::U8(b.to_vec()),
            Dtype::I1 => NpyData::I32(b.iter().map(|&x| x as i8 as i32).collect()),
            Dtype::I2 => NpyData::I32(chunks::<2>(b).map(|c| i16::from_le_bytes(c) as i32).collect()),
            Dtype::U2 => NpyData::I32(chunks::<2>(b).map(|c| u16::from_le_bytes(c) as i32).collect()),
            Dtype::I4 => NpyData::I32(chunks::<4>(b).map(i32::from_le_bytes).collect()),
            Dtype::U4 => NpyData::I64(chunks::<4>(b).map(|c| u32::from_le_bytes(c) as i64).collect()),
            Dtype::I8 => NpyData::I64(chunks::<8>(b).map(i64::from_le_bytes).collect()),
            Dtype::U8 => NpyData::I64(
                chunks::<8>(b)
                    .map(|c| {
                        let v = u64::from_le_bytes(c);
                        i64::try_from(v).map_err(|_| format!("uint64 value {v} does not fit in int64"))
                    })
                    .collect::<std::result::Result<_, _>>()?,
            ),
            Dtype::F2 => NpyData::F32(chunks::<2>(b).map(|c| half::f16::from_le_bytes(c).to_f32()).collect()),
            Dtype::F4 => NpyData::F32(chunks::<4>(b).map(f32::from_le_bytes).collect()),
            Dtype::F8 => NpyData::F64(chunks::<8>(b).map(f64::from_le_bytes).collect()),
        })
    }
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// The subset of Python literal syntax that numpy's `repr` of the header dict uses.
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    /// Structured dtypes (`[('x', '<f4'), ...]`) and anything else we do not model.
    Other,
}

fn parse_header(s: &str) -> std::result::Result<Header, String> {
    let mut p = Parser { s: s.as_bytes(), i: 0 };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = match p.value()? {
            Value::Str(k) => k,
            _ => return Err(format!("expected a string key at byte {}", p.i)),
        };
        p.expect(b':')?;
        let v = p.value()?;
        match (key.as_str(), v) {
            ("descr", Value::Str(d)) => descr = Some(d),
            ("descr", _) => return Err("structured or non-string dtypes are not supported".into()),
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            ("fortran_order" | "shape", _) => return Err(format!("bad value for '{key}'")),
            _ => {} // numpy ignores nothing else today, but tolerating extra keys costs nothing
        }
        p.ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after the dict at byte {}", p.i));
    }
    Ok(Header {
        descr: descr.ok_or("missing 'descr'")?,
        fortran_order: fortran.ok_or("missing 'fortran_order'")?,
        shape: shape.ok_or("missing 'shape'")?,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> std::result::Result<Value, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => {
                let start = self.i + 1;
                let len = self.s[start..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or("unterminated string")?;
                self.i = start + len + 1;
                Ok(Value::Str(
                    String::from_utf8_lossy(&self.s[start..start + len]).into_owned(),
                ))
            }
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    if self.eat(b')') {
                        return Ok(Value::Tuple(dims));
                    }
                    self.ws();
                    let start = self.i;
                    while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                    let d = digits
                        .parse::<usize>()
                        .map_err(|_| format!("bad dimension at byte {start}"))?;
                    // Python 2 era files wrote longs as `3L`.
                    self.eat(b'L');
                    dims.push(d);
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        return Ok(Value::Tuple(dims));
                    }
                }
            }
            Some(b'[') => {
                // Skip a (possibly nested) list so the error can say "structured dtype".
                let mut depth = 0usize;
                while let Some(&c) = self.s.get(self.i) {
                    self.i += 1;
                    match c {
                        b'[' => depth += 1,
                        b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(Value::Other);
                            }
                        }
                        _ => {}
                    }
                }
                Err("unterminated list".into())
            }
            _ => {
                let rest = &self.s[self.i..];
                for (word, v) in [("True", Some(true)), ("False", Some(false)), ("None", None)] {
                    if rest.starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(v.map_or(Value::Other, Value::Bool));
                    }
                }
                Err(format!("unexpected character at byte {}", self.i))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_variants() {
        let h = parse_header("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }   \n").unwrap();
        assert_eq!((h.descr.as_str(), h.fortran_order, h.shape), ("<i8", false, vec![2, 3]));
        let h = parse_header("{\"descr\":\"|u1\",\"shape\":(7L,),\"fortran_order\":True}").unwrap();
        assert_eq!((h.descr.as_str(), h.fortran_order, h.shape), ("|u1", true, vec![7]));
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': ()}")
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
        assert!(parse_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': ()}").is_err());
        assert!(parse_header("{'descr': '<f4', 'shape': ()}").is_err());
        assert!(parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1)}").is_err());
        assert!(parse_header("{'descr': '<f4'").is_err());
    }

    #[test]
    fn dtype_byte_orders() {
        assert!(Dtype::from_descr("|u1").is_ok());
        assert!(Dtype::from_descr(">u1").is_ok());
        assert!(Dtype::from_descr("=i4").is_ok());
        assert!(Dtype::from_descr(">i4").unwrap_err().contains("big-endian"));
        assert!(Dtype::from_descr("|i4").is_err());
        assert!(Dtype::from_descr("<c8").unwrap_err().contains("unsupported dtype"));
        assert!(Dtype::from_descr("").is_err());
    }
}
