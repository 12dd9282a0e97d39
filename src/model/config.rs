//! Model configurations: the official `ModelArgs` (GPT) and `VQModel` (tokenizer) fields, JSON or presets.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    C2i,
    T2i,
}

/// The official `ModelArgs`, field for field (training-only fields are accepted and ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    pub model_type: ModelType,
    pub dim: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    #[serde(default = "default_multiple_of")]
    pub multiple_of: usize,
    #[serde(default)]
    pub ffn_dim_multiplier: Option<f64>,
    #[serde(default = "default_rope_base")]
    pub rope_base: f64,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_caption_dim")]
    pub caption_dim: usize,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_cls_token_num")]
    pub cls_token_num: usize,
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    #[serde(default = "default_class_dropout")]
    pub class_dropout_prob: f64,
}

fn default_multiple_of() -> usize {
    256
}
fn default_rope_base() -> f64 {
    10000.0
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_num_classes() -> usize {
    1000
}
fn default_caption_dim() -> usize {
    2048
}
fn default_vocab() -> usize {
    16384
}
fn default_cls_token_num() -> usize {
    1
}
fn default_block_size() -> usize {
    256
}
fn default_class_dropout() -> f64 {
    0.1
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Parses and validates a config; every error names the file.
fn parse_json<T: serde::de::DeserializeOwned>(
    s: &str,
    what: &Path,
    kind: &str,
    validate: fn(&T) -> Result<()>,
) -> Result<T> {
    let cfg: T = serde_json::from_str(s).map_err(|e| Error::format(what, format!("not a {kind} config: {e}")))?;
    validate(&cfg).map_err(|e| Error::format(what, e.to_string()))?;
    Ok(cfg)
}

/// (name, n_layer, n_head, dim) of the official `GPT_models` table.
const GPT_PRESETS: &[(&str, usize, usize, usize)] = &[
    ("GPT-B", 12, 12, 768),
    ("GPT-L", 24, 16, 1024),
    ("GPT-XL", 36, 20, 1280),
    ("GPT-XXL", 48, 24, 1536),
    ("GPT-XXXL", 48, 40, 2560),
    ("GPT-1B", 22, 32, 2048),
    ("GPT-3B", 24, 32, 3200),
    ("GPT-7B", 32, 32, 4096),
];

pub fn gpt_preset_names() -> Vec<&'static str> {
    GPT_PRESETS.iter().map(|p| p.0).collect()
}

impl GptConfig {
    /// A c2i preset at `image_size` pixels with a tokenizer downsampling by `downsample`.
    pub fn preset(name: &str, image_size: usize, downsample: usize) -> Result<Self> {
        let &(_, n_layer, n_head, dim) =
            GPT_PRESETS
                .iter()
                .find(|p| p.0.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "unknown GPT model `{name}` (known: {})",
                        gpt_preset_names().join(", ")
                    ))
                })?;
        if downsample == 0 || image_size % downsample != 0 {
            return Err(Error::Invalid(format!(
                "--image-size {image_size} is not divisible by the tokenizer's downsampling factor {downsample}"
            )));
        }
        let g = image_size / downsample;
        let cfg = GptConfig {
            model_type: ModelType::C2i,
            dim,
            n_layer,
            n_head,
            n_kv_head: None,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            rope_base: 10000.0,
            norm_eps: 1e-5,
            num_classes: 1000,
            caption_dim: 2048,
            vocab_size: 16384,
            cls_token_num: 1,
            block_size: g * g,
            class_dropout_prob: 0.1,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_json_str(s: &str, what: &Path) -> Result<Self> {
        parse_json(s, what, "GPT", Self::validate)
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        Self::from_json_str(&read_text(path)?, path)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.dim == 0 || self.n_layer == 0 || self.n_head == 0 {
            return bad("dim, n_layer and n_head must be positive".into());
        }
        if self.dim % self.n_head != 0 {
            return bad(format!("dim {} is not divisible by n_head {}", self.dim, self.n_head));
        }
        if let Some(kv) = self.n_kv_head {
            if kv != self.n_head {
                return bad(format!(
                    "n_kv_head {kv} != n_head {}: grouped-query attention is not used by any LlamaGen model",
                    self.n_head
                ));
            }
        }
        if self.head_dim() > 256 {
            return bad(format!("head dim {} is larger than the supported 256", self.head_dim()));
        }
        if self.head_dim() % 4 != 0 {
            return bad(format!(
                "head dim {} must be a multiple of 4 for 2D RoPE",
                self.head_dim()
            ));
        }
        let g = self.grid();
        if g * g != self.block_size || g == 0 {
            return bad(format!("block_size {} is not a square grid", self.block_size));
        }
        if self.vocab_size == 0 || self.cls_token_num == 0 {
            return bad("vocab_size and cls_token_num must be positive".into());
        }
        if self.model_type == ModelType::C2i && self.cls_token_num != 1 {
            return bad(format!("c2i models use cls_token_num 1, got {}", self.cls_token_num));
        }
        if !(self.norm_eps > 0.0) || !(self.rope_base > 0.0) {
            return bad("norm_eps and rope_base must be positive".into());
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_head
    }

    /// The official FeedForward width: 2/3 of 4·dim, optionally scaled, rounded up to `multiple_of`.
    pub fn ffn_hidden(&self) -> usize {
        let mut hidden = 4 * self.dim;
        hidden = 2 * hidden / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            hidden = (m * hidden as f64) as usize;
        }
        hidden.div_ceil(self.multiple_of) * self.multiple_of
    }

    /// Side of the token grid (`block_size` = g²).
    pub fn grid(&self) -> usize {
        (self.block_size as f64).sqrt().round() as usize
    }

    /// KV-cache length: the reference rounds T + N up to a multiple of 8.
    pub fn cache_len(&self) -> usize {
        (self.cls_token_num + self.block_size).div_ceil(8) * 8
    }

    /// Every tensor the inference path reads, with its official name and shape.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f) = (self.dim, self.ffn_hidden());
        let mut v: Vec<(String, Vec<usize>)> = Vec::new();
        match self.model_type {
            ModelType::C2i => v.push((
                "cls_embedding.embedding_table.weight".into(),
                vec![self.num_classes + 1, d],
            )),
            ModelType::T2i => {
                v.push((
                    "cls_embedding.uncond_embedding".into(),
                    vec![self.cls_token_num, self.caption_dim],
                ));
                v.push(("cls_embedding.cap_proj.fc1.weight".into(), vec![d, self.caption_dim]));
                v.push(("cls_embedding.cap_proj.fc2.weight".into(), vec![d, d]));
            }
        }
        v.push(("tok_embeddings.weight".into(), vec![self.vocab_size, d]));
        for i in 0..self.n_layer {
            let p = format!("layers.{i}");
            v.push((format!("{p}.attention.wqkv.weight"), vec![3 * d, d]));
            v.push((format!("{p}.attention.wo.weight"), vec![d, d]));
            v.push((format!("{p}.feed_forward.w1.weight"), vec![f, d]));
            v.push((format!("{p}.feed_forward.w3.weight"), vec![f, d]));
            v.push((format!("{p}.feed_forward.w2.weight"), vec![d, f]));
            v.push((format!("{p}.attention_norm.weight"), vec![d]));
            v.push((format!("{p}.ffn_norm.weight"), vec![d]));
        }
        v.push(("norm.weight".into(), vec![d]));
        v.push(("output.weight".into(), vec![self.vocab_size, d]));
        v
    }

    pub fn param_count(&self) -> usize {
        self.weight_shapes()
            .iter()
            .filter(|(n, _)| n != "cls_embedding.uncond_embedding")
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// The official VQ config plus the Encoder/Decoder constructor arguments `ch` and `num_res_blocks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VqConfig {
    #[serde(default = "default_vocab")]
    pub codebook_size: usize,
    #[serde(default = "default_embed_dim")]
    pub codebook_embed_dim: usize,
    #[serde(default = "default_true")]
    pub codebook_l2_norm: bool,
    #[serde(default = "default_ch_mult")]
    pub encoder_ch_mult: Vec<usize>,
    #[serde(default = "default_ch_mult")]
    pub decoder_ch_mult: Vec<usize>,
    #[serde(default = "default_z_channels")]
    pub z_channels: usize,
    #[serde(default = "default_ch")]
    pub ch: usize,
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
}

