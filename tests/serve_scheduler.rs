//! Continuous batching gives every image exactly the tokens of the batch CLI (`GptRunner::generate` with the same
//! seed, index and settings), whatever shared its batch: requests with different settings (guided and unguided,
//! top-k, top-p, temperature, cfg interval) arrive while others decode, take whatever KV slots are free (the slot
//! count is chosen so images must wait and join mid-run), on the demo model (f32 and bf16) and the tiny c2i and t2i
//! golden models, under every CPU kernel family.
mod support;

use llamagen::model::gpt::{Condition, GptOptions, GptRunner};
use llamagen::model::gpt_continuous::{ContinuousGpt, RowCondition};
use llamagen::model::vq::VqRunner;
use llamagen::model::{Dtype, GptConfig, VqConfig};
use llamagen::sample::sampler::SamplingParams;
use llamagen::serve::metrics::Metrics;
use llamagen::serve::scheduler::{ImageSpec, Job, Queue, Scheduler, Settings};
use llamagen::weights::StateDict;
use std::sync::Arc;
use support::golden::{self, MakeBackend};

struct Case {
    settings: Settings,
    /// First image index and the condition of each image.
    first: u64,
    conds: Vec<RowCondition>,
}

fn settings(cfg_scale: f32, cfg_interval: i64, top_k: usize, top_p: f32, temperature: f32, seed: u64) -> Settings {
    Settings {
        cfg_scale,
        cfg_interval,
        sampling: SamplingParams {
            temperature,
            top_k,
            top_p,
        },
        seed,
    }
}

/// The reference: each request alone through the batch runner.
fn reference(
    cfg: &GptConfig,
    sd: &dyn Fn() -> StateDict,
    dtype: Dtype,
    case: &Case,
    make: MakeBackend,
) -> Vec<Vec<u32>> {
    let s = &case.settings;
    let n = case.conds.len();
    let opts = GptOptions {
        dtype,
        batch: n,
        cfg_scale: s.cfg_scale,
        cfg_interval: s.cfg_interval,
        sampling: s.sampling,
    };
    let mut r = GptRunner::new(cfg.clone(), &mut sd(), opts, make(dtype == Dtype::Bf16)).unwrap();
    let cond = match &case.conds[0] {
        RowCondition::Class(_) => Condition::Classes(
            case.conds
                .iter()
                .map(|c| match c {
                    RowCondition::Class(k) => *k,
                    _ => unreachable!(),
                })
                .collect(),
        ),
        RowCondition::Caption { .. } => {
            let (mut embs, mut mask) = (Vec::new(), Vec::new());
            for c in &case.conds {
                let RowCondition::Caption { embs: Some(e), mask: m } = c else {
                    unreachable!()
                };
                embs.extend_from_slice(e);
                mask.extend_from_slice(m);
            }
            Condition::Captions { embs, mask }
        }
    };
    let index: Vec<u64> = (case.first..case.first + n as u64).collect();
    r.generate(&cond, &index, s.seed, |_| {}).unwrap()
}

/// Serves the cases, each submitted once the previous one has decoded a few steps, with `slots` KV rows; checks
/// every image's tokens.
#[allow(clippy::too_many_arguments)]
fn check(
    what: &str,
    cfg: &GptConfig,
    sd: &dyn Fn() -> StateDict,
    vq: VqConfig,
    dtype: Dtype,
    slots: usize,
    cases: &[Case],
    make: MakeBackend,
) {
    let want: Vec<Vec<Vec<u32>>> = cases.iter().map(|c| reference(cfg, sd, dtype, c, make)).collect();
    let gpt = ContinuousGpt::new(cfg.clone(), &mut sd(), dtype, slots, make(dtype == Dtype::Bf16)).unwrap();
    // The VQ stage is not what is tested here (only the tokens are compared): always the CPU's.
    let vq = VqRunner::synthetic(vq, false, golden::cpu(false)).unwrap();
    // Finished images decode in groups of up to 3 (the VQ decoder must not mix images up).
    let vq_batch = 3;
    let queue = Queue::new(1024);
    let metrics = Arc::new(Metrics::default());
    let sched = Scheduler::new(gpt, vq, vq_batch, Arc::clone(&queue), Arc::clone(&metrics));
    let worker = std::thread::spawn(move || sched.run());
    let mut replies = Vec::new();
    for c in cases {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let images = c
            .conds
            .iter()
            .enumerate()
            .map(|(j, cond)| ImageSpec {
                index: c.first + j as u64,
                cond: cond.clone(),
            })
            .collect();
        let job = Job {
            settings: c.settings.clone(),
            images,
            reply: tx,
        };
        let before = metrics.tokens();
        assert!(queue.submit(job).is_ok());
        replies.push(rx);
        // Let a few decode steps pass, so the next request joins a batch that is mid-run.
        let t = std::time::Instant::now();
        while metrics.tokens() < before + 3 * c.conds.len() as u64 && t.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
    for (k, (rx, want)) in replies.into_iter().zip(&want).enumerate() {
        let got = rx.blocking_recv().expect("an answer").expect("images");
        assert_eq!(got.len(), want.len(), "{what} request {k}");
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.index, cases[k].first + j as u64);
            assert_eq!(
                &g.tokens, w,
                "{what}: request {k} image {j} differs from the batch runner's"
            );
            assert!(
                g.png.starts_with(b"\x89PNG"),
                "{what}: request {k} image {j} is not a PNG"
            );
        }
    }
    queue.close();
    worker.join().unwrap();
    let total: usize = cases.iter().map(|c| c.conds.len()).sum();
    assert_eq!(metrics.images(), total as u64);
    assert_eq!(
        metrics.tokens(),
        (total * cfg.block_size) as u64,
        "{what}: every sampled token counted once"
    );
}

