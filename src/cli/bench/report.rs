//! The report: one `Row` per stage (or op) of a configuration, as a markdown table, CSV or JSON lines.
use super::*;

/// One line of the report: a stage (or, with --ops, one op of a stage) of one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub commit: String,
    pub device: String,
    pub threads: usize,
    pub dtype: String,
    pub model: String,
    pub vq: String,
    pub image_size: usize,
    pub batch: usize,
    pub cfg: f32,
    pub top_k: usize,
    /// prefill, decode_step, sampling, gpt_generate, vq_decode, total; with --ops `<stage>/<op>`.
    pub stage: String,
    /// What one time value covers: `batch` (one batch of images) or `step` (one decode step of the batch).
    pub per: &'static str,
    pub time_ms: f64,
    pub time_ms_std: f64,
    pub images_per_s: Option<f64>,
    pub images_per_s_std: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub tokens_per_s_std: Option<f64>,
    /// The stage's physical floor: max(bytes / bandwidth, FLOPs / GEMM peak).
    pub floor_ms: Option<f64>,
    /// floor / measured time.
    pub pct_of_ceiling: Option<f64>,
    /// Which ceiling sets the floor: mem, gemm-f32, gemm-bf16.
    pub bound: Option<&'static str>,
    pub gflop: f64,
    pub gbytes: f64,
    pub reps: usize,
}

fn pm(mean: f64, std: f64) -> String {
    let digits = |v: f64| {
        if v.abs() >= 100.0 {
            1
        } else if v.abs() >= 1.0 {
            2
        } else {
            4
        }
    };
    let d = digits(mean);
    format!("{mean:.d$} ± {std:.d$}")
}

fn opt_pm(m: Option<f64>, s: Option<f64>) -> String {
    match (m, s) {
        (Some(m), Some(s)) => pm(m, s),
        _ => String::new(),
    }
}

pub(super) fn markdown(rows: &[Row], ceilings: Option<&Ceilings>) -> String {
    let mut s = String::new();
    if let Some(c) = ceilings {
        s += &format!("Ceilings: {}\n\n", c.describe());
    }
    let head =
        "| commit | device | threads | dtype | model | vq | size | batch | cfg | top-k | stage | time (ms) | per | \
                images/s | tokens/s | floor (ms) | % of ceiling | bound |\n\
                |---|---|---:|---|---|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---|\n";
    let line = |r: &Row| {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.commit,
            r.device,
            r.threads,
            r.dtype,
            r.model,
            r.vq,
            r.image_size,
            r.batch,
            r.cfg,
            r.top_k,
            r.stage,
            pm(r.time_ms, r.time_ms_std),
            r.per,
            opt_pm(r.images_per_s, r.images_per_s_std),
            opt_pm(r.tokens_per_s, r.tokens_per_s_std),
            r.floor_ms.map_or(String::new(), |f| format!("{f:.3}")),
            r.pct_of_ceiling.map_or(String::new(), |p| format!("{p:.1}")),
            r.bound.unwrap_or(""),
        )
    };
    let (stages, ops): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| !r.stage.contains('/'));
    s += head;
    stages.iter().for_each(|r| s += &line(r));
    if !ops.is_empty() {
        s += "\nPer op (time per batch, summed over the stage's runs):\n\n";
        s += head;
        ops.iter().for_each(|r| s += &line(r));
    }
    s
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

pub(super) fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "commit,device,threads,dtype,model,vq,image_size,batch,cfg,top_k,stage,per,time_ms,time_ms_std,\
         images_per_s,images_per_s_std,tokens_per_s,tokens_per_s_std,floor_ms,pct_of_ceiling,bound,gflop,gbytes,reps\n",
    );
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
    for r in rows {
        let fields = [
            csv_field(&r.commit),
            csv_field(&r.device),
            r.threads.to_string(),
            r.dtype.clone(),
            csv_field(&r.model),
            csv_field(&r.vq),
            r.image_size.to_string(),
            r.batch.to_string(),
            r.cfg.to_string(),
            r.top_k.to_string(),
            csv_field(&r.stage),
            r.per.to_string(),
            format!("{}", r.time_ms),
            format!("{}", r.time_ms_std),
            o(r.images_per_s),
            o(r.images_per_s_std),
            o(r.tokens_per_s),
            o(r.tokens_per_s_std),
            o(r.floor_ms),
            o(r.pct_of_ceiling),
            r.bound.unwrap_or("").to_string(),
            format!("{}", r.gflop),
            format!("{}", r.gbytes),
            r.reps.to_string(),
        ];
        s += &fields.join(",");
        s.push('\n');
    }
    s
}