fn default_embed_dim() -> usize {
    8
}
fn default_true() -> bool {
    true
}
fn default_ch_mult() -> Vec<usize> {
    vec![1, 1, 2, 2, 4]
}
fn default_z_channels() -> usize {
    256
}
fn default_ch() -> usize {
    128
}
fn default_num_res_blocks() -> usize {
    2
}

impl VqConfig {
    pub fn preset(name: &str) -> Result<Self> {
        let mult = match name.to_ascii_uppercase().as_str() {
            "VQ-16" => vec![1, 1, 2, 2, 4],
            "VQ-8" => vec![1, 2, 2, 4],
            _ => return Err(Error::Config(format!("unknown VQ model `{name}` (known: VQ-16, VQ-8)"))),
        };
        Ok(VqConfig {
            codebook_size: 16384,
            codebook_embed_dim: 8,
            codebook_l2_norm: true,
            encoder_ch_mult: mult.clone(),
            decoder_ch_mult: mult,
            z_channels: 256,
            ch: 128,
            num_res_blocks: 2,
        })
    }

    pub fn from_json_str(s: &str, what: &Path) -> Result<Self> {
        parse_json(s, what, "VQ", Self::validate)
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        Self::from_json_str(&read_text(path)?, path)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.decoder_ch_mult.is_empty() || self.encoder_ch_mult.is_empty() {
            return bad("ch_mult must not be empty".into());
        }
        if self.codebook_size == 0 || self.codebook_embed_dim == 0 || self.z_channels == 0 {
            return bad("codebook_size, codebook_embed_dim and z_channels must be positive".into());
        }
        if self.ch == 0 || self.ch % 32 != 0 {
            return bad(format!(
                "ch {} must be a positive multiple of 32 (GroupNorm uses 32 groups)",
                self.ch
            ));
        }
        if self
            .decoder_ch_mult
            .iter()
            .chain(&self.encoder_ch_mult)
            .any(|&m| m == 0)
        {
            return bad("ch_mult entries must be positive".into());
        }
        if self.encoder_ch_mult.len() != self.decoder_ch_mult.len() {
            return bad("encoder_ch_mult and decoder_ch_mult must have the same length".into());
        }
        Ok(())
    }

    /// Pixels per token side: one factor 2 per resampling stage.
    pub fn downsample(&self) -> usize {
        1 << (self.decoder_ch_mult.len() - 1)
    }
}
