//! The kernel lab (`llamagen lab`): how close each CUDA kernel is to its roofline, measured without a GPU.
//!
//! For every case (a hot kernel at a LlamaGen shape) it combines
//! - what the CUDA emulator counts while running it (`backend::cuda::emu::count`): tensor-core MMAs, ldmatrix and
//!   shared-memory bank conflicts (wavefronts per phase), global 32-byte sectors per request against the fewest that
//!   hold the bytes asked for (coalescing), over the accesses made through common.cuh's helpers (`gld`/`gst`,
//!   `load4`/`load16`, `store4`/`store16`, `__ldg`, cp.async): every kernel's bulk traffic;
//! - what the cubins say (build.rs): registers, shared memory and spills from ptxas, the SASS instruction mix from
//!   cuobjdump, and from those the theoretical occupancy on sm_80 and sm_90;
//! - a roofline estimate of its time on an H100 SXM and an A100 (spec peaks: a lower bound, labelled as such);
//! - and, run with `--device cuda` on a GPU, the measured time and its ratio to the estimate.
use crate::backend::cuda::device::Device;
use crate::backend::cuda::kernels::{StepState, NVCC};
use crate::backend::cuda::launch::{DevPtr, DevPtrMut};
use crate::backend::cuda::{attention, conv, gemm};
use crate::ops::{Dtype, KvSpec};
use crate::Result;
use half::bf16;

/// Which unit does a case's FLOPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Math {
    /// mma.sync bf16 (f32 accumulation).
    Bf16Tensor,
    /// mma.sync TF32; `passes` mmas per useful product (3 for 3xTF32).
    Tf32Tensor { passes: u32 },
    /// FMA on the CUDA cores, f32.
    F32Simt,
}

/// A GPU's spec peaks (dense, no sparsity).
#[derive(Clone, Copy, Debug)]
pub struct Gpu {
    pub name: &'static str,
    pub bf16_flops: f64,
    pub tf32_flops: f64,
    pub f32_flops: f64,
    pub bytes_per_s: f64,
}

pub const H100: Gpu = Gpu {
    name: "H100 SXM",
    bf16_flops: 989e12,
    tf32_flops: 494e12,
    f32_flops: 67e12,
    bytes_per_s: 3.35e12,
};
pub const A100: Gpu = Gpu {
    name: "A100 SXM 80GB",
    bf16_flops: 312e12,
    tf32_flops: 156e12,
    f32_flops: 19.5e12,
    bytes_per_s: 2.04e12,
};

/// What a case runs, at which shape.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// y = x·wᵀ + r in bf16 through `gemm::gemm_with`, or `gemm::gemm_split_k` when `splits` > 1 (tiled path);
    /// `swiglu`: y = silu(x·W1ᵀ)·(x·W3ᵀ) `[m, n / 2]` through `gemm::gemm_swiglu` (n = 2f, no residual).
    Gemm {
        path: gemm::GemmPath,
        m: usize,
        n: usize,
        k: usize,
        splits: u32,
        swiglu: bool,
    },
    /// bf16 causal attention of `len` queries at position 0 over a cache of `len` keys (prefill / recompute).
    Prefill {
        batch: usize,
        len: usize,
        heads: usize,
        d: usize,
    },
    /// bf16 decode attention: one query per row at position `pos`.
    Decode {
        rows: usize,
        heads: usize,
        d: usize,
        pos: usize,
    },
    /// f32 3×3 pad-1 conv of c → c channels at hw × hw, with a residual; `norm`: of swish(GroupNorm(x)), the
    /// normalisation in the halo loader's prologue (`groupnorm_conv`; its records given).
    Conv {
        tile: conv::Tile,
        c: usize,
        hw: usize,
        norm: bool,
    },
    /// Nearest ×2 upsample + 3×3 conv, c → c channels, hw × hw → 2hw × 2hw.
    Upsample { tile: conv::Tile, c: usize, hw: usize },
}

#[derive(Clone, Debug)]
pub struct Case {
    pub kernel: &'static str,
    pub kind: Kind,
}

