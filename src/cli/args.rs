//! Flags shared by several subcommands, and model loading from them.
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use llamagen::backend::cpu::{CpuBackend, KernelFamily};
use llamagen::model::vq::VqRunner;
use llamagen::model::{Dtype, GptConfig, VqConfig};
use llamagen::ops::Backend;
use llamagen::sample::sampler::SamplingParams;
use llamagen::weights::{self, StateDict};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct GptArgs {
    /// GPT weights: safetensors, or an official .pt release ({"model": state_dict} or a bare FSDP state dict).
    #[arg(long)]
    pub gpt: Option<PathBuf>,
    /// GPT config JSON with the official ModelArgs field names (default: the `config` metadata of a safetensors
    /// file, or <weights>.config.json beside it).
    #[arg(long)]
    pub gpt_config: Option<PathBuf>,
    /// GPT preset instead of a config file: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-3B (c2i).
    #[arg(long)]
    pub gpt_model: Option<String>,
    /// Image size in pixels for a preset (256, 384 or 512); sets block_size = (size / downsampling)².
    #[arg(long)]
    pub image_size: Option<usize>,
}

impl GptArgs {
    /// Whether any GPT flag was given (else the bundled demo model may run).
    pub fn given(&self) -> bool {
        self.gpt.is_some() || self.gpt_config.is_some() || self.gpt_model.is_some()
    }
}

#[derive(Args, Debug, Clone)]
pub struct VqArgs {
    /// VQ tokenizer weights: safetensors or an official .pt release.
    #[arg(long)]
    pub vq: Option<PathBuf>,
    /// VQ config JSON (codebook_size, codebook_embed_dim, codebook_l2_norm, encoder_ch_mult, decoder_ch_mult,
    /// z_channels, and optionally ch, num_res_blocks).
    #[arg(long)]
    pub vq_config: Option<PathBuf>,
    /// VQ preset instead of a config file: VQ-16 or VQ-8.
    #[arg(long)]
    pub vq_model: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
    CudaEmu,
}

impl VqArgs {
    /// Whether any VQ flag was given.
    pub fn given(&self) -> bool {
        self.vq.is_some() || self.vq_config.is_some() || self.vq_model.is_some()
    }
}

/// `--device`, the same on every subcommand that runs a model.
#[derive(Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// Where to run: cpu, cuda (a GPU) or cuda-emu (the CUDA kernels on the CPU emulator, for testing).
    /// Default: cuda when a GPU and the driver are present, else cpu. On the CPU, LLAMAGEN_CPU_KERNELS =
    /// portable|avx2|avx512|avx512bf16 forces a kernel family below the best this CPU has.
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Arithmetic of the VQ decoder's convolutions on CUDA: f32 (CUDA cores, faithful), tf32x3 (tensor cores,
    /// split TF32: f32-level error), tf32 (tensor cores, ~1e-4 relative error) or bf16 (tensor cores at twice the
    /// TF32 rate, ~1e-3): see the README's table.
    #[arg(long, value_enum, default_value = "f32")]
    pub vq_dtype: VqDtypeArg,
}

