//! `generate`: batches of images through the GPT and the VQ decoder, with resume and shards.
use super::outputs::{self, Aggregates, Part, Record, Settings};
use super::select::{ImagePlan, Shard};
use crate::io::png;
use crate::model::gpt::{Condition, GptRunner};
use crate::model::vq::VqRunner;
use crate::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

pub struct GenerateJob {
    pub out: PathBuf,
    pub plan: ImagePlan,
    pub shard: Shard,
    pub batch: usize,
    pub seed: u64,
    pub settings: Settings,
    pub save_tokens: bool,
    pub npz: Option<PathBuf>,
    pub class_names: Option<Vec<String>>,
    /// t2i: caption embeddings `[C, T, caption_dim]` and masks `[C, T]`, cycled through by image index.
    pub captions: Option<(Vec<f32>, Vec<f32>)>,
    pub progress: bool,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub generated: usize,
    pub skipped: usize,
    pub seconds: f64,
}

fn condition(job: &GenerateJob, gpt: &GptRunner, chunk: &[usize]) -> Condition {
    match &job.captions {
        Some((embs, mask)) => {
            let t = gpt.cfg.cls_token_num;
            let row = embs.len() / mask.len() * t;
            let (mut e, mut m) = (Vec::new(), Vec::new());
            for &i in chunk {
                let c = job.plan.condition_of(i);
                e.extend_from_slice(&embs[c * row..(c + 1) * row]);
                m.extend_from_slice(&mask[c * t..(c + 1) * t]);
            }
            Condition::Captions { embs: e, mask: m }
        }
        None => Condition::Classes(chunk.iter().map(|&i| job.plan.condition_of(i)).collect()),
    }
}

/// Generates every image of the shard that has no record yet, then rebuilds the aggregates. With `vq` = None
/// (`--no-images`) only tokens and the manifest are written.
pub fn generate(job: &GenerateJob, gpt: &mut GptRunner, mut vq: Option<&mut VqRunner>) -> Result<Summary> {
    outputs::prepare_dir(&job.out)?;
    let indices: Vec<usize> = job.plan.indices(job.shard).collect();
    let mut pending = Vec::new();
    for &i in &indices {
        if outputs::load_part(&job.out, i)?.is_none() {
            pending.push(i);
        }
    }
    let n_tok = gpt.cfg.block_size;
    let g = gpt.cfg.grid();
    let bar = if job.progress {
        ProgressBar::new((pending.len() * n_tok) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {msg} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut done = 0usize;
    for chunk in pending.chunks(job.batch.max(1)) {
        let cond = condition(job, gpt, chunk);
        let index: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
        let tokens = gpt.generate(&cond, &index, job.seed, |_| bar.inc(chunk.len() as u64))?;
        let pixels = match vq.as_deref_mut() {
            Some(vq) => {
                let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
                let img = vq.decode(&flat, chunk.len(), g, g)?;
                let side = g * vq.cfg.downsample();
                Some((png::to_u8_hwc(&img, chunk.len(), side, side), side))
            }
            None => None,
        };
        for (k, (&i, toks)) in chunk.iter().zip(tokens).enumerate() {
            let c = job.plan.condition_of(i);
            let is_t2i = job.captions.is_some();
            let record = Record {
                file: pixels.as_ref().map(|_| outputs::image_name(i)),
                index: i,
                class: (!is_t2i).then_some(c),
                class_name: if is_t2i {
                    None
                } else {
                    job.class_names.as_ref().and_then(|n| n.get(c).cloned())
                },
                caption: is_t2i.then_some(c),
                seed: job.seed,
                settings: job.settings.clone(),
            };
            let rgb = pixels.as_ref().map(|(px, side)| {
                let sz = side * side * 3;
                (&px[k * sz..(k + 1) * sz], *side, *side)
            });
            outputs::write_image(&job.out, &Part { record, tokens: toks }, rgb)?;
        }
        done += chunk.len();
        bar.set_message(format!(
            "{done}/{} images, {:.2} img/s",
            pending.len(),
            done as f64 / start.elapsed().as_secs_f64()
        ));
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let agg = Aggregates {
        suffix: job.shard.suffix(),
        save_tokens: job.save_tokens,
        grid: vq.is_some(),
        npz: job.npz.as_deref(),
        grid_side: g,
        grid_cols: job.plan.period().filter(|&p| p <= 16 && !job.shard.is_sharded()),
    };
    outputs::finalize(&job.out, &indices, &agg)?;
    Ok(Summary {
        generated: pending.len(),
        skipped: indices.len() - pending.len(),
        seconds,
    })
}
