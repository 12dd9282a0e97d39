//! Output files. Each finished image leaves a PNG and a small JSON record in `DIR/.parts/` (both written
//! atomically: temporary name + rename); the record is the resume journal. The aggregates — `manifest.jsonl`,
//! `tokens.npy`, `grid.png`, the npz — are rebuilt from the records, so an interrupted run loses nothing and a
//! rerun of the same command skips what is done.
use crate::io::{self, npy, npz, png};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Settings shared by every image of a run, repeated in each manifest line so a line stands alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub cfg_scale: f32,
    pub cfg_interval: i64,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub dtype: String,
    /// Pixels per side (absent with `--no-images`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_size: Option<usize>,
}

/// One manifest line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// PNG file name inside the output directory (absent with `--no-images`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file: Option<String>,
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub class: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub class_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub caption: Option<usize>,
    pub seed: u64,
    #[serde(flatten)]
    pub settings: Settings,
}

/// The resume journal entry: the manifest line plus the tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Part {
    #[serde(flatten)]
    pub record: Record,
    pub tokens: Vec<u32>,
}

pub fn image_name(index: usize) -> String {
    format!("{index:06}.png")
}

fn part_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(".parts").join(format!("{index:06}.json"))
}

/// Creates the output directory and proves it writable before any work starts.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join(".parts")).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(".parts").join(".write-probe");
    io::write_atomic(&probe, b"ok")?;
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
}

/// A finished image is one whose record exists (it is written after the PNG).
pub fn load_part(dir: &Path, index: usize) -> Result<Option<Part>> {
    let p = part_path(dir, index);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::format(&p, format!("corrupt record: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Writes one image's PNG (when given) and then its record.
pub fn write_image(dir: &Path, part: &Part, rgb: Option<(&[u8], usize, usize)>) -> Result<()> {
    if let (Some((px, h, w)), Some(file)) = (rgb, &part.record.file) {
        png::write_png_rgb(&dir.join(file), px, h, w)?;
    }
    let json = serde_json::to_vec(part).map_err(|e| Error::Invalid(format!("record {}: {e}", part.record.index)))?;
    io::write_atomic(&part_path(dir, part.record.index), &json)
}

/// What to rebuild after a run.
pub struct Aggregates<'a> {
    pub suffix: String,
    pub save_tokens: bool,
    pub grid: bool,
    pub npz: Option<&'a Path>,
    pub grid_side: usize,
    /// Grid columns; None = a square-ish grid. Class-cycling runs use one column per condition.
    pub grid_cols: Option<usize>,
}

/// Inserts `suffix` before the extension: `manifest.jsonl` -> `manifest.shard-0-of-4.jsonl`.
pub fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    if suffix.is_empty() {
        return p.to_path_buf();
    }
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(ext) => format!("{stem}{suffix}.{}", ext.to_string_lossy()),
        None => format!("{stem}{suffix}"),
    };
    p.with_file_name(name)
}

/// Grids show at most this many images (a 50 000-image FID run still gets a readable preview).
pub const GRID_MAX: usize = 100;

/// Rebuilds the manifest (index order) and the requested aggregates from the records of `indices`.
pub fn finalize(dir: &Path, indices: &[usize], agg: &Aggregates) -> Result<()> {
    let mut parts = Vec::with_capacity(indices.len());
    for &i in indices {
        parts.push(
            load_part(dir, i)?
                .ok_or_else(|| Error::Invalid(format!("image {i} has no record in {}", dir.display())))?,
        );
    }
    let mut manifest = Vec::new();
    for p in &parts {
        serde_json::to_writer(&mut manifest, &p.record).map_err(|e| Error::Invalid(e.to_string()))?;
        manifest.push(b'\n');
    }
    io::write_atomic(&with_suffix(&dir.join("manifest.jsonl"), &agg.suffix), &manifest)?;
    if agg.save_tokens {
        let g = agg.grid_side;
        let toks: Vec<i64> = parts.iter().flat_map(|p| p.tokens.iter().map(|&t| t as i64)).collect();
        let bytes = npy::npy_bytes_i64(&[parts.len(), g, g], &toks);
        io::write_atomic(&with_suffix(&dir.join("tokens.npy"), &agg.suffix), &bytes)?;
    }
    let files: Vec<PathBuf> = parts
        .iter()
        .filter_map(|p| p.record.file.as_ref().map(|f| dir.join(f)))
        .collect();
    if agg.grid && !files.is_empty() {
        let imgs = files
            .iter()
            .take(GRID_MAX)
            .map(|f| png::read_rgb(f))
            .collect::<Result<Vec<_>>>()?;
        let (h, w) = (imgs[0].1, imgs[0].2);
        let refs: Vec<&[u8]> = imgs.iter().map(|i| i.0.as_slice()).collect();
        let cols = agg
            .grid_cols
            .unwrap_or_else(|| (refs.len() as f64).sqrt().ceil() as usize);
        let (px, gh, gw) = png::grid(&refs, h, w, cols);
        png::write_png_rgb(&with_suffix(&dir.join("grid.png"), &agg.suffix), &px, gh, gw)?;
    }
    if let Some(npz_path) = agg.npz {
        write_npz_from_pngs(&with_suffix(npz_path, &agg.suffix), &files)?;
    }
    Ok(())
}