impl Case {
    pub fn shape(&self) -> String {
        match self.kind {
            Kind::Gemm {
                m,
                n,
                k,
                splits,
                swiglu,
                ..
            } => {
                let f = if swiglu {
                    format!(" -> swiglu f{}", n / 2)
                } else {
                    String::new()
                };
                let s = if splits > 1 {
                    format!(", {splits} splits")
                } else {
                    String::new()
                };
                format!("m{m} n{n} k{k}{f}{s}")
            }
            Kind::Prefill { batch, len, heads, d } => format!("B{batch} L{len} H{heads} d{d}"),
            Kind::Decode { rows, heads, d, pos } => format!("rows{rows} H{heads} d{d} pos{pos}"),
            Kind::Conv { c, hw, norm, .. } => {
                let gn = if norm { " of swish(groupnorm)" } else { "" };
                format!("{c}->{c} 3x3 {hw}x{hw}{gn}")
            }
            Kind::Upsample { c, hw, .. } => format!("{c}->{c} up {hw}->{}", 2 * hw),
        }
    }

    pub fn math(&self) -> Math {
        match self.kind {
            Kind::Gemm { .. } | Kind::Prefill { .. } => Math::Bf16Tensor,
            Kind::Decode { .. } => Math::F32Simt,
            Kind::Conv { tile, .. } | Kind::Upsample { tile, .. } => match tile {
                conv::Tile::Tf32 => Math::Tf32Tensor { passes: 1 },
                conv::Tile::Tf32x3 => Math::Tf32Tensor { passes: 3 },
                conv::Tile::Bf16 => Math::Bf16Tensor,
                conv::Tile::T64 | conv::Tile::T128 => Math::F32Simt,
            },
        }
    }

    /// Useful FLOPs (causal attention counts the visible half; a multiply-add is 2).
    pub fn flops(&self) -> f64 {
        match self.kind {
            Kind::Gemm { m, n, k, .. } => 2.0 * (m * n * k) as f64,
            Kind::Prefill { batch, len, heads, d } => 4.0 * (batch * heads * d) as f64 * (len * (len + 1) / 2) as f64,
            Kind::Decode { rows, heads, d, pos } => 4.0 * (rows * heads * d * (pos + 1)) as f64,
            Kind::Conv { c, hw, .. } => 2.0 * (c * c * 9 * hw * hw) as f64,
            Kind::Upsample { c, hw, .. } => 2.0 * (c * c * 16 * hw * hw) as f64,
        }
    }

    /// The fewest bytes of DRAM traffic: every operand read once, the output written once.
    pub fn min_bytes(&self) -> f64 {
        (match self.kind {
            Kind::Gemm {
                m, n, k, swiglu: true, ..
            } => 2 * (m * k + n * k + m * n / 2),
            Kind::Gemm { m, n, k, .. } => 2 * (m * k + n * k + 2 * m * n),
            Kind::Prefill { batch, len, heads, d } => 2 * 4 * batch * len * heads * d,
            Kind::Decode { rows, heads, d, pos } => 2 * (2 * rows * heads * d + 2 * rows * heads * d * (pos + 1)),
            Kind::Conv { c, hw, norm, .. } => 4 * (3 * c * hw * hw + 9 * c * c + c + if norm { 4 * c } else { 0 }),
            Kind::Upsample { c, hw, .. } => 4 * (5 * c * hw * hw + 16 * c * c + c),
        }) as f64
    }

    /// Roofline lower bound on `gpu`, seconds.
    pub fn roofline(&self, gpu: &Gpu) -> f64 {
        let (peak, issued) = match self.math() {
            Math::Bf16Tensor => (gpu.bf16_flops, 1.0),
            Math::Tf32Tensor { passes } => (gpu.tf32_flops, passes as f64),
            Math::F32Simt => (gpu.f32_flops, 1.0),
        };
        (self.flops() * issued / peak).max(self.min_bytes() / gpu.bytes_per_s)
    }

