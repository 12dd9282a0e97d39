//! The CUDA backend: the runtime's [`Backend`] over a [`Device`] — the GPU, or the CPU emulator running the very same
//! kernels (`--device cuda-emu`). This file owns device memory and the run hooks (CUDA-graph capture and replay);
//! each op's `Exec` impl sits with its launcher (`<op>.rs`), and `exec.rs` holds what they share.
//!
//! Memory, all allocated once: the weight table (uploaded at load, bf16 or f32 as the model asks, conv weights of an
//! upsampling conv folded into their four phase kernels on the host), the static KV cache
//! `[layer][k|v][batch][head][seq][head_dim]` in the activation dtype, one arena holding every graph tensor at the
//! planner's offset, the [`StepState`] word block the kernels read the position and RNG counters from, an error word
//! block (ids outside a table), and op workspaces that grow to the largest shape seen (so a decode step allocates
//! nothing after the first).
//!
//! Activations are stored in the backend's dtype: with `--dtype bf16` every float tensor of a graph lives in the arena
//! as bf16 (in the first half of its 4-byte slot), exactly where the reference stores bf16; host reads and writes
//! convert. I32 tensors (ids, tokens) are int32.
//!
//! On a device that supports it, the second and later runs of a decode graph replay a CUDA graph captured on its
//! second run (the first run sizes the workspaces); only the step state is written before each replay.
use super::device::{Device, DeviceBuffer};
use super::kernels::StepState;
use super::launch::{DevPtr, DevPtrMut, Dtype};
use crate::ops::{Backend, KvSpec, RunInfo, StepParams, TensorRef, Weight};
use crate::{Error, Result};
use half::bf16;
use std::collections::HashMap;

/// Error words: one per op kind that can see a bad id (set by the kernels, checked when results are read).
pub(super) const ERR_WORDS: usize = 4;

pub(super) struct DevWeight<B> {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub buf: B,
}

pub struct CudaBackend<D: Device> {
    pub(super) dev: D,
    pub(super) act: Dtype,
    pub(super) weights: Vec<DevWeight<D::Buf>>,
    pub(super) kv: Option<(D::Buf, KvSpec)>,
    arena: Option<D::Buf>,
    pub(super) step: D::Buf,
    pub(super) err: D::Buf,
    /// Which table each error word last guarded: (name, rows), for the message.
    pub(super) err_tables: [Option<(String, usize)>; ERR_WORDS],
    /// Named op workspaces (attention partials, sampling scratch, VQ attention), grown on demand.
    workspaces: HashMap<&'static str, D::Buf>,
    /// Per replayable graph (by its `RunInfo::key`): completed runs, and the captured device graph once there is one.
    replays: HashMap<u64, (u32, Option<usize>)>,
    /// A capture is in progress (begun in `begin_run`, ended in `end_run`).
    capturing: bool,
    /// The conv kernel variant for every conv node (`None`: the launcher's f32 choice per shape).
    pub(super) conv_tile: Option<super::conv::Tile>,
}

impl<D: Device> CudaBackend<D> {
    /// A backend whose float activations (and KV cache) are `act` (bf16 for `--dtype bf16` GPTs, f32 otherwise).
    pub fn new(dev: D, act: Dtype) -> Result<Self> {
        let step = dev.alloc(size_of::<StepState>(), "step state")?;
        let err = dev.alloc(4 * ERR_WORDS, "error words")?;
        dev.zero(err.addr(), 4 * ERR_WORDS)?;
        Ok(CudaBackend {
            dev,
            act,
            weights: Vec::new(),
            kv: None,
            arena: None,
            step,
            err,
            err_tables: Default::default(),
            workspaces: HashMap::new(),
            replays: HashMap::new(),
            capturing: false,
            conv_tile: None,
        })
    }

