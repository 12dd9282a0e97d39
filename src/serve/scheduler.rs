//! The scheduler: one thread owns the model and runs the batch. Requests wait in a bounded queue; at every decode
//! step boundary images of started requests take free KV slots (one, or two with guidance), are prefilled, and from
//! then on decode with the rest. A finished image leaves at once (its slots are free for the next step), is decoded
//! by the VQ model and encoded as PNG; a request is answered when its last image is done. A request whose client
//! went away is dropped at the next step boundary, its slots freed.
//!
//! Sampling is per image with its request's settings, from the image's own RNG stream (seed, index, step), through
//! `sampler::draw`, the function the batch CLI's sampling op calls: so a served image is the CLI's image.
use super::metrics::{Metrics, Stage};
use crate::io::png;
use crate::model::gpt::guided_at;
use crate::model::gpt_continuous::{ContinuousGpt, NewRow, RowCondition, StepRow};
use crate::model::vq::VqRunner;
use crate::sample::sampler::{self, SamplerScratch, SamplingParams};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// What a request asks for, validated by the API.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub cfg_scale: f32,
    /// Guidance off for decode iterations i > this (-1: always on), as `generate --cfg-interval`.
    pub cfg_interval: i64,
    pub sampling: SamplingParams,
    pub seed: u64,
}

impl Settings {
    /// KV rows per image: two (conditional and unconditional) when guidance is on (scale > 1 strictly).
    fn rows_per_image(&self) -> usize {
        if self.cfg_scale > 1.0 {
            2
        } else {
            1
        }
    }
}

/// One image of a request: its index (the RNG stream with the seed) and its condition.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub index: u64,
    pub cond: RowCondition,
}

#[derive(Clone, Debug)]
pub struct ServedImage {
    pub index: u64,
    pub png: Vec<u8>,
    pub tokens: Vec<u32>,
}

pub type Reply = Result<Vec<ServedImage>, String>;

pub struct Job {
    pub settings: Settings,
    pub images: Vec<ImageSpec>,
    pub reply: oneshot::Sender<Reply>,
}

/// Why `Queue::submit` refused a job.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `--max-queue` requests are waiting already.
    Full,
    /// The server is shutting down.
    Closed,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The bounded queue between the HTTP handlers and the scheduler thread.
pub struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    max_jobs: usize,
}

impl Queue {
    /// A queue of at most `max_jobs` requests waiting to start.
    pub fn new(max_jobs: usize) -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            max_jobs,
        })
    }

    pub fn submit(&self, job: Job) -> Result<(), (Refused, Job)> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.closed {
            return Err((Refused::Closed, job));
        }
        if s.jobs.len() >= self.max_jobs {
            return Err((Refused::Full, job));
        }
        s.jobs.push_back(job);
        self.wake.notify_one();
        Ok(())
    }

    /// Stops admitting: the scheduler finishes what is queued and running, then returns.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.wake.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed
    }

    /// Requests waiting to start.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).jobs.len()
    }
}

/// A request being worked on: its images' results so far.
struct Active {
    settings: Settings,
    reply: Option<oneshot::Sender<Reply>>,
    results: Vec<Option<ServedImage>>,
    /// Images of this request not yet admitted (front first).
    pending: VecDeque<(usize, ImageSpec)>,
}

/// An image in the batch.
struct Running {
    job: usize,
    /// Position of the image within its request.
    k: usize,
    index: u64,
    /// KV slots of the conditional row and, with guidance, the unconditional row.
    slots: (usize, Option<usize>),
    tokens: Vec<u32>,
}

impl Running {
    fn kv_slots(&self) -> impl Iterator<Item = usize> {
        std::iter::once(self.slots.0).chain(self.slots.1)
    }
}

/// A finished image waits at most this many steps for others to share its VQ decode.
const VQ_MAX_WAIT_STEPS: u64 = 16;

pub struct Scheduler {
    gpt: ContinuousGpt,
    vq: VqRunner,
    /// Finished images decode together once this many are ready (or the oldest has waited
    /// `VQ_MAX_WAIT_STEPS`, or nothing else runs): the VQ decoder costs ~3× less per image in batches of 8+.
    vq_batch: usize,
    /// Images whose tokens are complete, with the step they finished at, waiting for the VQ decoder.
    finished: Vec<(Running, u64)>,
    steps: u64,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    free: Vec<usize>,
    active: Vec<Option<Active>>,
    running: Vec<Running>,
    scratch: SamplerScratch,
    mix: Vec<f32>,
}

impl Scheduler {
    pub fn new(gpt: ContinuousGpt, vq: VqRunner, vq_batch: usize, queue: Arc<Queue>, metrics: Arc<Metrics>) -> Self {
        let v = gpt.cfg.vocab_size;
        Scheduler {
            vq_batch: vq_batch.max(1),
            finished: Vec::new(),
            steps: 0,
            free: (0..gpt.slots()).rev().collect(),
            gpt,
            vq,
            queue,
            metrics,
            active: Vec::new(),
            running: Vec::new(),
            scratch: SamplerScratch::new(v),
            mix: vec![0.0; v],
        }
    }

