//! `llamagen decode | encode | reconstruct`: the VQ tokenizer on its own.
use super::args::{self, VqArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use llamagen::io::{self, npy, png};
use llamagen::pipeline::outputs::image_name;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub vq: VqArgs,
    #[command(flatten)]
    pub device: args::DeviceArgs,
    /// Tokens .npy: B×h×w, or B×(h·w) with a square grid (integer dtype).
    #[arg(long)]
    pub tokens: PathBuf,
    /// Output directory for 000000.png, 000001.png, ...
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Images per VQ batch.
    #[arg(long, default_value_t = 4, allow_negative_numbers = true)]
    pub batch_size: usize,
}

#[derive(Args, Debug)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub vq: VqArgs,
    #[command(flatten)]
    pub device: args::DeviceArgs,
    /// Input images (PNG or JPEG), centre-cropped ADM-style to --image-size.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Square size the images are cropped and resized to (a multiple of the tokenizer's downsampling).
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    /// Output tokens .npy (int64, B×h×w).
    #[arg(long, default_value = "tokens.npy")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub vq: VqArgs,
    #[command(flatten)]
    pub device: args::DeviceArgs,
    /// Input images (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Square size the images are cropped and resized to.
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    /// Output directory for the reconstructions (000000.png, ...).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
}

fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let probe = dir.join(".write-probe");
    io::write_atomic(&probe, b"ok").with_context(|| format!("output directory {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// Reads a token file into (images, h, w, ids).
fn read_tokens(path: &Path) -> Result<(usize, usize, usize, Vec<u32>)> {
    let arr = npy::read_npy(path)?;
    let ids = arr
        .to_i64()
        .with_context(|| format!("{}: tokens must be an integer array", path.display()))?;
    let (b, h, w) = match arr.shape.as_slice() {
        [b, h, w] => (*b, *h, *w),
        [b, n] => {
            let g = (*n as f64).sqrt().round() as usize;
            if g * g != *n {
                bail!(
                    "{}: {n} tokens per image is not a square grid; give B×h×w",
                    path.display()
                );
            }
            (*b, g, g)
        }
        s => bail!("{}: shape {s:?}; expected B×h×w or B×(h·w)", path.display()),
    };
    let ids = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            u32::try_from(t).map_err(|_| {
                anyhow::anyhow!(
                    "{}: token {t} at flat index {i} is negative or too large",
                    path.display()
                )
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok((b, h, w, ids))
}

pub fn decode(a: DecodeArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (b, h, w, ids) = read_tokens(&a.tokens)?;
    let mut vq = args::vq_runner(&a.vq, false, a.device)?;
    if let Some((i, t)) = ids
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vq.cfg.codebook_size)
    {
        bail!(
            "{}: token {t} at flat index {i} is outside the codebook (0..{})",
            a.tokens.display(),
            vq.cfg.codebook_size
        );
    }
    ensure_dir(&a.out)?;
    let f = vq.cfg.downsample();
    let per = h * w;
    for start in (0..b).step_by(a.batch_size.max(1)) {
        let n = a.batch_size.max(1).min(b - start);
        let img = vq.decode(&ids[start * per..(start + n) * per], n, h, w)?;
        let px = png::to_u8_hwc(&img, n, h * f, w * f);
        let sz = h * f * w * f * 3;
        for k in 0..n {
            png::write_png_rgb(
                &a.out.join(image_name(start + k)),
                &px[k * sz..(k + 1) * sz],
                h * f,
                w * f,
            )?;
        }
    }
    tracing::info!("decoded {b} images to {}", a.out.display());
    Ok(())
}

fn load_images(paths: &[PathBuf], size: usize, f: usize) -> Result<Vec<f32>> {
    if size == 0 || size % f != 0 {
        bail!("--image-size {size} is not a positive multiple of the tokenizer's downsampling {f}");
    }
    let mut x = Vec::with_capacity(paths.len() * 3 * size * size);
    for p in paths {
        let (rgb, h, w) = png::read_rgb(p)?;
        x.extend(png::preprocess_for_encoder(&rgb, h, w, size));
    }
    Ok(x)
}

pub fn encode(a: EncodeArgs) -> Result<()> {
    let mut vq = args::vq_runner(&a.vq, true, a.device)?;
    let f = vq.cfg.downsample();
    let x = load_images(&a.images, a.image_size, f)?;
    let n = a.images.len();
    let codes = vq.encode(&x, n, a.image_size, a.image_size)?;
    let g = a.image_size / f;
    let vals: Vec<i64> = codes.iter().map(|&c| c as i64).collect();
    io::write_atomic(&a.out, &npy::npy_bytes_i64(&[n, g, g], &vals))?;
    tracing::info!("encoded {n} images to {}", a.out.display());
    Ok(())
}

pub fn reconstruct(a: ReconstructArgs) -> Result<()> {
    let mut vq = args::vq_runner(&a.vq, true, a.device)?;
    let f = vq.cfg.downsample();
    let x = load_images(&a.images, a.image_size, f)?;
    ensure_dir(&a.out)?;
    let s = a.image_size;
    let g = s / f;
    for (k, img) in x.chunks(3 * s * s).enumerate() {
        let codes = vq.encode(img, 1, s, s)?;
        let rec = vq.decode(&codes, 1, g, g)?;
        png::write_png_rgb(&a.out.join(image_name(k)), &png::to_u8_hwc(&rec, 1, s, s), s, s)?;
    }
    tracing::info!("reconstructed {} images into {}", a.images.len(), a.out.display());
    Ok(())
}