    /// Runs every conv node with this kernel variant (`--vq-dtype`: the TF32 tensor-core tiles).
    pub fn with_conv_tile(mut self, tile: Option<super::conv::Tile>) -> Self {
        self.conv_tile = tile;
        self
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    fn act_bytes(&self) -> usize {
        match self.act {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    /// Device address and element count of a graph tensor.
    pub(super) fn slot(&self, t: TensorRef) -> Result<(u64, usize)> {
        let arena = self
            .arena
            .as_ref()
            .ok_or_else(|| Error::Invalid("cuda backend: no arena reserved".into()))?;
        if t.offset + 4 * t.numel > arena.bytes() {
            return Err(Error::Invalid("cuda backend: tensor outside the arena".into()));
        }
        Ok((arena.addr() + t.offset as u64, t.numel))
    }

    /// A typed read-only pointer to a tensor.
    ///
    /// # Safety
    /// `T` must be the tensor's storage type (the activation type for F32 tensors, i32 for I32 ones), and no pointer
    /// handed out for the same node may write it (the planner keeps a node's output disjoint from its live inputs).
    pub(super) unsafe fn t<T>(&self, t: TensorRef) -> Result<DevPtr<'_, T>> {
        let (a, n) = self.slot(t)?;
        Ok(DevPtr::from_raw(a, n))
    }

    /// A typed writable pointer to a tensor. # Safety: as [`Self::t`].
    pub(super) unsafe fn t_mut<T>(&self, t: TensorRef) -> Result<DevPtrMut<'_, T>> {
        let (a, n) = self.slot(t)?;
        Ok(DevPtrMut::from_raw(a, n))
    }

    /// A workspace of at least `bytes` bytes (grown, never shrunk); its address and size in elements of `T`.
    pub(super) fn workspace<T>(&mut self, name: &'static str, elems: usize) -> Result<(u64, usize)> {
        let bytes = (elems * size_of::<T>()).max(1);
        let grow = self.workspaces.get(name).is_none_or(|b| b.bytes() < bytes);
        if grow {
            // Waiting first: a queued kernel may still use the old buffer.
            self.dev.synchronize()?;
            let b = self.dev.alloc(bytes, name)?;
            self.workspaces.insert(name, b);
            // Captured graphs hold the old buffer's address.
            self.replays.clear();
        }
        let b = &self.workspaces[name];
        Ok((b.addr(), b.bytes() / size_of::<T>().max(1)))
    }

    fn check_errors(&self) -> Result<()> {
        let mut words = [0u8; 4 * ERR_WORDS];
        self.dev.read(&self.err, 0, &mut words)?;
        let w: [i32; ERR_WORDS] = bytemuck::cast(words);
        for (slot, &id) in w.iter().enumerate() {
            if id != 0 {
                // Cleared, so that the next run starts clean (the words are sticky on the device).
                self.dev.zero(self.err.addr(), 4 * ERR_WORDS)?;
                let (table, rows) = self.err_tables[slot].clone().unwrap_or_default();
                return Err(Error::Invalid(super::exec::bad_id_message(slot, id, &table, rows)));
            }
        }
        Ok(())
    }

    fn write_step(&self, step: &StepParams) -> Result<()> {
        let pos = i32::try_from(step.pos).map_err(|_| Error::Invalid(format!("position {} too large", step.pos)))?;
        let s = StepState {
            pos,
            step: step.step,
            cfg_active: u32::from(step.cfg_active),
            seed_lo: step.seed as u32,
            seed_hi: (step.seed >> 32) as u32,
        };
        // SAFETY: a #[repr(C)] struct of five 4-byte scalars, no padding.
        let b = unsafe { std::slice::from_raw_parts(&s as *const StepState as *const u8, size_of::<StepState>()) };
        self.dev.write(&self.step, 0, b)
    }
}

impl<D: Device> Backend for CudaBackend<D> {
    fn name(&self) -> &'static str {
        self.dev.kind()
    }

    fn load_weights(&mut self, weights: Vec<Weight>) -> Result<()> {
        self.weights.clear();
        for w in weights {
            let data = super::exec::prepare_weight(&w)?;
            let (dtype, buf) = match w.storage {
                Dtype::F32 => {
                    let b = self.dev.alloc(4 * data.len(), &w.name)?;
                    self.dev.write(&b, 0, bytes_of(&data))?;
                    (Dtype::F32, b)
                }
                Dtype::Bf16 => {
                    let h: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                    let b = self.dev.alloc(2 * h.len(), &w.name)?;
                    self.dev.write(&b, 0, bytes_of(&h))?;
                    (Dtype::Bf16, b)
                }
            };
            self.weights.push(DevWeight {
                name: w.name,
                shape: w.shape,
                dtype,
                buf,
            });
        }
        self.dev.synchronize()
    }

