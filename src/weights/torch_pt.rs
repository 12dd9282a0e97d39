//! Reader for PyTorch `torch.save` zip archives that never executes pickle code.
//!
//! The archive holds `<dir>/data.pkl` (the object graph) and `<dir>/data/<key>` (raw little-endian
//! storages). `data.pkl` is interpreted by a small pickle VM whose only callables are an allow-list of
//! torch rebuild functions and storage types, modelled here as data; any other global is refused
//! before anything is built, so a hostile checkpoint cannot run code.
use super::{numel, FileDtype, StateDict, Tensor};
use crate::{Error, Result};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;

/// The callables and classes a state-dict pickle may name.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    /// Wraps a rebuild call with a tensor subclass and `__dict__` state; both are dropped.
    RebuildFromTypeV2,
    RebuildParameter,
    Storage(FileDtype),
    TensorClass,
}

fn resolve_global(module: &str, name: &str) -> std::result::Result<Global, String> {
    use FileDtype::*;
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._tensor" | "torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorClass,
        ("torch", s) => Global::Storage(match s {
            "FloatStorage" => F32,
            "HalfStorage" => F16,
            "BFloat16Storage" => BF16,
            "DoubleStorage" => F64,
            "LongStorage" => I64,
            "IntStorage" => I32,
            "ShortStorage" => I16,
            "CharStorage" => I8,
            "ByteStorage" => U8,
            "BoolStorage" => Bool,
            _ => return Err(format!("disallowed pickle global `{module}.{name}`")),
        }),
        _ => return Err(format!("disallowed pickle global `{module}.{name}`")),
    })
}

#[derive(Debug)]
struct StorageRef {
    key: String,
    dtype: FileDtype,
    numel: usize,
}

#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Pickle values. Containers are shared (`Rc`) because the memo holds references, not copies:
/// a dict memoised before its SETITEMS must show the items when fetched later.
// Some payloads (floats, bytes, lists) are parsed only to keep the stack faithful, never read.
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Rc<Vec<u8>>),
    Tuple(Rc<Vec<Obj>>),
    List(Rc<RefCell<Vec<Obj>>>),
    Dict(Rc<RefCell<Vec<(Obj, Obj)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

type Res<T> = std::result::Result<T, String>;

fn to_usize(o: &Obj, what: &str) -> Res<usize> {
    match o {
        Obj::Int(i) => usize::try_from(*i).map_err(|_| format!("negative {what} {i}")),
        _ => Err(format!("{what} is not an integer")),
    }
}

fn to_usizes(o: &Obj, what: &str) -> Res<Vec<usize>> {
    match o {
        Obj::Tuple(t) => t.iter().map(|x| to_usize(x, what)).collect(),
        _ => Err(format!("{what} is not a tuple")),
    }
}

fn call(g: Global, args: &[Obj]) -> Res<Obj> {
    match g {
        Global::OrderedDict if args.is_empty() => Ok(Obj::Dict(Default::default())),
        Global::RebuildTensorV2 => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            let [Obj::Storage(s), off, size, stride, ..] = args else {
                return Err("_rebuild_tensor_v2: unexpected arguments".into());
            };
            let t = TensorRef {
                storage: s.clone(),
                offset: to_usize(off, "storage_offset")?,
                size: to_usizes(size, "size")?,
                stride: to_usizes(stride, "stride")?,
            };
            if t.size.len() != t.stride.len() {
                return Err("_rebuild_tensor_v2: size and stride differ in length".into());
            }
            Ok(Obj::Tensor(Rc::new(t)))
        }
        Global::RebuildFromTypeV2 => match args {
            [Obj::Global(f), _ty, Obj::Tuple(inner), ..] => call(*f, inner),
            _ => Err("_rebuild_from_type_v2: unexpected arguments".into()),
        },
        Global::RebuildParameter => match args {
            [t @ Obj::Tensor(_), ..] => Ok(t.clone()),
            _ => Err("_rebuild_parameter: unexpected arguments".into()),
        },
        other => Err(format!("cannot call {other:?} with {} arguments", args.len())),
    }
}

