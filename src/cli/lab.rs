//! `llamagen lab`: the kernel lab's table (`bench::lab`). On `cuda-emu` (the default) it counts what each kernel
//! does; on `cuda` it times the same cases on the GPU and sets the measured time beside the roofline estimate.
use super::args::Device;
use anyhow::{bail, Result};
use clap::Args;
use llamagen::backend::cuda::device::Device as _;
use llamagen::bench::lab::{self, Case, A100, H100};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct LabArgs {
    /// cuda-emu: count on the emulator (no GPU needed); cuda: time on the GPU.
    #[arg(long, value_enum, default_value = "cuda-emu")]
    pub device: Device,
    /// Smaller shapes (seconds instead of a minute on the emulator).
    #[arg(long)]
    pub quick: bool,
    /// Also write the table to this file (markdown).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// GPU timing: launches per case after a warm-up.
    #[arg(long, default_value_t = 20)]
    pub reps: u32,
    /// Also count every kernel the engine launches while generating two images with the bundled demo model
    /// (bf16 GPT, TF32 VQ decoder) on cuda-emu: the coverage table, at the demo model's small shapes.
    #[arg(long)]
    pub engine: bool,
}

pub fn run(a: LabArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let cases = lab::cases(a.quick);
    let mut table = header(a.device);
    for c in &cases {
        let cols = match a.device {
            #[cfg(llamagen_cuemu)]
            Device::CudaEmu => emulated(c)?,
            Device::Cuda => timed(c, a.reps)?,
            Device::Cpu => bail!("--device cpu: the lab runs on cuda-emu (counts) or cuda (timings)"),
            #[allow(unreachable_patterns)]
            _ => bail!("--device cuda-emu: this build has no emulator (x86-64 Linux only)"),
        };
        writeln!(table, "| {} | {} | {} | {cols} |", c.kernel, c.shape(), statics(c))?;
    }
    table.push_str(&footer());
    if a.engine {
        #[cfg(llamagen_cuemu)]
        table.push_str(&engine_table()?);
        #[cfg(not(llamagen_cuemu))]
        bail!("--engine needs the emulator, which this build lacks");
    }
    print!("{table}");
    if let Some(p) = &a.out {
        std::fs::write(p, &table).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn header(device: Device) -> String {
    let dynamic = match device {
        Device::Cuda => "measured µs (GPU) | estimate / measured",
        _ => {
            "tensor FLOPs issued / useful | global sectors: ideal / touched | ldmatrix ways (worst) | shared ways \
              (worst)"
        }
    };
    format!(
        "| kernel | shape | regs sm_90 | smem B (static + dyn) | spills B | occupancy sm_80 / sm_90 | SASS sm_90: \
         HMMA / LDSM / LDGSTS / LDG.128 | {} est. µs | {} est. µs | {dynamic} |\n|{}\n",
        H100.name,
        A100.name,
        "---|".repeat(if device == Device::Cuda { 11 } else { 13 })
    )
}

fn footer() -> String {
    let mix = if lab::sass_mix("gemm_small_bf16", "sm_90").is_none() {
        format!(
            " SASS: {}",
            llamagen::backend::cuda::kernels::NVCC
                .sass_mix
                .lines()
                .next()
                .unwrap_or("missing")
        )
    } else {
        String::new()
    };
    format!(
        "\nEstimates are roofline lower bounds at the spec peaks (dense bf16 / TF32 / f32 FLOP/s and DRAM bandwidth) \
         for the case's useful FLOPs (3xTF32: three mmas each) and fewest bytes; mma.sync kernels reach ~60-70 % of \
         the dense peak at best. Emulator counts cover the accesses made through common.cuh's helpers (gld/gst, \
         load4/load16, store4/store16, __ldg, cp.async, ldmatrix): every kernel's bulk traffic; a few scalar reads \
         (bias values, per-block parameters) are not counted.{mix}\n"
    )
}

fn statics(c: &Case) -> String {
    let k = c.entry();
    let (threads, dynamic) = c.block();
    let p = |arch| lab::ptxas(k, arch);
    let (regs, smem, spills) = p("sm_90").unwrap_or((0, 0, 0));
    let occ = |arch| {
        p(arch).map_or("?".to_string(), |(r, s, _)| {
            format!("{:.0} %", 100.0 * lab::occupancy(arch, threads, r, s + dynamic))
        })
    };
    let mix = lab::sass_mix(k, "sm_90").map_or("?".to_string(), |m| {
        let get = |n: &str| m.iter().find(|(k, _)| k == n).map_or(0, |(_, v)| *v);
        format!(
            "{} / {} / {} / {}",
            get("HMMA"),
            get("LDSM"),
            get("LDGSTS"),
            get("LDG128")
        )
    });
    format!(
        "{regs} | {smem} + {dynamic} | {spills} | {} / {} | {mix} | {:.1} | {:.1}",
        occ("sm_80"),
        occ("sm_90"),
        c.roofline(&H100) * 1e6,
        c.roofline(&A100) * 1e6
    )
}

#[cfg(llamagen_cuemu)]
fn emulated(c: &Case) -> Result<String> {
    use llamagen::backend::cuda::emu::{self, EmuDevice};
    let dev = EmuDevice::new();
    let bufs = c.prepare(&dev)?;
    let (r, s) = emu::count(|| c.launch(&dev, &bufs));
    r?;
    let tensor = s.mma_bf16 as f64 * 4096.0 + s.mma_tf32 as f64 * 2048.0;
    Ok(format!("{:.2} | {}", tensor / c.flops(), memory_cols(&s)))
}

/// The memory columns of both tables: global sectors ideal / touched, ldmatrix and shared ways (worst).
#[cfg(llamagen_cuemu)]
fn memory_cols(s: &llamagen::backend::cuda::kernels::CuemuStats) -> String {
    let ratio = |a: u32, b: u32| {
        if b == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", a as f64 / b as f64)
        }
    };
    format!(
        "{} ({} / {}) | {} ({}) | {} ({})",
        ratio(s.global_ideal_sectors, s.global_sectors),
        s.global_ideal_sectors,
        s.global_sectors,
        ratio(s.ldsm_wavefronts, s.ldsm_phases),
        s.ldsm_worst_ways,
        ratio(s.shared_wavefronts, s.shared_phases),
        s.shared_worst_ways
    )
}

fn timed(c: &Case, reps: u32) -> Result<String> {
    use llamagen::backend::cuda::gpu::GpuDevice;
    let dev = GpuDevice::new(0)?;
    let bufs = c.prepare(&dev)?;
    c.launch(&dev, &bufs)?;
    dev.synchronize()?;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        c.launch(&dev, &bufs)?;
    }
    dev.synchronize()?;
    let us = t.elapsed().as_secs_f64() / reps as f64 * 1e6;
    Ok(format!("{us:.1} | {:.2}", c.roofline(&H100) * 1e6 / us))
}

