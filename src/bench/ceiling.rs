//! The machine's ceilings, measured: memory read bandwidth with every pool thread, the f32 GEMM rate of the `gemm`
//! crate on a large square product, and the AVX-512 multiply-add peaks (f32 FMA and bf16 `vdpbf16ps`) of a
//! register-blocked GEMM micro-kernel whose operand panels stay in L1 (the `gemm` crate has no bf16 kernel).
//!
//! The stage tables of `llamagen bench` divide a stage's floor (`cost::Cost` over these ceilings) by its measured
//! time: memory-bound stages against the read bandwidth, compute-bound ones against the GEMM rate of their dtype.
use super::cost::Cost;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ceilings {
    /// Rayon pool threads used for every measurement.
    pub threads: usize,
    /// Streaming read of a 512 MiB buffer, best of 5, GB/s (10⁹ bytes).
    pub mem_read_gbs: f64,
    /// `gemm::gemm` f32, 2048³, best of 4, GFLOP/s.
    pub f32_gemm_gflops: f64,
    /// AVX-512 FMA micro-kernel (8×32 tile, panels in L1), GFLOP/s; `None` without AVX-512F.
    pub f32_kernel_gflops: Option<f64>,
    /// AVX-512 BF16 `vdpbf16ps` micro-kernel (8×32 tile, panels in L1), GFLOP/s; `None` without AVX512_BF16.
    pub bf16_kernel_gflops: Option<f64>,
}

/// Which ceiling bounds a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// Memory read bandwidth.
    Mem,
    /// f32 GEMM rate.
    F32,
    /// bf16 GEMM rate.
    Bf16,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Mem => "mem",
            Bound::F32 => "gemm-f32",
            Bound::Bf16 => "gemm-bf16",
        }
    }
}

impl Ceilings {
    /// Measures everything (about a second on a 2-core machine).
    pub fn measure() -> Ceilings {
        Ceilings {
            threads: rayon::current_num_threads(),
            mem_read_gbs: mem_read_gbs(512 << 20, 5),
            f32_gemm_gflops: f32_gemm_gflops(2048, 4),
            f32_kernel_gflops: kernel::f32_gflops(),
            bf16_kernel_gflops: kernel::bf16_gflops(),
        }
    }

    /// A GPU's ceilings from its datasheet (dense tensor-core bf16, non-tensor f32, HBM bandwidth), by the name the
    /// driver reports; `None` for GPUs not listed. Datasheet peaks, not measurements: the % columns of a GPU run
    /// say how close a stage comes to the paper roofline.
    pub fn gpu_datasheet(name: &str) -> Option<Ceilings> {
        // (name fragment, GB/s, f32 GFLOP/s, bf16 dense GFLOP/s); the more specific fragment first.
        const GPUS: [(&str, f64, f64, f64); 5] = [
            ("H200", 4800.0, 67_000.0, 989_000.0),
            ("H100 PCIe", 2000.0, 51_000.0, 756_000.0),
            ("H100", 3350.0, 67_000.0, 989_000.0),
            ("A100-SXM4-80GB", 2039.0, 19_500.0, 312_000.0),
            ("A100", 1555.0, 19_500.0, 312_000.0),
        ];
        let &(_, gbs, f32_g, bf16_g) = GPUS.iter().find(|g| name.contains(g.0))?;
        Some(Ceilings {
            threads: 0,
            mem_read_gbs: gbs,
            f32_gemm_gflops: f32_g,
            f32_kernel_gflops: None,
            bf16_kernel_gflops: Some(bf16_g),
        })
    }

    /// GEMM rate for products in `bf16` (weights in bf16) or f32: the bf16 micro-kernel peak where the CPU has
    /// one (the f32 GEMM rate otherwise), the `gemm` crate's f32 rate for f32.
    pub fn gemm_gflops(&self, bf16: bool) -> f64 {
        match (bf16, self.bf16_kernel_gflops) {
            (true, Some(g)) => g,
            _ => self.f32_gemm_gflops,
        }
    }

    /// The physical floor of a job of cost `c`: `max(bytes / bandwidth, flops / GEMM rate)` in seconds, and
    /// which ceiling sets it.
    pub fn floor(&self, c: Cost, bf16: bool) -> (f64, Bound) {
        let mem = c.bytes / (self.mem_read_gbs * 1e9);
        let flop = c.flops / (self.gemm_gflops(bf16) * 1e9);
        if mem >= flop {
            (mem, Bound::Mem)
        } else {
            (flop, if bf16 { Bound::Bf16 } else { Bound::F32 })
        }
    }

    /// One line for logs and table headers.
    pub fn describe(&self) -> String {
        if self.threads == 0 {
            return format!(
                "GPU datasheet: HBM {:.0} GB/s; f32 {:.0} GFLOP/s; bf16 tensor cores {:.0} GFLOP/s",
                self.mem_read_gbs,
                self.f32_gemm_gflops,
                self.gemm_gflops(true)
            );
        }
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |g| format!("{g:.0}"));
        format!(
            "{} threads: memory read {:.1} GB/s; f32 GEMM (gemm crate, 2048³) {:.0} GFLOP/s; AVX-512 kernel peaks: \
             f32 FMA {} GFLOP/s, bf16 dot {} GFLOP/s",
            self.threads,
            self.mem_read_gbs,
            self.f32_gemm_gflops,
            opt(self.f32_kernel_gflops),
            opt(self.bf16_kernel_gflops)
        )
    }
}

/// Sum of a slice with 8 independent lanes (vectorises; integer adds, so no ordering constraint).
fn sum_lanes(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for ch in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(ch[i]);
        }
    }
    let tail = it.remainder().iter().fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