    /// Runs until the queue is closed and every accepted request is answered.
    pub fn run(mut self) {
        loop {
            if !self.take_jobs() {
                return;
            }
            self.drop_abandoned();
            let t = Instant::now();
            let was_running = self.running.len();
            if let Err(e) = self.step() {
                self.fail_all(&format!("generation failed: {e}"));
                continue;
            }
            if was_running + self.running.len() > 0 {
                self.metrics.observe_step(t.elapsed().as_secs_f64());
            }
        }
    }

    /// Moves queued jobs into the active set; blocks while there is nothing to do. Returns false when closed and
    /// drained.
    fn take_jobs(&mut self) -> bool {
        let queue = Arc::clone(&self.queue);
        let mut s = queue.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Take new jobs only while the batch could admit them (after the images of started jobs that still
            // wait): the queue bound then holds for real.
            let waiting_rows: usize = self
                .active
                .iter()
                .flatten()
                .map(|a| a.pending.len() * a.settings.rows_per_image())
                .sum();
            let mut room = self.free.len().saturating_sub(waiting_rows);
            while room > 0 {
                let Some(job) = s.jobs.pop_front() else { break };
                room = room.saturating_sub(job.images.len() * job.settings.rows_per_image());
                self.active.push(Some(Active {
                    results: vec![None; job.images.len()],
                    pending: job.images.into_iter().enumerate().collect(),
                    settings: job.settings,
                    reply: Some(job.reply),
                }));
            }
            self.metrics.set_queue(s.jobs.len());
            let has_work = !self.running.is_empty()
                || !self.finished.is_empty()
                || self.active.iter().flatten().any(|a| !a.pending.is_empty());
            if has_work {
                return true;
            }
            if s.closed && s.jobs.is_empty() {
                return false;
            }
            self.metrics.set_running(0);
            s = queue.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Requests whose client disconnected: their rows leave the batch now.
    fn drop_abandoned(&mut self) {
        for j in 0..self.active.len() {
            let gone = matches!(&self.active[j], Some(a) if a.reply.as_ref().is_none_or(|r| r.is_closed()));
            if gone {
                self.metrics.add_abandoned(1);
                self.finish_job(j, None);
            }
        }
    }

    /// Frees the slots of every running image of job `j` and forgets it, answering `reply` if given.
    fn finish_job(&mut self, j: usize, reply: Option<Reply>) {
        self.finished.retain(|(r, _)| r.job != j);
        let free = &mut self.free;
        self.running.retain(|r| {
            if r.job == j {
                free.extend(r.kv_slots());
            }
            r.job != j
        });
        if let Some(mut a) = self.active[j].take() {
            if let (Some(tx), Some(r)) = (a.reply.take(), reply) {
                let _ = tx.send(r);
            }
        }
        // No running image refers to a finished job, so trailing finished entries can go.
        while matches!(self.active.last(), Some(None)) {
            self.active.pop();
        }
    }

    fn fail_all(&mut self, msg: &str) {
        tracing::error!("{msg}");
        for j in 0..self.active.len() {
            if self.active[j].is_some() {
                self.finish_job(j, Some(Err(msg.to_string())));
            }
        }
    }

    /// One step boundary: admit, prefill the newcomers, decode everyone, sample, retire finished images.
    fn step(&mut self) -> crate::Result<()> {
        let nc = self.gpt.cfg.num_classes;
        let mut new_rows = Vec::new();
        let mut admitted = Vec::new();
        'admit: for j in 0..self.active.len() {
            let Some(a) = self.active[j].as_mut() else { continue };
            let rows = a.settings.rows_per_image();
            while let Some((k, img)) = a.pending.front() {
                if self.free.len() < rows {
                    break 'admit;
                }
                let c = self.free.pop().expect("checked");
                let u = (rows == 2).then(|| self.free.pop().expect("checked"));
                new_rows.push(NewRow {
                    slot: c,
                    cond: img.cond.clone(),
                });
                if let Some(u) = u {
                    let cond = match &img.cond {
                        RowCondition::Class(_) => RowCondition::Class(nc),
                        RowCondition::Caption { mask, .. } => RowCondition::Caption {
                            embs: None,
                            mask: mask.clone(),
                        },
                    };
                    new_rows.push(NewRow { slot: u, cond });
                }
                admitted.push(Running {
                    job: j,
                    k: *k,
                    index: img.index,
                    slots: (c, u),
                    tokens: Vec::new(),
                });
                a.pending.pop_front();
            }
        }
        if !new_rows.is_empty() {
            let t = Instant::now();
            let logits = self.gpt.prefill(&new_rows)?;
            self.metrics.add_stage(Stage::Prefill, t.elapsed().as_secs_f64());
            let mut r = 0;
            for img in &mut admitted {
                let guided = img.slots.1.map(|_| r + 1);
                let tok = self.draw(&logits, r, guided, img.job, img.index, 0);
                img.tokens.push(tok);
                r += 1 + usize::from(guided.is_some());
            }
            self.metrics.add_tokens(admitted.len() as u64);
            self.running.append(&mut admitted);
        }
        let n = self.gpt.cfg.block_size;
        let t = self.gpt.cfg.cls_token_num;
        let mut rows = Vec::new();
        let mut who = Vec::new();
        for (i, img) in self.running.iter().enumerate() {
            if img.tokens.len() >= n {
                continue;
            }
            let tok = *img.tokens.last().expect("admitted images hold token 0");
            let pos = t + img.tokens.len() - 1;
            let c = rows.len();
            rows.push(StepRow {
                slot: img.slots.0,
                token: tok,
                pos,
            });
            if let Some(u) = img.slots.1 {
                rows.push(StepRow {
                    slot: u,
                    token: tok,
                    pos,
                });
            }
            who.push((i, c));
        }
        self.metrics.set_running(rows.len());
        if !rows.is_empty() {
            let t = Instant::now();
            let logits = self.gpt.decode(&rows)?;
            let t1 = Instant::now();
            self.metrics.add_stage(Stage::Decode, (t1 - t).as_secs_f64());
            self.metrics.add_tokens(who.len() as u64);
            for (i, c) in who {
                let (job, index, step, guided) = {
                    let img = &self.running[i];
                    (img.job, img.index, img.tokens.len() as u32, img.slots.1.map(|_| c + 1))
                };
                let s = &self.active[job].as_ref().expect("running job is active").settings;
                let on = guided_at(s.cfg_interval, step);
                let tok = self.draw(&logits, c, guided.filter(|_| on), job, index, step);
                self.running[i].tokens.push(tok);
            }
            self.metrics.add_stage(Stage::Sample, t1.elapsed().as_secs_f64());
        }
        self.retire()
    }

    /// Samples one image's token from its conditional logits row `c` (and unconditional row `u`).
    fn draw(&mut self, logits: &[f32], c: usize, u: Option<usize>, job: usize, index: u64, step: u32) -> u32 {
        let v = self.gpt.cfg.vocab_size;
        let s = &self.active[job].as_ref().expect("running job is active").settings;
        sampler::draw(
            &logits[c * v..(c + 1) * v],
            u.map(|u| &logits[u * v..(u + 1) * v]),
            s.cfg_scale,
            &s.sampling,
            s.seed,
            index,
            step,
            &mut self.mix,
            &mut self.scratch,
        )
    }

    /// Images with all their tokens leave the batch (their slots are free for the next step); the VQ decoder runs
    /// over the finished images in batches; then PNG, and finished requests are answered.
    fn retire(&mut self) -> crate::Result<()> {
        let n = self.gpt.cfg.block_size;
        self.steps += 1;
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].tokens.len() >= n {
                let r = self.running.swap_remove(i);
                self.free.extend(r.kv_slots());
                self.finished.push((r, self.steps));
            } else {
                i += 1;
            }
        }
        let oldest = self.finished.iter().map(|f| f.1).min();
        let flush = self.finished.len() >= self.vq_batch
            || (!self.finished.is_empty() && self.running.is_empty())
            || oldest.is_some_and(|o| self.steps - o >= VQ_MAX_WAIT_STEPS);
        if !flush {
            return Ok(());
        }
        let mut done: Vec<Running> = self.finished.drain(..).map(|f| f.0).collect();
        done.sort_by_key(|r| (r.job, r.k));
        let g = self.gpt.cfg.grid();
        let side = g * self.vq.cfg.downsample();
        let flat: Vec<u32> = done.iter().flat_map(|r| r.tokens.iter().copied()).collect();
        let t = Instant::now();
        let img = self.vq.decode(&flat, done.len(), g, g)?;
        let px = png::to_u8_hwc(&img, done.len(), side, side);
        let t1 = Instant::now();
        self.metrics.add_stage(Stage::VqDecode, (t1 - t).as_secs_f64());
        let sz = side * side * 3;
        for (m, r) in done.into_iter().enumerate() {
            let png = png::encode_png_rgb(&px[m * sz..(m + 1) * sz], side, side).map_err(crate::Error::Invalid)?;
            self.metrics.add_images(1);
            let finished = match self.active.get_mut(r.job).and_then(Option::as_mut) {
                Some(a) => {
                    a.results[r.k] = Some(ServedImage {
                        index: r.index,
                        png,
                        tokens: r.tokens,
                    });
                    a.pending.is_empty() && a.results.iter().all(Option::is_some)
                }
                None => false,
            };
            if finished {
                let a = self.active[r.job].as_mut().expect("checked");
                let images = a.results.iter_mut().map(|x| x.take().expect("checked")).collect();
                self.finish_job(r.job, Some(Ok(images)));
            }
        }
        self.metrics.add_stage(Stage::Png, t1.elapsed().as_secs_f64());
        Ok(())
    }
}
