//! engine_check VQ.safetensors GPT.safetensors DIR
//! Reads DIR/codes.npy (B×h×w int64), DIR/labels.npy (B int64), DIR/images.npy (B×3×H×W f32) and writes
//! DIR/engine_decode.npy (f32 images), DIR/engine_encode.npy (int64 codes), DIR/engine_logits.npy (B×N×V f32,
//! teacher forcing without guidance), all from the engine's f32 CPU path.
use anyhow::{anyhow, Context, Result};
use llamagen::backend::cpu::CpuBackend;
use llamagen::io::npy::{npy_bytes_f32, npy_bytes_i64, read_npy};
use llamagen::model::gpt::{Condition, GptOptions, GptRunner};
use llamagen::model::vq::VqRunner;
use llamagen::model::{Dtype, GptConfig, VqConfig};
use llamagen::sample::sampler::SamplingParams;
use llamagen::weights::{load_state_dict, safetensors::SafeTensorsFile};
use std::path::{Path, PathBuf};

fn config(p: &Path) -> Result<String> {
    let f = SafeTensorsFile::open(p)?;
    f.metadata()
        .and_then(|m| m.get("config"))
        .cloned()
        .ok_or_else(|| anyhow!("{}: no config metadata", p.display()))
}

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (vq_path, gpt_path, dir) = (PathBuf::from(&a[1]), PathBuf::from(&a[2]), PathBuf::from(&a[3]));

    let vq_cfg = VqConfig::from_json_str(&config(&vq_path)?, &vq_path)?;
    let mut sd = load_state_dict(&vq_path)?;
    let mut vq = VqRunner::new(vq_cfg.clone(), &mut sd, true, Box::new(CpuBackend::new(false)))?;
    let codes = read_npy(&dir.join("codes.npy"))?;
    let (b, h, w) = (codes.shape[0], codes.shape[1], codes.shape[2]);
    let ids: Vec<u32> = codes.to_i64().context("codes")?.iter().map(|&c| c as u32).collect();
    let img = vq.decode(&ids, b, h, w)?;
    let f = vq_cfg.downsample();
    std::fs::write(dir.join("engine_decode.npy"), npy_bytes_f32(&[b, 3, f * h, f * w], &img))?;

    let images = read_npy(&dir.join("images.npy"))?;
    let (n, hh, ww) = (images.shape[0], images.shape[2], images.shape[3]);
    let enc = vq.encode(&images.to_f32().context("images")?, n, hh, ww)?;
    let enc: Vec<i64> = enc.iter().map(|&c| c as i64).collect();
    std::fs::write(dir.join("engine_encode.npy"), npy_bytes_i64(&[n, hh / f, ww / f], &enc))?;

    let gpt_cfg = GptConfig::from_json_str(&config(&gpt_path)?, &gpt_path)?;
    let labels: Vec<usize> = read_npy(&dir.join("labels.npy"))?.to_i64().context("labels")?.iter().map(|&l| l as usize).collect();
    let mut sd = load_state_dict(&gpt_path)?;
    let opts = GptOptions {
        dtype: Dtype::F32,
        batch: labels.len(),
        cfg_scale: 1.0,
        cfg_interval: -1,
        sampling: SamplingParams::default(),
    };
    let mut gpt = GptRunner::new(gpt_cfg.clone(), &mut sd, opts, Box::new(CpuBackend::new(false)))?;
    let toks: Vec<Vec<u32>> = ids.chunks(h * w).map(|c| c.to_vec()).collect();
    let logits = gpt.teacher_force(&Condition::Classes(labels.clone()), &toks)?;
    std::fs::write(
        dir.join("engine_logits.npy"),
        npy_bytes_f32(&[labels.len(), gpt_cfg.block_size, gpt_cfg.vocab_size], &logits),
    )?;
    println!("engine_check: decoded {b}, encoded {n}, teacher-forced {} sequences", labels.len());
    Ok(())
}