/// ADM-evaluator layout: one uint8 array `arr_0` of shape (N, H, W, 3).
fn write_npz_from_pngs(path: &Path, files: &[PathBuf]) -> Result<()> {
    let mut all = Vec::new();
    let (mut h, mut w) = (0, 0);
    for f in files {
        let (px, ih, iw) = png::read_rgb(f)?;
        if all.is_empty() {
            (h, w) = (ih, iw);
        } else if (ih, iw) != (h, w) {
            return Err(Error::format(
                f,
                format!("{ih}×{iw} differs from the first image's {h}×{w}"),
            ));
        }
        all.extend_from_slice(&px);
    }
    npz::write_npz(path, &[("arr_0", npy::npy_bytes_u8(&[files.len(), h, w, 3], &all))])
}

fn read_manifest(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| Error::format(path, format!("line {}: {e}", n + 1))))
        .collect()
}

/// Merges shard outputs into the unsharded result: manifests by index, and optionally the npz (and tokens) files
/// given in the same order as the manifests.
pub fn merge(
    manifests: &[PathBuf],
    npzs: &[PathBuf],
    tokens: &[PathBuf],
    out_manifest: &Path,
    out_npz: Option<&Path>,
    out_tokens: Option<&Path>,
) -> Result<usize> {
    let per_shard: Vec<Vec<Record>> = manifests.iter().map(|m| read_manifest(m)).collect::<Result<_>>()?;
    let mut order: Vec<(usize, usize, usize)> = Vec::new(); // (index, shard, row)
    for (s, recs) in per_shard.iter().enumerate() {
        order.extend(recs.iter().enumerate().map(|(r, rec)| (rec.index, s, r)));
    }
    order.sort_unstable();
    if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::Invalid(format!(
            "image {} appears in more than one manifest",
            w[0].0
        )));
    }
    let mut text = Vec::new();
    for &(_, s, r) in &order {
        serde_json::to_writer(&mut text, &per_shard[s][r]).map_err(|e| Error::Invalid(e.to_string()))?;
        text.push(b'\n');
    }
    let load = |inputs: &[PathBuf], npz_member: bool| -> Result<Vec<npy::NpyArray>> {
        if inputs.len() != manifests.len() {
            return Err(Error::Invalid(format!(
                "{} input files for {} manifests: give one per manifest, in the same order",
                inputs.len(),
                manifests.len()
            )));
        }
        inputs
            .iter()
            .zip(&per_shard)
            .map(|(p, recs)| {
                let arr = if npz_member {
                    let members = npz::read_npz(p)?;
                    npz::npz_member(&members, "arr_0")
                        .cloned()
                        .ok_or_else(|| Error::format(p, "no arr_0 array"))?
                } else {
                    npy::read_npy(p)?
                };
                if arr.shape.first() != Some(&recs.len()) {
                    return Err(Error::format(
                        p,
                        format!("shape {:?}, but its manifest lists {} images", arr.shape, recs.len()),
                    ));
                }
                Ok(arr)
            })
            .collect()
    };
    let (mut npz_out, mut tokens_out) = (None, None);
    if let Some(out) = out_npz {
        let arrs = load(npzs, true)?;
        let rows: Vec<Vec<u8>> = arrs
            .iter()
            .zip(npzs)
            .map(|(a, p)| match &a.data {
                npy::NpyData::U8(v) => Ok(v.clone()),
                _ => Err(Error::format(p, "arr_0 is not uint8")),
            })
            .collect::<Result<_>>()?;
        let (shape, data) = interleave(&order, &arrs, &rows);
        npz_out = Some((out, npy::npy_bytes_u8(&shape, &data)));
    }
    if let Some(out) = out_tokens {
        let arrs = load(tokens, false)?;
        let rows: Vec<Vec<i64>> = arrs
            .iter()
            .zip(tokens)
            .map(|(a, p)| a.to_i64().ok_or_else(|| Error::format(p, "tokens are not integers")))
            .collect::<Result<_>>()?;
        let (shape, data) = interleave(&order, &arrs, &rows);
        tokens_out = Some((out, npy::npy_bytes_i64(&shape, &data)));
    }
    // Every input is read and checked before anything is written: a failed merge leaves no partial result.
    if let Some((out, bytes)) = npz_out {
        npz::write_npz(out, &[("arr_0", bytes)])?;
    }
    if let Some((out, bytes)) = tokens_out {
        io::write_atomic(out, &bytes)?;
    }
    io::write_atomic(out_manifest, &text)?;
    Ok(order.len())
}

/// Copies rows of the shards' arrays into global index order; returns the merged shape and data.
fn interleave<T: Clone>(
    order: &[(usize, usize, usize)],
    arrs: &[npy::NpyArray],
    data: &[Vec<T>],
) -> (Vec<usize>, Vec<T>) {
    let mut shape = arrs.first().map(|a| a.shape.clone()).unwrap_or_default();
    let row = shape.iter().skip(1).product::<usize>();
    let mut out = Vec::with_capacity(order.len() * row);
    for &(_, s, r) in order {
        out.extend_from_slice(&data[s][r * row..(r + 1) * row]);
    }
    if let Some(n) = shape.first_mut() {
        *n = order.len();
    }
    (shape, out)
}