    /// Allocates and fills the case's buffers (random data, deterministic).
    pub fn prepare<D: Device>(&self, dev: &D) -> Result<Vec<D::Buf>> {
        let mut seed = 0x9e37_79b9u32;
        let mut rnd = move |n: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
                })
                .collect()
        };
        let bf = |v: Vec<f32>| -> Vec<u8> {
            v.iter()
                .flat_map(|x| bf16::from_f32(*x).to_bits().to_le_bytes())
                .collect()
        };
        let f = |v: Vec<f32>| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let datas: Vec<Vec<u8>> = match self.kind {
            Kind::Gemm { m, n, k, splits, .. } => vec![
                bf(rnd(m * k, 1.0)),
                bf(rnd(n * k, 0.1)),
                bf(rnd(m * n, 1.0)),
                vec![0; 2 * m * n],
                vec![
                    0;
                    4 * if splits > 1 {
                        gemm::split_k_workspace_len(m, n, k, splits)
                    } else {
                        1
                    }
                ],
            ],
            Kind::Prefill { batch, len, heads, d } => {
                let spec = kv_spec(batch, len, heads, d);
                vec![
                    bf(rnd(batch * len * heads * d, 1.0)),
                    bf(rnd(spec.elems(), 1.0)),
                    step_bytes(0),
                    vec![0; 2 * batch * len * heads * d],
                ]
            }
            Kind::Decode { rows, heads, d, pos } => {
                let spec = kv_spec(rows, pos + 1, heads, d);
                let ws = attention::attention_workspace_len(&spec, rows, 1, Default::default());
                vec![
                    bf(rnd(rows * heads * d, 1.0)),
                    bf(rnd(spec.elems(), 1.0)),
                    step_bytes(pos as i32),
                    vec![0; 2 * rows * heads * d],
                    vec![0; 4 * ws.max(1)],
                ]
            }
            Kind::Conv { c, hw, .. } => vec![
                f(rnd(c * hw * hw, 1.0)),
                f(rnd(c * c * 9, 0.05)),
                f(rnd(c, 0.1)),
                f(rnd(c * hw * hw, 1.0)),
                vec![0; 4 * c * hw * hw],
                // GroupNorm records (mean hi, mean lo, scale, shift) per channel
                f((0..c)
                    .flat_map(|i| [0.01 * i as f32, 0.0, 1.0 + 0.001 * i as f32, 0.1])
                    .collect()),
            ],
            Kind::Upsample { c, hw, .. } => vec![
                f(rnd(c * hw * hw, 1.0)),
                f(rnd(16 * c * c, 0.05)),
                f(rnd(c, 0.1)),
                vec![0; 16 * c * hw * hw],
            ],
        };
        datas
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let b = dev.alloc(d.len(), &format!("lab buffer {i}"))?;
                dev.write(&b, 0, &d)?;
                Ok(b)
            })
            .collect()
    }

    /// One launch (or the launcher's launches) of the case over buffers from [`Case::prepare`].
    pub fn launch<D: Device>(&self, dev: &D, b: &[D::Buf]) -> Result<()> {
        use crate::backend::cuda::device::DeviceBuffer;
        // SAFETY: every pointer covers a live buffer of `prepare`, sized for the case and typed as written there.
        unsafe {
            let p = |i: usize, n: usize| DevPtr::<bf16>::from_raw(b[i].addr(), n);
            let pf = |i: usize, n: usize| DevPtr::<f32>::from_raw(b[i].addr(), n);
            match self.kind {
                Kind::Gemm {
                    path,
                    m,
                    n,
                    k,
                    splits,
                    swiglu: true,
                } => {
                    let split = (splits > 1).then(|| {
                        (
                            splits,
                            DevPtrMut::from_raw(b[4].addr(), gemm::split_k_workspace_len(m, n, k, splits)),
                        )
                    });
                    let y = DevPtrMut::from_raw(b[3].addr(), m * n / 2);
                    gemm::gemm_swiglu(dev, p(0, m * k), p(1, n * k), y, (m, k, n / 2), path, split)
                }
                Kind::Gemm {
                    path, m, n, k, splits, ..
                } if splits > 1 => {
                    let gemm::GemmPath::Tiled(tile) = path else {
                        return Err(crate::Error::Invalid(format!(
                            "{}: split-K runs the tiled path",
                            self.kernel
                        )));
                    };
                    let part = DevPtrMut::from_raw(b[4].addr(), gemm::split_k_workspace_len(m, n, k, splits));
                    let y = DevPtrMut::from_raw(b[3].addr(), m * n);
                    gemm::gemm_split_k(
                        dev,
                        p(0, m * k),
                        p(1, n * k),
                        Some(p(2, m * n)),
                        y,
                        (m, n, k),
                        tile,
                        splits,
                        part,
                    )
                }
                Kind::Gemm { path, m, n, k, .. } => gemm::gemm_with(
                    dev,
                    p(0, m * k),
                    p(1, n * k),
                    Some(p(2, m * n)),
                    DevPtrMut::from_raw(b[3].addr(), m * n),
                    m,
                    n,
                    k,
                    path,
                ),
                Kind::Prefill { batch, len, heads, d }
                | Kind::Decode {
                    rows: batch,
                    heads,
                    d,
                    pos: len,
                } => {
                    let (len_q, seq) = match self.kind {
                        Kind::Prefill { .. } => (len, len),
                        _ => (1, len + 1),
                    };
                    let spec = kv_spec(batch, seq, heads, d);
                    let ws = if b.len() > 4 { b[4].bytes() / 4 } else { 0 };
                    attention::attention(
                        dev,
                        p(0, batch * len_q * heads * d),
                        p(1, spec.elems()),
                        &spec,
                        0,
                        None,
                        DevPtr::<StepState>::from_raw(b[2].addr(), 1),
                        None,
                        DevPtrMut::from_raw(b[3].addr(), batch * len_q * heads * d),
                        DevPtrMut::from_raw(if ws > 0 { b[4].addr() } else { 0 }, ws),
                        batch,
                        len_q,
                        Default::default(),
                    )
                }
                Kind::Conv { tile, c, hw, norm } => conv::conv2d_with(
                    dev,
                    pf(0, c * hw * hw),
                    pf(1, c * c * 9),
                    Some(pf(2, c)),
                    Some(pf(3, c * hw * hw)),
                    DevPtrMut::from_raw(b[4].addr(), c * hw * hw),
                    (1, c, hw, hw),
                    (c, 3, 3),
                    1,
                    [1; 4],
                    Some(tile),
                    None,
                    norm.then(|| conv::ConvNorm {
                        rec: pf(5, 4 * c),
                        silu: true,
                    }),
                ),
                Kind::Upsample { tile, c, hw } => conv::upsample_conv(
                    dev,
                    pf(0, c * hw * hw),
                    pf(1, 16 * c * c),
                    Some(pf(2, c)),
                    DevPtrMut::from_raw(b[3].addr(), 4 * c * hw * hw),
                    (1, c, hw, hw),
                    c,
                    Some(tile),
                ),
            }
        }
    }
}

