//! `llamagen info`: the backend that would run (device, CPU kernel family), and a model's config, parameter count
//! and memory estimate (the bundled demo model when no model flag is given).
use super::args::{self, Device, GptArgs, VqArgs};
use anyhow::Result;
use clap::Args;
use llamagen::backend::cpu::KernelFamily;
use llamagen::ops::Dtype;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub gpt: GptArgs,
    #[command(flatten)]
    pub vq: VqArgs,
    /// Images per batch for the memory estimate.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Classifier-free guidance doubles the GPT rows when > 1.
    #[arg(long, default_value_t = 4.0)]
    pub cfg_scale: f32,
    /// GPT weights and KV cache dtype for the memory estimate (as `generate --dtype`).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    #[command(flatten)]
    pub device: args::DeviceArgs,
}

/// What `--device` resolves to here, and on the CPU which kernel family runs and which this CPU could run.
fn print_backend(device: Device) -> Result<()> {
    println!("device: {}", args::device_label(device)?);
    match device {
        Device::Cpu => {
            let names: Vec<&str> = KernelFamily::all_supported().iter().map(|f| f.name()).collect();
            println!(
                "  CPU kernel family: {} (this CPU supports {}; force a lower one with {}=NAME)",
                args::cpu_family()?,
                names.join(", "),
                llamagen::backend::cpu::family::ENV
            );
        }
        Device::Cuda => {
            let name = llamagen::backend::cuda::gpu::device_name(0)?;
            println!("  GPU: {name}");
        }
        Device::CudaEmu => println!("  the CUDA kernels on the CPU emulator (for testing; slow)"),
    }
    Ok(())
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn run(mut a: InfoArgs) -> Result<()> {
    print_backend(a.device.resolve())?;
    if !a.gpt.given() && !a.vq.given() {
        let demo = args::demo_model()?;
        println!("model: the bundled demo ({})", demo.dir.display());
        (a.gpt.gpt, a.vq.vq) = (Some(demo.gpt), Some(demo.vq));
    }
    let vq = if a.vq.given() {
        Some(args::vq_config(&a.vq)?)
    } else {
        None
    };
    if let Some(v) = &vq {
        println!("VQ: {}", serde_json::to_string(v)?);
        println!(
            "  downsampling {}×, codebook {}×{}",
            v.downsample(),
            v.codebook_size,
            v.codebook_embed_dim
        );
    }
    if !a.gpt.given() {
        return Ok(());
    }
    let cfg = args::gpt_config(&a.gpt, vq.as_ref().map(|v| v.downsample()).unwrap_or(16))?;
    let params = cfg.param_count();
    let rows = if a.cfg_scale > 1.0 {
        2 * a.batch_size
    } else {
        a.batch_size
    };
    let kv = |bytes: usize| 2 * cfg.n_layer * rows * cfg.dim * cfg.cache_len() * bytes;
    println!("GPT: {}", serde_json::to_string(&cfg)?);
    println!(
        "  parameters: {params} ({:.1}M); FFN hidden {}; head dim {}",
        params as f64 / 1e6,
        cfg.ffn_hidden(),
        cfg.head_dim()
    );
    println!(
        "  tokens per image: {} ({}×{}), condition positions {}, cache length {}",
        cfg.block_size,
        cfg.grid(),
        cfg.grid(),
        cfg.cls_token_num,
        cfg.cache_len()
    );
    let bytes = match a.dtype {
        Dtype::F32 => 4,
        Dtype::Bf16 => 2,
    };
    let dtype = format!("{:?}", a.dtype).to_lowercase();
    println!("  weights ({dtype}): {}", mib(bytes * params));
    println!(
        "  KV cache ({dtype}) for batch {} ({} rows): {}",
        a.batch_size,
        rows,
        mib(kv(bytes))
    );
    let flops = 2.0 * params as f64 * cfg.block_size as f64 * if a.cfg_scale > 1.0 { 2.0 } else { 1.0 };
    println!("  ≈ {:.1} GFLOP per image (linear layers, incl. CFG rows)", flops / 1e9);
    Ok(())
}
