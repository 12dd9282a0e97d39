//! `GET /metrics`: the scheduler's counters in the Prometheus text exposition format (version 0.0.4).
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the step-time histogram's buckets: 1 ms (a demo-model step) to 2.5 s (a large batch
/// of a large model on a CPU).
const STEP_BUCKETS: [f64; 12] = [
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    f64::INFINITY,
];

/// The parts of a scheduler step, timed separately.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    Prefill,
    Decode,
    Sample,
    VqDecode,
    Png,
}

/// Their names in the exposition, in `Stage` order.
const STAGES: [&str; 5] = ["prefill", "decode", "sample", "vq_decode", "png"];

#[derive(Default)]
pub struct Metrics {
    queue: AtomicU64,
    running: AtomicU64,
    images: AtomicU64,
    tokens: AtomicU64,
    abandoned: AtomicU64,
    /// Answers by HTTP status of `POST /v1/images/generations`.
    responses: Mutex<Vec<(u16, u64)>>,
    /// Seconds spent per scheduler stage, in `STAGES` order.
    stages: Mutex<[f64; STAGES.len()]>,
    /// (bucket counts, sum, count) of step times.
    steps: Mutex<([u64; STEP_BUCKETS.len()], f64, u64)>,
}

impl Metrics {
    pub fn set_queue(&self, requests: usize) {
        self.queue.store(requests as u64, Relaxed);
    }
    pub fn set_running(&self, rows: usize) {
        self.running.store(rows as u64, Relaxed);
    }
    pub fn add_images(&self, n: u64) {
        self.images.fetch_add(n, Relaxed);
    }
    pub fn add_tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Relaxed);
    }
    pub fn add_abandoned(&self, n: u64) {
        self.abandoned.fetch_add(n, Relaxed);
    }
    pub fn images(&self) -> u64 {
        self.images.load(Relaxed)
    }
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Relaxed)
    }

    pub fn add_response(&self, status: u16) {
        let mut r = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        match r.iter_mut().find(|e| e.0 == status) {
            Some(e) => e.1 += 1,
            None => {
                r.push((status, 1));
                r.sort_unstable();
            }
        }
    }

    pub fn add_stage(&self, stage: Stage, seconds: f64) {
        self.stages.lock().unwrap_or_else(|e| e.into_inner())[stage as usize] += seconds;
    }

    pub fn observe_step(&self, seconds: f64) {
        let mut h = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = STEP_BUCKETS.iter().position(|&ub| seconds <= ub) {
            h.0[b] += 1;
        }
        h.1 += seconds;
        h.2 += 1;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut scalar = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        scalar(
            "llamagen_queue_requests",
            "gauge",
            "Requests waiting to start.",
            self.queue.load(Relaxed),
        );
        scalar(
            "llamagen_running_rows",
            "gauge",
            "Rows in the last decode step (two per guided image).",
            self.running.load(Relaxed),
        );
        scalar(
            "llamagen_images_generated_total",
            "counter",
            "Images generated.",
            self.images.load(Relaxed),
        );
        scalar(
            "llamagen_tokens_generated_total",
            "counter",
            "Image tokens sampled.",
            self.tokens.load(Relaxed),
        );
        scalar(
            "llamagen_requests_abandoned_total",
            "counter",
            "Requests dropped because the client went away.",
            self.abandoned.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP llamagen_responses_total Answers to image requests, by HTTP status.\n# TYPE llamagen_responses_total counter"
        );
        for (code, n) in self.responses.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(o, "llamagen_responses_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP llamagen_stage_seconds_total Scheduler time per stage.\n# TYPE llamagen_stage_seconds_total counter"
        );
        let stages = *self.stages.lock().unwrap_or_else(|e| e.into_inner());
        for (name, secs) in STAGES.iter().zip(stages) {
            let _ = writeln!(o, "llamagen_stage_seconds_total{{stage=\"{name}\"}} {secs}");
        }
        let (counts, sum, count) = *self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            o,
            "# HELP llamagen_step_seconds Time of one scheduler step (prefill of newcomers, decode, sampling, VQ of finished images).\n# TYPE llamagen_step_seconds histogram"
        );
        let mut cum = 0;
        for (ub, c) in STEP_BUCKETS.iter().zip(counts) {
            cum += c;
            let le = if ub.is_infinite() {
                "+Inf".to_string()
            } else {
                format!("{ub}")
            };
            let _ = writeln!(o, "llamagen_step_seconds_bucket{{le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(
            o,
            "llamagen_step_seconds_sum {sum}\nllamagen_step_seconds_count {count}"
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_every_step() {
        let m = Metrics::default();
        for s in [0.0005, 0.003, 0.003, 7.0] {
            m.observe_step(s);
        }
        m.add_response(200);
        m.add_response(503);
        m.add_response(200);
        let t = m.render();
        assert!(t.contains("llamagen_step_seconds_bucket{le=\"0.001\"} 1\n"), "{t}");
        assert!(t.contains("llamagen_step_seconds_bucket{le=\"0.005\"} 3\n"), "{t}");
        assert!(t.contains("llamagen_step_seconds_bucket{le=\"2.5\"} 3\n"), "{t}");
        assert!(t.contains("llamagen_step_seconds_bucket{le=\"+Inf\"} 4\n"), "{t}");
        assert!(t.contains("llamagen_step_seconds_count 4\n"), "{t}");
        assert!(t.contains("llamagen_responses_total{code=\"200\"} 2\n"), "{t}");
        assert!(t.contains("llamagen_responses_total{code=\"503\"} 1\n"), "{t}");
    }
}