/// Best read bandwidth over `passes` parallel passes over a `bytes`-sized buffer, GB/s.
pub fn mem_read_gbs(bytes: usize, passes: usize) -> f64 {
    let n = bytes / 8;
    // Written once so every page is mapped before timing.
    let buf: Vec<u64> = (0..n as u64).into_par_iter().collect();
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let s = buf
            .par_chunks(1 << 15)
            .map(sum_lanes)
            .reduce(|| 0, |a, b| a.wrapping_add(b));
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 8) as f64 / best / 1e9
}

/// Best f32 GEMM rate of the `gemm` crate on `n`×`n`×`n`, GFLOP/s (all pool threads).
pub fn f32_gemm_gflops(n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0f32; n * n];
    let mut best = f64::INFINITY;
    for r in 0..reps + 1 {
        let t = Instant::now();
        // SAFETY: all three matrices are n×n row-major (column stride 1, row stride n) and in bounds.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        // The first run warms the pool and the pages.
        if r > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    2.0 * (n * n * n) as f64 / best / 1e9
}

mod kernel {
    //! Register-blocked GEMM micro-kernels: an 8×32 tile of C in 16 zmm accumulators, K-loop over packed A (8
    //! values per k, broadcast) and B (32 values per k, two vectors) panels that live in L1. This is the inner
    //! loop of a well-blocked GEMM, so its rate is the GEMM peak of the instruction it uses.
    use std::time::Instant;

    /// K steps per pass over the panels (bf16: pairs of k): A 8·KP·4 B, B KP·128 B, about 20 KiB in all.
    const KP: usize = 128;
    /// Passes over the panels per measurement and thread: 10⁵ · 128 · 16 · (32 or 64) FLOPs, ~0.1 s.
    const PASSES: usize = 100_000;

    fn run_all(f: fn() -> f32, flops_per_thread: f64) -> f64 {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            let s: f32 = rayon::broadcast(|_| f()).into_iter().sum();
            std::hint::black_box(s);
            best = best.min(t.elapsed().as_secs_f64());
        }
        flops_per_thread * rayon::current_num_threads() as f64 / best / 1e9
    }

    pub fn f32_gflops() -> Option<f64> {
        if !is_x86_feature_detected!("avx512f") {
            return None;
        }
        // SAFETY: AVX-512F is present (checked above).
        let f: fn() -> f32 = || unsafe { f32_kernel() };
        Some(run_all(f, (PASSES * KP * 16 * 32) as f64))
    }

    pub fn bf16_gflops() -> Option<f64> {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
            return None;
        }
        // SAFETY: AVX-512F and AVX512_BF16 are present (checked above).
        let f: fn() -> f32 = || unsafe { bf16_kernel() };
        Some(run_all(f, (PASSES * KP * 16 * 64) as f64))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn f32_kernel() -> f32 {
        use std::arch::x86_64::*;
        let a: Vec<f32> = (0..8 * KP).map(|i| 1e-3 * (i % 7) as f32).collect();
        let b: Vec<f32> = (0..32 * KP).map(|i| 1e-3 * (i % 5) as f32).collect();
        let mut c = [_mm512_setzero_ps(); 16];
        for _ in 0..PASSES {
            for p in 0..KP {
                // SAFETY: p < KP, so p·32 + 16 + 16 <= 32·KP and p·8 + 7 < 8·KP.
                let (b0, b1) = unsafe {
                    (
                        _mm512_loadu_ps(b.as_ptr().add(p * 32)),
                        _mm512_loadu_ps(b.as_ptr().add(p * 32 + 16)),
                    )
                };
                for i in 0..8 {
                    // SAFETY: p·8 + i < 8·KP.
                    let av = _mm512_set1_ps(unsafe { *a.get_unchecked(p * 8 + i) });
                    c[2 * i] = _mm512_fmadd_ps(av, b0, c[2 * i]);
                    c[2 * i + 1] = _mm512_fmadd_ps(av, b1, c[2 * i + 1]);
                }
            }
        }
        c.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn bf16_kernel() -> f32 {
        use std::arch::x86_64::*;
        // Packed pairs: A holds (a[i][2p], a[i][2p+1]) as one u32 per (p, i); B 32 pairs per p.
        let a: Vec<u32> = (0..8 * KP).map(|i| 0x3C00_3C00 + (i as u32 % 7)).collect();
        let b: Vec<u32> = (0..32 * KP).map(|i| 0x3C00_3C00 + (i as u32 % 5)).collect();
        let mut c = [_mm512_setzero_ps(); 16];
        for _ in 0..PASSES {
            for p in 0..KP {
                // SAFETY: p < KP, so the two 16-lane loads stay inside b (32·KP u32).
                let (b0, b1): (__m512bh, __m512bh) = unsafe {
                    (
                        std::mem::transmute::<__m512i, __m512bh>(
                            _mm512_loadu_si512(b.as_ptr().add(p * 32) as *const _),
                        ),
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            b.as_ptr().add(p * 32 + 16) as *const _
                        )),
                    )
                };
                for i in 0..8 {
                    // SAFETY: p·8 + i < 8·KP; __m512i and __m512bh are both 64 plain bytes.
                    let av: __m512bh = unsafe {
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.get_unchecked(p * 8 + i) as i32))
                    };
                    c[2 * i] = _mm512_dpbf16_ps(c[2 * i], av, b0);
                    c[2 * i + 1] = _mm512_dpbf16_ps(c[2 * i + 1], av, b1);
                }
            }
        }
        c.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }
}