struct Vm<'a> {
    b: &'a [u8],
    pos: usize,
    stack: Vec<Obj>,
    marks: Vec<usize>,
    memo: HashMap<u32, Obj>,
}

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or("pickle truncated")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.arr::<1>()?[0])
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn line(&mut self) -> Res<&'a str> {
        let rest = &self.b[self.pos..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or("pickle truncated")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "non-UTF-8 global name")?;
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Res<Obj> {
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| "invalid UTF-8 string")?;
        Ok(Obj::Str(s.to_owned()))
    }
    fn pop(&mut self) -> Res<Obj> {
        self.stack.pop().ok_or_else(|| "pickle stack underflow".into())
    }
    fn pop_mark(&mut self) -> Res<Vec<Obj>> {
        let m = self.marks.pop().ok_or("pickle MARK missing")?;
        if m > self.stack.len() {
            return Err("pickle MARK beyond stack".into());
        }
        Ok(self.stack.split_off(m))
    }
    fn top(&mut self) -> Res<&mut Obj> {
        self.stack.last_mut().ok_or_else(|| "pickle stack underflow".into())
    }
    fn memo_get(&self, i: u32) -> Res<Obj> {
        self.memo.get(&i).cloned().ok_or_else(|| format!("memo key {i} unset"))
    }
    fn push_global(&mut self, module: &str, name: &str) -> Res<()> {
        let g = resolve_global(module, name)?;
        self.stack.push(Obj::Global(g));
        Ok(())
    }
    fn set_items(&mut self, items: Vec<Obj>) -> Res<()> {
        let Obj::Dict(d) = self.top()? else {
            return Err("SETITEM on a non-dict".into());
        };
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }
    fn append(&mut self, items: Vec<Obj>) -> Res<()> {
        let Obj::List(l) = self.top()? else {
            return Err("APPEND on a non-list".into());
        };
        l.borrow_mut().extend(items);
        Ok(())
    }

    fn run(mut self) -> Res<Obj> {
        loop {
            let op = self.u8()?;
            match op {
                // PROTO; FRAME (framing is irrelevant once the whole pickle is in memory)
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.arr::<8>()?;
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?.clone(); // DUP
                    self.stack.push(t)
                }
                b'N' => self.stack.push(Obj::None),
                0x88 => self.stack.push(Obj::Bool(true)),
                0x89 => self.stack.push(Obj::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.stack.push(Obj::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Obj::Int(v as i64))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.stack.push(Obj::Int(v as i64))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes is too large"));
                    }
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    };
                    let mut a = [fill; 8];
                    a[..n].copy_from_slice(b);
                    self.stack.push(Obj::Int(i64::from_le_bytes(a)))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.stack.push(Obj::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s)
                }
                0x8c => {
                    let n = self.u8()? as usize; // SHORT_BINUNICODE
                    let s = self.string(n)?;
                    self.stack.push(s)
                }
                b'C' | b'B' => {
                    // SHORT_BINBYTES / BINBYTES
                    let n = if op == b'C' {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Obj::Bytes(Rc::new(b)))
                }
                b')' => self.stack.push(Obj::Tuple(Rc::new(vec![]))),
                b']' => self.stack.push(Obj::List(Default::default())),
                b'}' => self.stack.push(Obj::Dict(Default::default())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Obj::Tuple(Rc::new(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize; // TUPLE1..TUPLE3
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Obj::Tuple(Rc::new(items)))
                }
                b'q' => {
                    let i = self.u8()? as u32; // BINPUT
                    let t = self.top()?.clone();
                    self.memo.insert(i, t);
                }
                b'r' => {
                    let i = self.u32()?; // LONG_BINPUT
                    let t = self.top()?.clone();
                    self.memo.insert(i, t);
                }
                0x94 => {
                    let i = self.memo.len() as u32; // MEMOIZE
                    let t = self.top()?.clone();
                    self.memo.insert(i, t);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'c' => {
                    let (m, n) = (self.line()?, self.line()?);
                    self.push_global(m, n)?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let (Obj::Str(n), Obj::Str(m)) = (self.pop()?, self.pop()?) else {
                        return Err("STACK_GLOBAL needs two strings".into());
                    };
                    self.push_global(&m, &n)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_load(&pid)?;
                    self.stack.push(v)
                }
                b'R' => {
                    let (args, f) = (self.pop()?, self.pop()?);
                    let (Obj::Global(g), Obj::Tuple(args)) = (f, args) else {
                        return Err("REDUCE needs an allowed callable and a tuple".into());
                    };
                    self.stack.push(call(g, &args)?)
                }
                // BUILD: the only states torch writes here are an OrderedDict's `_metadata` and
                // tensor flags, neither of which matters for weights.
                b'b' => {
                    self.pop()?;
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                _ => return Err(format!("unsupported pickle opcode 0x{op:02x}")),
            }
        }
    }
}

