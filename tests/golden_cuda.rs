//! The CUDA backend against the official fixtures and the CPU backend, end to end through the model runners:
//! - `emu_*`: the kernels on the CPU emulator (`--device cuda-emu`), always run;
//! - `gpu_*`: the same checks plus model-size cases on a real GPU. They are `#[ignore]`d, so a machine without a
//!   GPU reports them as ignored (skipped), never as passed; `scripts/gpu-check.sh` runs them with `--ignored`, and
//!   there a missing GPU is a failure.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod support;
use llamagen::model::gpt::Condition;
use llamagen::model::Dtype;
use support::golden::*;
use support::*;

use support::devices::{emu_backend as emu, gpu_backend as gpu};

/// The demo model (dim 128, 8 layers, vocab 512): teacher-forced logits of the backend against the CPU backend's
/// portable family in the same dtype, on a few images with guidance.
///
/// The portable family's arithmetic is the same on every machine (plain loops, no FMA contraction, x86-64-v3 code
/// everywhere), and so is the emulator's (g++ -march=x86-64-v3), so the f32 and bf16 figures printed here are the
/// same on every machine and `bound` holds on all of them. In f32 the two differ only in summation order (3.5e-7).
/// In bf16 every product is exact in f32 on both sides (bf16 × bf16 fits a float's significand), so again only
/// the summation order differs, but wherever that moves a value across a bf16 rounding boundary the two runs round
/// differently and carry that difference on: 3.8e-3, half the bf16 model's own distance from f32 (7.9e-3), which
/// `BF16_DEMO_BOUND` bounds for every path.
fn demo_logits_match_cpu(make: MakeBackend, bf16: bool, images: usize, bound: f64) {
    let (cfg, load) = demo_gpt();
    let dtype = if bf16 { Dtype::Bf16 } else { Dtype::F32 };
    let cond = Condition::Classes((0..images).map(|i| (3 * i + 1) % cfg.num_classes).collect());
    let toks = demo_tokens(&cfg, images);
    let mut want = runner(&cfg, load(), images, 2.0, 0, dtype);
    let mut got = runner_on(&cfg, load(), images, 2.0, 0, dtype, make(bf16));
    let (w, g) = (
        want.teacher_force(&cond, &toks).unwrap(),
        got.teacher_force(&cond, &toks).unwrap(),
    );
    assert_finite(&g, "logits");
    let err = rel_l2(&g, &w);
    eprintln!("demo model, {images} images, bf16 {bf16}: teacher-forced logits vs CPU rel L2 {err:.2e}");
    assert!(err <= bound, "demo logits rel L2 {err:e} > {bound:e}");
    if bf16 {
        let exact = runner(&cfg, load(), images, 2.0, 0, Dtype::F32)
            .teacher_force(&cond, &toks)
            .unwrap();
        let err = rel_l2(&g, &exact);
        eprintln!("demo model, {images} images: bf16 logits vs f32 rel L2 {err:.2e}");
        assert!(
            err <= BF16_DEMO_BOUND,
            "demo bf16 logits vs f32 rel L2 {err:e} > {BF16_DEMO_BOUND:e}"
        );
    }
}

/// Sampled generation (top-k 0, cfg 2: the demo defaults) draws the same tokens as the CPU: same Philox streams,
/// same filtered distributions up to f32 summation order.
fn demo_tokens_match_cpu(make: MakeBackend, images: usize) {
    let (cfg, load) = demo_gpt();
    let cond = Condition::Classes((0..images).map(|i| i % cfg.num_classes).collect());
    let index: Vec<u64> = (0..images as u64).map(|i| 5 + 3 * i).collect();
    let mut want = runner(&cfg, load(), images, 2.0, 0, Dtype::F32);
    let mut got = runner_on(&cfg, load(), images, 2.0, 0, Dtype::F32, make(false));
    let w = want.generate(&cond, &index, 42, |_| {}).unwrap();
    let g = got.generate(&cond, &index, 42, |_| {}).unwrap();
    let same = w
        .iter()
        .flatten()
        .zip(g.iter().flatten())
        .filter(|(a, b)| a == b)
        .count();
    let total = images * cfg.block_size;
    eprintln!("demo model sampled tokens equal to the CPU's: {same} of {total}");
    assert_eq!(
        w, g,
        "sampled tokens differ from the CPU backend ({same} of {total} equal)"
    );
}

// ---- on the emulator -------------------------------------------------------------------------------------------

#[test]
fn emu_tiny_c2i_greedy() {
    greedy("gpt_tiny_c2i", "greedy_cfg", 4.0, &emu);
    greedy("gpt_tiny_c2i", "greedy_nocfg", 1.0, &emu);
}

#[test]
fn emu_tiny_t2i_greedy() {
    greedy("gpt_tiny_t2i", "greedy_cfg", 7.5, &emu);
    greedy("gpt_tiny_t2i", "greedy_nocfg", 1.0, &emu);
}

#[test]
fn emu_tiny_teacher_forced_logits() {
    teacher_forced("gpt_tiny_c2i", &emu);
    teacher_forced("gpt_tiny_t2i", &emu);
}

#[test]
fn emu_vq_tiny_decode_encode() {
    let mut r = vq_runner("vq_tiny", &emu);
    check_decode("vq_tiny", &mut r, 0);
    check_decode("vq_tiny", &mut r, 1);
    check_encode("vq_tiny", &mut r);
}

#[test]
fn emu_demo_matches_cpu() {
    demo_logits_match_cpu(&emu, false, 2, 1e-5);
    demo_logits_match_cpu(&emu, true, 2, 5e-3);
    demo_tokens_match_cpu(&emu, 2);
}

// ---- on a GPU (scripts/gpu-check.sh) ----------------------------------------------------------------------------

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_tiny_golden() {
    greedy("gpt_tiny_c2i", "greedy_cfg", 4.0, &gpu);
    greedy("gpt_tiny_c2i", "greedy_nocfg", 1.0, &gpu);
    greedy("gpt_tiny_t2i", "greedy_cfg", 7.5, &gpu);
    greedy("gpt_tiny_t2i", "greedy_nocfg", 1.0, &gpu);
    teacher_forced("gpt_tiny_c2i", &gpu);
    teacher_forced("gpt_tiny_t2i", &gpu);
    let mut r = vq_runner("vq_tiny", &gpu);
    check_decode("vq_tiny", &mut r, 0);
    check_decode("vq_tiny", &mut r, 1);
    check_encode("vq_tiny", &mut r);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_vq16_decode_encode() {
    let mut r = vq_runner("vq16", &gpu);
    check_decode("vq16", &mut r, 0);
    check_encode("vq16", &mut r);
    check_decode("vq16", &mut r, 1);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_gpt_b_teacher_forced() {
    gpt_b_teacher_forced(&gpu);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_demo_matches_cpu() {
    demo_logits_match_cpu(&gpu, false, 8, 1e-5);
    demo_logits_match_cpu(&gpu, true, 8, 5e-3);
    demo_tokens_match_cpu(&gpu, 8);
}