impl DeviceArgs {
    pub fn resolve(self) -> Device {
        resolve_device(self.device)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VqDtypeArg {
    F32,
    Tf32x3,
    Tf32,
    Bf16,
}

/// The backend of the VQ tokenizer: f32 activations, and the conv kernels `--vq-dtype` asks for (tensor-core ones
/// exist on CUDA only).
pub fn vq_backend(d: DeviceArgs) -> Result<Box<dyn Backend>> {
    use llamagen::backend::cuda::conv::Tile;
    let device = d.resolve();
    let tile = match d.vq_dtype {
        VqDtypeArg::F32 => None,
        VqDtypeArg::Tf32x3 => Some(Tile::Tf32x3),
        VqDtypeArg::Tf32 => Some(Tile::Tf32),
        VqDtypeArg::Bf16 => Some(Tile::Bf16),
    };
    if tile.is_some() && device == Device::Cpu {
        bail!(
            "--vq-dtype {:?} runs on tensor cores: it needs --device cuda or cuda-emu (the CPU computes in f32)",
            d.vq_dtype
        );
    }
    backend_with(device, Dtype::F32, tile)
}

/// `--device` when given, else cuda when a GPU is usable (driver, device and embedded kernels), else cpu.
pub fn resolve_device(d: Option<Device>) -> Device {
    d.unwrap_or_else(|| {
        if !llamagen::backend::cuda::kernels::MODULES.is_empty() && llamagen::backend::cuda::gpu::available() {
            Device::Cuda
        } else {
            Device::Cpu
        }
    })
}

/// The CPU kernel family: `LLAMAGEN_CPU_KERNELS` when set (an unknown name, or a family this CPU cannot run, is an
/// error naming the variable), else the best this CPU has.
pub fn cpu_family() -> Result<KernelFamily> {
    Ok(KernelFamily::from_env()?)
}

/// `cpu/<kernel family>`, `cuda` or `cuda-emu`: the device as reports name it.
pub fn device_label(device: Device) -> Result<String> {
    Ok(match device {
        Device::Cpu => format!("cpu/{}", cpu_family()?),
        Device::Cuda => "cuda".into(),
        Device::CudaEmu => "cuda-emu".into(),
    })
}

/// The backend for `--device`: activations (and the KV cache) in bf16 when `dtype` is bf16.
pub fn backend(device: Device, dtype: Dtype) -> Result<Box<dyn Backend>> {
    backend_with(device, dtype, None)
}

/// [`backend`] with the conv kernel variant of the CUDA backends (`None`: the launcher's f32 choice).
fn backend_with(
    device: Device,
    dtype: Dtype,
    conv: Option<llamagen::backend::cuda::conv::Tile>,
) -> Result<Box<dyn Backend>> {
    use llamagen::backend::cuda;
    let act = dtype;
    match device {
        Device::Cpu => {
            let family = cpu_family()?;
            tracing::debug!("CPU kernel family: {family}");
            Ok(Box::new(CpuBackend::with_kernels(dtype == Dtype::Bf16, family)?))
        }
        Device::Cuda => {
            let dev = cuda::gpu::GpuDevice::new(0)?;
            tracing::info!("CUDA device: {}", cuda::device::Device::describe(&dev));
            Ok(Box::new(cuda::CudaBackend::new(dev, act)?.with_conv_tile(conv)))
        }
        #[cfg(llamagen_cuemu)]
        Device::CudaEmu => Ok(Box::new(
            cuda::CudaBackend::new(cuda::emu::EmuDevice::new(), act)?.with_conv_tile(conv),
        )),
        #[cfg(not(llamagen_cuemu))]
        Device::CudaEmu => bail!("--device cuda-emu: the CUDA emulator runs on x86-64 Linux only"),
    }
}

pub fn load_weights(path: &Path) -> Result<StateDict> {
    load_weights_where(path, &|_| true)
}

/// `load_weights`, reading only the tensors `keep` accepts.
pub fn load_weights_where(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<StateDict> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    Ok(weights::load_state_dict_where(path, "", keep)?)
}

/// A config embedded as safetensors metadata `config`, or `<stem>.config.json` beside the weights.
fn config_beside(weights: &Path) -> Result<Option<(String, PathBuf)>> {
    // Otherwise a missing file would be reported as "no config found".
    if !weights.exists() {
        bail!("{}: no such file", weights.display());
    }
    if let Ok(f) = weights::safetensors::SafeTensorsFile::open(weights) {
        if let Some(c) = f.metadata().and_then(|m| m.get("config")) {
            return Ok(Some((c.clone(), weights.to_path_buf())));
        }
    }
    let stem = weights
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.split('.').next().unwrap_or_default().to_string();
    let side = weights.with_file_name(format!("{stem}.config.json"));
    if side.exists() {
        let s = std::fs::read_to_string(&side).with_context(|| format!("{}", side.display()))?;
        return Ok(Some((s, side)));
    }
    Ok(None)
}

/// The GPT config from (in order) `--gpt-config`, `--gpt-model` + `--image-size`, or the weights file.
pub fn gpt_config(a: &GptArgs, downsample: usize) -> Result<GptConfig> {
    if let Some(p) = &a.gpt_config {
        if a.gpt_model.is_some() {
            bail!("give either --gpt-config or --gpt-model, not both");
        }
        return Ok(GptConfig::from_json_file(p)?);
    }
    if let Some(name) = &a.gpt_model {
        let size = a.image_size.unwrap_or(256);
        return Ok(GptConfig::preset(name, size, downsample)?);
    }
    if let Some(w) = &a.gpt {
        if let Some((json, from)) = config_beside(w)? {
            let cfg = GptConfig::from_json_str(&json, &from)?;
            if let Some(size) = a.image_size {
                let g = size / downsample.max(1);
                if size % downsample.max(1) != 0 || g * g != cfg.block_size {
                    bail!(
                        "--image-size {size} does not match the model's block_size {} (downsampling {downsample})",
                        cfg.block_size
                    );
                }
            }
            return Ok(cfg);
        }
        bail!(
            "{}: no GPT config found (give --gpt-config or --gpt-model)",
            w.display()
        );
    }
    bail!("no GPT model given: pass --gpt WEIGHTS (with --gpt-config or --gpt-model if the file carries no config)")
}

/// The VQ config from `--vq-config`, `--vq-model`, or the weights file.
pub fn vq_config(a: &VqArgs) -> Result<VqConfig> {
    if let Some(p) = &a.vq_config {
        if a.vq_model.is_some() {
            bail!("give either --vq-config or --vq-model, not both");
        }
        return Ok(VqConfig::from_json_file(p)?);
    }
    if let Some(name) = &a.vq_model {
        return Ok(VqConfig::preset(name)?);
    }
    if let Some(w) = &a.vq {
        if let Some((json, from)) = config_beside(w)? {
            return Ok(VqConfig::from_json_str(&json, &from)?);
        }
        bail!("{}: no VQ config found (give --vq-config or --vq-model)", w.display());
    }
    bail!("no VQ tokenizer given: pass --vq WEIGHTS (with --vq-config or --vq-model if the file carries no config)")
}

pub fn vq_runner(a: &VqArgs, with_encoder: bool, device: DeviceArgs) -> Result<VqRunner> {
    let cfg = vq_config(a)?;
    let path = a.vq.as_ref().context("no VQ weights given: pass --vq WEIGHTS")?;
    let t = std::time::Instant::now();
    // Decoding alone never reads the encoder half of the file.
    let decoder_only = |name: &str| with_encoder || !(name.starts_with("encoder.") || name.starts_with("quant_conv."));
    let mut sd = load_weights_where(path, &decoder_only)?;
    tracing::debug!("VQ weights read in {:.3} s", t.elapsed().as_secs_f64());
    Ok(VqRunner::new(cfg, &mut sd, with_encoder, vq_backend(device)?)?)
}

/// The bundled demo model (issue: a trained model so the main job runs offline).
pub struct Demo {
    pub dir: PathBuf,
    pub gpt: PathBuf,
    pub vq: PathBuf,
    pub class_names: Vec<String>,
    pub cfg_scale: f32,
    pub top_k: i64,
}

/// The sampling flags shared by `generate` and `serve`, checked, with the official demo sampler's defaults for
/// the unset ones (cfg scale 4.0, top-k 2000). Returns the cfg scale and the sampling parameters.
pub fn sampling(
    cfg_scale: Option<f32>,
    top_k: Option<i64>,
    temperature: f32,
    top_p: f32,
) -> Result<(f32, SamplingParams)> {
    let (cfg_scale, top_k) = (cfg_scale.unwrap_or(4.0), top_k.unwrap_or(2000));
    if top_k < 0 {
        bail!("--top-k {top_k} must be >= 0 (0 = all tokens)");
    }
    if !(cfg_scale >= 0.0) || !cfg_scale.is_finite() {
        bail!("--cfg-scale {cfg_scale} must be a finite number >= 0");
    }
    let p = SamplingParams {
        temperature,
        top_k: top_k as usize,
        top_p,
    };
    p.validate()?;
    Ok((cfg_scale, p))
}

/// A GPT and a VQ tokenizer belong together: every token the GPT can draw must be a code of the tokenizer.
pub fn check_pair(gpt: &GptConfig, vq: &VqConfig, a: &VqArgs) -> Result<()> {
    if gpt.vocab_size > vq.codebook_size {
        let vq_name = match (&a.vq_config, &a.vq_model, &a.vq) {
            (Some(p), _, _) | (None, None, Some(p)) => p.display().to_string(),
            (None, Some(m), _) => m.clone(),
            _ => "--vq".into(),
        };
        bail!(
            "the GPT's vocab_size {} is larger than the VQ tokenizer's codebook_size {} ({vq_name}): \
             they must belong together",
            gpt.vocab_size,
            vq.codebook_size
        );
    }
    Ok(())
}

/// With no GPT flag (and no synthetic weights) the bundled demo model runs: its weights fill the model flags, its
/// tuned cfg scale and top-k the defaults left unset. Returns its class names, or None when a model was given.
pub fn use_demo(
    gpt: &mut GptArgs,
    vq: &mut VqArgs,
    cfg_scale: &mut Option<f32>,
    top_k: &mut Option<i64>,
    synthetic_weights: bool,
) -> Result<Option<Vec<String>>> {
    if gpt.given() || synthetic_weights {
        return Ok(None);
    }
    let demo = demo_model()?;
    gpt.gpt = Some(demo.gpt);
    if !vq.given() {
        vq.vq = Some(demo.vq);
    }
    *cfg_scale = cfg_scale.or(Some(demo.cfg_scale));
    *top_k = top_k.or(Some(demo.top_k));
    tracing::info!("no model given: the bundled demo model from {}", demo.dir.display());
    Ok(Some(demo.class_names))
}

/// Tuned sampling defaults shipped beside the demo weights.
#[derive(serde::Deserialize)]
struct DemoDefaults {
    cfg_scale: f32,
    top_k: i64,
}

/// Finds `models/demo`: `$LLAMAGEN_DEMO_DIR`, then beside the binary (`target/release/llamagen` -> `models/demo`,
/// or an installed `bin/` with `share/llamagen/demo`), then the source tree it was built from.
pub fn demo_model() -> Result<Demo> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("LLAMAGEN_DEMO_DIR") {
        candidates.push(PathBuf::from(d));
    }
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(bin.join("../../models/demo"));
        candidates.push(bin.join("../share/llamagen/demo"));
        candidates.push(bin.join("models/demo"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo"));
    let dir = candidates
        .iter()
        .find(|d| d.join("gpt.safetensors").is_file() && d.join("vq.safetensors").is_file())
        .with_context(|| {
            let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
            format!(
                "no model given and the demo model was not found (looked in {}); pass --gpt and --vq",
                looked.join(", ")
            )
        })?
        .clone();
    let read = |name: &str| -> Result<String> {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))
    };
    let class_names: Vec<String> =
        serde_json::from_str(&read("classes.json")?).with_context(|| format!("{}/classes.json", dir.display()))?;
    let defaults: DemoDefaults =
        serde_json::from_str(&read("defaults.json")?).with_context(|| format!("{}/defaults.json", dir.display()))?;
    Ok(Demo {
        gpt: dir.join("gpt.safetensors"),
        vq: dir.join("vq.safetensors"),
        dir,
        class_names,
        cfg_scale: defaults.cfg_scale,
        top_k: defaults.top_k,
    })
}