fn demo_vq() -> VqConfig {
    VqConfig::from_json_file(&support::root().join("models/demo/vq.config.json")).unwrap()
}

fn class_cases() -> Vec<Case> {
    let classes = |c: &[usize]| c.iter().map(|&k| RowCondition::Class(k)).collect::<Vec<_>>();
    // Small requests first, so the later ones join while earlier ones decode (FIFO admission would otherwise keep
    // a large first request's images in lockstep with everything queued behind it).
    vec![
        Case {
            settings: settings(1.5, -1, 1, 1.0, 0.0, 5),
            first: 0,
            conds: classes(&[4]),
        },
        Case {
            settings: settings(1.0, -1, 0, 1.0, 0.9, 11),
            first: 4,
            conds: classes(&[7, 7]),
        },
        Case {
            settings: settings(3.0, 10, 20, 0.9, 1.0, 2),
            first: 1,
            conds: classes(&[1, 5, 9]),
        },
        Case {
            settings: settings(2.0, -1, 0, 1.0, 1.0, 11),
            first: 0,
            conds: classes(&[3, 3, 3, 8, 0]),
        },
    ]
}

fn demo(make: MakeBackend, dtype: Dtype) {
    let (cfg, sd) = golden::demo_gpt();
    // 7 slots: three guided images at once; later requests join mid-run or wait for slots.
    check("demo", &cfg, &sd, demo_vq(), dtype, 7, &class_cases(), make);
}

fn demo_f32(make: MakeBackend) {
    demo(make, Dtype::F32)
}

fn demo_bf16(make: MakeBackend) {
    demo(make, Dtype::Bf16)
}

fn tiny_c2i(make: MakeBackend) {
    let cfg = golden::config("gpt_tiny_c2i");
    check(
        "tiny c2i",
        &cfg,
        &|| golden::tiny_weights("gpt_tiny_c2i"),
        demo_vq(),
        Dtype::F32,
        6,
        &class_cases(),
        make,
    );
}

fn tiny_t2i(make: MakeBackend) {
    let case = "gpt_tiny_t2i";
    let cfg = golden::config(case);
    let Condition::Captions { embs, mask } = golden::condition(case, &cfg) else {
        unreachable!()
    };
    let (t, cd) = (cfg.cls_token_num, cfg.caption_dim);
    let b = mask.len() / t;
    let cap = |i: usize| RowCondition::Caption {
        embs: Some(embs[i * t * cd..(i + 1) * t * cd].to_vec()),
        mask: mask[i * t..(i + 1) * t].to_vec(),
    };
    let cases = vec![
        Case {
            settings: settings(4.0, -1, 0, 1.0, 1.0, 3),
            first: 0,
            conds: (0..b).map(cap).collect(),
        },
        Case {
            settings: settings(1.0, -1, 5, 1.0, 1.0, 3),
            first: 2,
            conds: vec![cap(b - 1)],
        },
        Case {
            settings: settings(7.5, 4, 0, 0.8, 1.0, 9),
            first: 0,
            conds: vec![cap(0), cap(b - 1)],
        },
    ];
    check(
        "tiny t2i",
        &cfg,
        &|| golden::tiny_weights(case),
        demo_vq(),
        Dtype::F32,
        5,
        &cases,
        make,
    );
}

cpu_family_tests!(demo_f32, demo_bf16, tiny_c2i, tiny_t2i);

/// The CUDA kernels' per-row rope and attention (`--device cuda-emu`, and a real GPU in scripts/gpu-check.sh).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod cuda {
    use crate::support::devices::{emu_backend as emu, gpu_backend as gpu};

    #[test]
    fn emu_tiny_c2i() {
        super::tiny_c2i(&emu)
    }

    #[test]
    fn emu_tiny_t2i() {
        super::tiny_t2i(&emu)
    }

    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh"]
    fn gpu_serving_matches_the_batch_runner() {
        super::tiny_c2i(&gpu);
        super::tiny_t2i(&gpu);
        super::demo_f32(&gpu);
        super::demo_bf16(&gpu);
    }
}