fn persistent_load(pid: &Obj) -> Res<Obj> {
    // ('storage', <StorageType>, key, location, numel)
    let Obj::Tuple(t) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match t.as_slice() {
        [Obj::Str(tag), Obj::Global(Global::Storage(dtype)), key, _loc, n] if tag == "storage" => {
            let key = match key {
                Obj::Str(s) => s.clone(),
                Obj::Int(i) => i.to_string(),
                _ => return Err("storage key is not a string".into()),
            };
            Ok(Obj::Storage(Rc::new(StorageRef {
                key,
                dtype: *dtype,
                numel: to_usize(n, "numel")?,
            })))
        }
        _ => Err("unsupported persistent id (expected a torch storage)".into()),
    }
}

fn lookup(d: &[(Obj, Obj)], key: &str) -> Option<Obj> {
    d.iter()
        .rev()
        .find(|(k, _)| matches!(k, Obj::Str(s) if s == key))
        .map(|(_, v)| v.clone())
}

/// Loads every floating-point tensor of a `torch.save` archive.
pub fn load_pt(path: &Path) -> Result<StateDict> {
    load_pt_prefixed(path, "")
}

/// The state dict is the top-level dict (FSDP "raw" files) or the dict under `model`, `module`
/// or `state_dict` (DDP training checkpoints, in that order of preference).
pub fn load_pt_prefixed(path: &Path, prefix: &str) -> Result<StateDict> {
    load_pt_where(path, prefix, &|_| true)
}