fn kv_spec(batch: usize, seq: usize, heads: usize, d: usize) -> KvSpec {
    KvSpec {
        layers: 1,
        batch,
        heads,
        seq,
        head_dim: d,
        storage: Dtype::Bf16,
    }
}

/// The step-state block with `pos` (the struct is five 4-byte words, `pos` first; the others stay 0 here).
fn step_bytes(pos: i32) -> Vec<u8> {
    let mut b = vec![0u8; size_of::<StepState>()];
    b[..4].copy_from_slice(&pos.to_le_bytes());
    b
}

/// The lab's cases: the kernels that carry the FLOPs and bytes of GPT-B + VQ-16, at shapes of one GPT-B layer
/// (d = 768, 12 heads of 64) and of the VQ decoder's 128-channel stages, scaled down where the emulator would take
/// minutes (it runs each mma as a 32-fiber rendezvous). `quick` shrinks them further for the tests.
pub fn cases(quick: bool) -> Vec<Case> {
    use conv::Tile as C;
    use gemm::{GemmPath, Tile as G};
    let (m, hw, len) = if quick { (128, 16, 64) } else { (256, 32, 256) };
    let k = 768;
    vec![
        Case {
            kernel: "gemm_tiled_128x128_bf16",
            kind: Kind::Gemm {
                path: GemmPath::Tiled(Some(G::T128x128)),
                m,
                n: 2304,
                k,
                splits: 1,
                swiglu: false,
            },
        },
        Case {
            kernel: "gemm_tiled_128x64_bf16",
            kind: Kind::Gemm {
                path: GemmPath::Tiled(Some(G::T128x64)),
                m,
                n: 768,
                k,
                splits: 1,
                swiglu: false,
            },
        },
        Case {
            kernel: "gemm_tiled_64x64_bf16",
            kind: Kind::Gemm {
                path: GemmPath::Tiled(Some(G::T64x64)),
                m,
                n: 768,
                k,
                splits: 1,
                swiglu: false,
            },
        },
        Case {
            kernel: "gemm_small_bf16",
            kind: Kind::Gemm {
                path: GemmPath::Small(None),
                m: 16,
                n: 768,
                k,
                splits: 1,
                swiglu: false,
            },
        },
        Case {
            kernel: "gemm_tiled_64x64_bf16 (split-k)",
            kind: Kind::Gemm {
                path: GemmPath::Tiled(Some(G::T64x64)),
                m: 128,
                n: 768,
                k,
                splits: 6,
                swiglu: false,
            },
        },
        // w1|w3 with the SwiGLU epilogue: GPT-B's (f = 2048) in a decode step of 8 images with CFG, a prefill-sized
        // m through the shared epilogue tile, and batch 64 with CFG (split-K)
        Case {
            kernel: "gemm_small_bf16 (swiglu)",
            kind: Kind::Gemm {
                path: GemmPath::Small(None),
                m: 16,
                n: 4096,
                k,
                splits: 1,
                swiglu: true,
            },
        },
        Case {
            kernel: "gemm_tiled_128x64_bf16 (swiglu)",
            kind: Kind::Gemm {
                path: GemmPath::Tiled(Some(G::T128x64)),
                m,
                n: 1536,
                k,
                splits: 1,
                swiglu: true,
            },
        },
        Case {
            kernel: "gemm_tiled_64x64_bf16 (swiglu, split-k)",
            kind: Kind::Gemm {
                path: GemmPath::Tiled(Some(G::T64x64)),
                m: 128,
                n: if quick { 1024 } else { 4096 },
                k,
                splits: 2,
                swiglu: true,
            },
        },
        Case {
            kernel: "attention_flash_bf16",
            kind: Kind::Prefill {
                batch: 2,
                len,
                heads: 2,
                d: 64,
            },
        },
        Case {
            kernel: "attention_decode_bf16",
            kind: Kind::Decode {
                rows: 16,
                heads: 12,
                d: 64,
                pos: len - 1,
            },
        },
        Case {
            kernel: "conv2d_t128_f32",
            kind: Kind::Conv {
                tile: C::T128,
                c: 128,
                hw,
                norm: false,
            },
        },
        Case {
            kernel: "conv2d_tc_f32 (tf32)",
            kind: Kind::Conv {
                tile: C::Tf32,
                c: 128,
                hw,
                norm: false,
            },
        },
        Case {
            kernel: "conv2d_tc_f32 (tf32, groupnorm prologue)",
            kind: Kind::Conv {
                tile: C::Tf32,
                c: 128,
                hw,
                norm: true,
            },
        },
        Case {
            kernel: "conv2d_tc_f32 (3xtf32)",
            kind: Kind::Conv {
                tile: C::Tf32x3,
                c: 128,
                hw,
                norm: false,
            },
        },
        Case {
            kernel: "conv2d_tc_f32 (bf16)",
            kind: Kind::Conv {
                tile: C::Bf16,
                c: 128,
                hw,
                norm: false,
            },
        },
        Case {
            kernel: "upsample_conv_tc_f32 (tf32)",
            kind: Kind::Upsample {
                tile: C::Tf32,
                c: 128,
                hw: hw / 2,
            },
        },
        Case {
            kernel: "upsample_conv_t128_f32",
            kind: Kind::Upsample {
                tile: C::T128,
                c: 128,
                hw: hw / 2,
            },
        },
        Case {
            kernel: "conv2d_t128_f32 (64-wide rows)",
            kind: Kind::Conv {
                tile: C::T128,
                c: 64,
                hw: 2 * hw,
                norm: false,
            },
        },
        Case {
            kernel: "conv2d_tc_f32 (tf32, 64-wide rows)",
            kind: Kind::Conv {
                tile: C::Tf32,
                c: 64,
                hw: 2 * hw,
                norm: false,
            },
        },
        Case {
            kernel: "conv2d_tc_f32 (tf32, 128-wide rows)",
            kind: Kind::Conv {
                tile: C::Tf32,
                c: 32,
                hw: 4 * hw,
                norm: false,
            },
        },
        Case {
            kernel: "upsample_conv_tc_f32 (tf32, 64-wide rows)",
            kind: Kind::Upsample {
                tile: C::Tf32,
                c: 64,
                hw,
            },
        },
    ]
}