    fn alloc_kv(&mut self, spec: KvSpec) -> Result<()> {
        let want = match spec.storage {
            Dtype::F32 => Dtype::F32,
            Dtype::Bf16 => Dtype::Bf16,
        };
        if want != self.act {
            return Err(Error::Invalid(format!(
                "cuda backend: a {want:?} KV cache with {:?} activations",
                self.act
            )));
        }
        let bytes = spec.elems() * self.act_bytes();
        let b = self.dev.alloc(bytes, "KV cache")?;
        self.dev.zero(b.addr(), bytes)?;
        self.kv = Some((b, spec));
        Ok(())
    }

    fn reserve_arena(&mut self, bytes: usize) -> Result<()> {
        if self.arena.as_ref().is_none_or(|a| a.bytes() < bytes) {
            self.dev.synchronize()?;
            self.arena = Some(self.dev.alloc(bytes.max(64), "arena")?);
            // Captured graphs hold arena addresses.
            self.replays.clear();
        }
        Ok(())
    }

    fn write_f32(&mut self, t: TensorRef, data: &[f32]) -> Result<()> {
        let (addr, _) = self.slot(t)?;
        let arena = self.arena.as_ref().expect("slot checked the arena");
        let off = (addr - arena.addr()) as usize;
        match self.act {
            Dtype::F32 => self.dev.write(arena, off, bytes_of(data)),
            Dtype::Bf16 => {
                let h: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                self.dev.write(arena, off, bytes_of(&h))
            }
        }
    }

    fn write_i32(&mut self, t: TensorRef, data: &[i32]) -> Result<()> {
        let (addr, _) = self.slot(t)?;
        let arena = self.arena.as_ref().expect("slot checked the arena");
        self.dev.write(arena, (addr - arena.addr()) as usize, bytes_of(data))
    }

    fn read_f32(&self, t: TensorRef) -> Result<Vec<f32>> {
        let (addr, n) = self.slot(t)?;
        let arena = self.arena.as_ref().expect("slot checked the arena");
        let off = (addr - arena.addr()) as usize;
        let mut raw = vec![0u8; n * self.act_bytes()];
        self.dev.read(arena, off, &mut raw)?;
        self.check_errors()?;
        Ok(match self.act {
            Dtype::F32 => bytemuck::pod_collect_to_vec(&raw),
            Dtype::Bf16 => raw
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    fn read_i32(&self, t: TensorRef) -> Result<Vec<i32>> {
        let (addr, n) = self.slot(t)?;
        let arena = self.arena.as_ref().expect("slot checked the arena");
        let mut raw = vec![0u8; 4 * n];
        self.dev.read(arena, (addr - arena.addr()) as usize, &mut raw)?;
        self.check_errors()?;
        Ok(bytemuck::pod_collect_to_vec(&raw))
    }

    fn copy(&mut self, src: TensorRef, dst: TensorRef) -> Result<()> {
        let (sa, n) = self.slot(src)?;
        let (da, _) = self.slot(dst)?;
        let bytes = n * if src.scalar == crate::ops::Scalar::I32 {
            4
        } else {
            self.act_bytes()
        };
        self.dev.copy(da, sa, bytes)
    }

    /// Replayable runs (decode steps) on a device that supports it: the first run executes eagerly (it grows the
    /// workspaces, and allocation is not allowed while capturing), the second is captured and replayed, later ones
    /// replay. Only the step state is written before each replay.
    fn begin_run(&mut self, run: RunInfo, step: &StepParams) -> Result<bool> {
        self.write_step(step)?;
        if !run.replayable || !self.dev.supports_graphs() {
            return Ok(false);
        }
        match self.replays.get(&run.key).copied().unwrap_or((0, None)) {
            (_, Some(id)) => {
                self.dev.replay(id)?;
                self.replays.entry(run.key).or_insert((0, None)).0 += 1;
                Ok(true)
            }
            (0, None) => Ok(false),
            (_, None) => {
                self.dev.synchronize()?;
                self.dev.begin_capture()?;
                self.capturing = true;
                Ok(false)
            }
        }
    }

    fn end_run(&mut self, run: RunInfo, ok: bool) -> Result<()> {
        if self.capturing {
            self.capturing = false;
            let id = self.dev.end_capture();
            if !ok {
                return Ok(());
            }
            let id = id?;
            let e = self.replays.entry(run.key).or_insert((0, None));
            e.1 = Some(id);
            self.dev.replay(id)?;
        }
        if ok && run.replayable {
            self.replays.entry(run.key).or_insert((0, None)).0 += 1;
        }
        Ok(())
    }

    fn synchronize(&mut self) -> Result<()> {
        self.dev.synchronize()
    }
}

fn bytes_of<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}