/// Like [`load_pt_prefixed`], reading only the tensors whose (stripped) name `keep` accepts.
pub fn load_pt_where(path: &Path, prefix: &str, keep: &dyn Fn(&str) -> bool) -> Result<StateDict> {
    let bad = |msg: String| Error::format(path, msg);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map; the file must not be truncated while we read it.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(Cursor::new(&map[..]))
        .map_err(|e| bad(format!("not a readable torch.save zip archive: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.matches('/').count())
        .map(str::to_owned)
        .ok_or_else(|| bad("no data.pkl in the archive (not a torch.save file?)".into()))?;
    let dir = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_owned();
    if let Ok(order) = read_entry(&mut zip, &map, &format!("{dir}byteorder"), true) {
        if order.as_ref() != b"little" {
            return Err(bad("big-endian torch archives are not supported".into()));
        }
    }
    let pkl = read_entry(&mut zip, &map, &pkl_name, true).map_err(bad)?;
    let vm = Vm {
        b: &pkl,
        pos: 0,
        stack: vec![],
        marks: vec![],
        memo: HashMap::new(),
    };
    let top = vm.run().map_err(|m| bad(format!("{pkl_name}: {m}")))?;
    let Obj::Dict(top) = top else {
        return Err(bad("top-level object is not a dict".into()));
    };
    let top_items = top.borrow();
    let sd_items = ["model", "module", "state_dict"]
        .iter()
        .find_map(|k| match lookup(&top_items, k) {
            Some(Obj::Dict(d)) => Some(d),
            _ => None,
        })
        .unwrap_or_else(|| top.clone());
    let sd_items = sd_items.borrow();

    // Later duplicates win, as in Python, before grouping can reorder them.
    let mut wanted: BTreeMap<&str, &Rc<TensorRef>> = BTreeMap::new();
    for (k, v) in sd_items.iter() {
        let (Obj::Str(name), Obj::Tensor(t)) = (k, v) else {
            continue;
        };
        let Some(short) = name.strip_prefix(prefix) else {
            continue;
        };
        if !t.storage.dtype.is_float() || !keep(short) {
            continue;
        }
        wanted.insert(short, t);
    }
    // Group tensors by storage so each storage is read once and released before the next.
    let mut by_storage: BTreeMap<&str, Vec<(&str, &Rc<TensorRef>)>> = BTreeMap::new();
    for (name, t) in wanted {
        by_storage.entry(&t.storage.key).or_default().push((name, t));
    }
    let mut sd = StateDict::new(path);
    for (key, tensors) in by_storage {
        let entry = format!("{dir}data/{key}");
        let bytes = read_entry(&mut zip, &map, &entry, false).map_err(bad)?;
        for (name, t) in tensors {
            let data = gather(t, &bytes).map_err(|m| bad(format!("tensor `{name}` (storage {entry}): {m}")))?;
            sd.insert(
                name,
                Tensor {
                    shape: t.size.clone(),
                    data,
                },
            );
        }
    }
    Ok(sd)
}

/// The bytes of a zip entry. Unless `checked`, an uncompressed entry (as torch writes storages) is
/// borrowed straight from the map, skipping the copy and the CRC pass over multi-gigabyte data;
/// the small pickle is always CRC-checked so corruption there is caught rather than misparsed.
fn read_entry<'m>(
    zip: &mut zip::ZipArchive<Cursor<&'m [u8]>>,
    map: &'m [u8],
    name: &str,
    checked: bool,
) -> Res<Cow<'m, [u8]>> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| format!("missing or unreadable `{name}`: {e}"))?;
    let size = f.size();
    if !checked && f.compression() == zip::CompressionMethod::Stored {
        let start = f.data_start();
        let slice = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(s, n)| map.get(s..s.checked_add(n)?));
        return slice.map(Cow::Borrowed).ok_or_else(|| format!("`{name}` is truncated"));
    }
    let mut buf = Vec::with_capacity(size.min(1 << 30) as usize);
    f.read_to_end(&mut buf)
        .map_err(|e| format!("cannot read `{name}`: {e}"))?;
    Ok(Cow::Owned(buf))
}

/// Materialises a (possibly strided) view of a storage as a row-major f32 vector.
fn gather(t: &TensorRef, bytes: &[u8]) -> Res<Vec<f32>> {
    let s = &t.storage;
    let es = s.dtype.size();
    let have = bytes.len() / es;
    if have < s.numel {
        return Err(format!("storage holds {have} elements, pickle says {}", s.numel));
    }
    let n = numel(&t.size).ok_or("size overflows")?;
    if n == 0 {
        return Ok(vec![]);
    }
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &st)| acc.checked_add((d - 1).checked_mul(st)?));
    match last {
        Some(l) if l < s.numel => {}
        _ => return Err(format!("view exceeds its storage of {} elements", s.numel)),
    }
    let mut expect = 1;
    let mut contiguous = true;
    for (&d, &st) in t.size.iter().zip(&t.stride).rev() {
        contiguous &= d == 1 || st == expect;
        expect *= d;
    }
    if contiguous {
        let b = &bytes[t.offset * es..(t.offset + n) * es];
        return super::floats_to_f32(s.dtype, b).ok_or_else(|| "not a float storage".into());
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; t.size.len()];
    for _ in 0..n {
        let e = t.offset + idx.iter().zip(&t.stride).map(|(i, st)| i * st).sum::<usize>();
        out.push(super::float_at(s.dtype, bytes, e).ok_or("not a float storage")?);
        for (i, &d) in idx.iter_mut().zip(&t.size).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    Ok(out)
}