/// Every kernel of a real `generate` run (the demo model on cuda-emu), counted per kernel.
#[cfg(llamagen_cuemu)]
fn engine_table() -> Result<String> {
    use clap::Parser;
    use llamagen::backend::cuda::emu;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        g: super::generate::GenerateArgs,
    }
    let dir = std::env::temp_dir().join(format!("llamagen-lab-{}", std::process::id()));
    let w = Wrap::try_parse_from([
        "generate",
        "--device",
        "cuda-emu",
        "--dtype",
        "bf16",
        "--vq-dtype",
        "tf32",
        "--num-images",
        "2",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        dir.to_str().unwrap_or("llamagen-lab"),
    ])?;
    let (r, kernels) = emu::count_kernels(|| super::generate::run(w.g));
    let _ = std::fs::remove_dir_all(&dir);
    r?;
    let mut t = String::from(
        "\n### Every kernel of `generate` (demo model, 2 images, bf16 GPT, TF32 VQ) on cuda-emu\n\n| kernel | launches \
         | global requests | global sectors: ideal / touched | ldmatrix ways (worst) | shared ways (worst) | mma \
         bf16 / tf32 |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, s) in &kernels {
        writeln!(
            t,
            "| {name} | {} | {} | {} | {} / {} |",
            s.launches,
            s.global_requests,
            memory_cols(s),
            s.mma_bf16,
            s.mma_tf32
        )?;
    }
    Ok(t)
}