impl Case {
    /// The kernel's entry name (without the variant note in parentheses).
    pub fn entry(&self) -> &'static str {
        self.kernel.split(' ').next().unwrap_or(self.kernel)
    }

    /// Threads per block and dynamic shared memory of the (main) launch, for the occupancy.
    pub fn block(&self) -> (u32, u32) {
        match self.kind {
            Kind::Gemm {
                path: gemm::GemmPath::Small(w),
                n,
                k,
                ..
            } => (32 * w.unwrap_or_else(|| gemm::small_warps(n, k)), 0),
            Kind::Gemm { path, m, n, .. } => {
                let tile = match path {
                    gemm::GemmPath::Tiled(Some(t)) => t,
                    _ => gemm::pick_tile(m, n),
                };
                (tile.threads(), tile.shared_bytes())
            }
            Kind::Prefill { d, .. } => (attention::FLASH_THREADS, attention::flash_shared_bytes(d) as u32),
            Kind::Decode { d, .. } => (128, attention::decode_shared_bytes(4, d) as u32),
            Kind::Conv { tile, c, hw, .. } => (conv::THREADS, conv::shared_bytes(tile, conv_loader(c, hw))),
            Kind::Upsample { tile, c, hw } => (conv::THREADS, conv::upsample_shared_bytes(tile, conv_loader(c, hw))),
        }
    }
}

/// ptxas' figures for a kernel on an arch: (registers, static shared bytes, spill bytes stored + loaded).
pub fn ptxas(kernel: &str, arch: &str) -> Option<(u32, u32, u32)> {
    let report = NVCC.ptxas_report;
    let head = format!("Compiling entry function '{kernel}' for '{arch}'");
    let at = report.find(&head)?;
    let rest = &report[at + head.len()..];
    let end = rest.find("Compiling entry function").unwrap_or(rest.len());
    let block = &rest[..end];
    let num_before = |key: &str| -> u32 {
        block.find(key).map_or(0, |p| {
            block[..p]
                .split_whitespace()
                .last()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    };
    let regs = num_before(" registers");
    let smem = num_before(" bytes smem");
    let spills = num_before(" bytes spill stores") + num_before(" bytes spill loads");
    Some((regs, smem, spills))
}

/// The SASS instruction counts of a kernel on an arch (cuobjdump, via build.rs), by name (HMMA, LDSM, LDGSTS, ...).
pub fn sass_mix(kernel: &str, arch: &str) -> Option<Vec<(String, usize)>> {
    NVCC.sass_mix.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(kernel) && it.next() == Some(arch)).then(|| {
            it.filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0))))
                .collect()
        })
    })
}

/// Theoretical occupancy (resident warps / 64) of a block of `threads` with `regs` per thread and `smem` bytes of
/// shared memory (static + dynamic), from the per-SM limits: 64 K registers allocated per warp in units of 256,
/// 2048 threads, 32 blocks, 164 KiB (sm_80) or 228 KiB (sm_90) of shared memory with 1 KiB reserved per block.
pub fn occupancy(arch: &str, threads: u32, regs: u32, smem: u32) -> f64 {
    let warps = threads.div_ceil(32);
    let regs_warp = (regs.max(1) * 32).div_ceil(256) * 256;
    let by_regs = 65536 / (regs_warp * warps);
    let smem_sm = if arch == "sm_90" { 228 * 1024 } else { 164 * 1024 };
    let by_smem = smem_sm / (smem + 1024);
    let blocks = by_regs.min(by_smem).min(2048 / (warps * 32)).min(32);
    (blocks * warps) as f64 / 64.0
}

/// The loader the conv launchers pick for a case's c channels at hw × hw (the input 16-byte aligned).
fn conv_loader(c: usize, hw: usize) -> conv::Loader {
    conv::halo_width(c, hw).map_or(conv::Loader::Gather, |rw| conv::Loader::Halo { rw })
}
