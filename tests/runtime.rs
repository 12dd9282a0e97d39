//! Runtime invariants on real model graphs: the arena plan never overlaps live tensors, and a decode step allocates
//! nothing on the heap.
mod support;
use llamagen::backend::cpu::CpuBackend;
use llamagen::model::gpt::{bind_weights, kv_spec};
use llamagen::model::gpt_graph::{self, GptGraphSpec};
use llamagen::model::{Dtype, GptConfig};
use llamagen::runtime::{Graph, Plan, Role, Session, StepParams};
use llamagen::sample::sampler::SamplingParams;
use llamagen::weights;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use support::*;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

/// The allocation count is process-wide, so the tests here take turns: another test building a session meanwhile
/// (weights are laid out on rayon, whose injector queue allocates) would be counted as the decode step's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn setup(case: &str, dtype: Dtype) -> (GptConfig, Vec<Graph>, Session) {
    let cfg = GptConfig::from_json_file(&data(&format!("{case}.config.json"))).unwrap();
    let mut sd = weights::load_state_dict_prefixed(&data(&format!("{case}.safetensors")), "weights/").unwrap();
    let (w, ids, _) = bind_weights(&cfg, &mut sd, dtype).unwrap();
    let spec = GptGraphSpec {
        images: 3,
        cfg_scale: 4.0,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.9,
        },
        continuous: false,
    };
    let graphs = vec![
        gpt_graph::prefill(&cfg, &ids, &spec).unwrap(),
        gpt_graph::decode(&cfg, &ids, &spec).unwrap(),
    ];
    let kv = kv_spec(&cfg, spec.rows(), dtype);
    let session = Session::new(
        Box::new(CpuBackend::new(dtype == Dtype::Bf16)),
        w,
        Some(kv),
        graphs.clone(),
    )
    .unwrap();
    (cfg, graphs, session)
}

#[test]
fn plans_of_model_graphs_never_overlap_live_tensors() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for case in ["gpt_tiny_c2i", "gpt_tiny_t2i"] {
        let (_, graphs, _) = setup(case, Dtype::F32);
        for g in &graphs {
            let p = Plan::new(g);
            let n = g.nodes.len();
            let mut span = vec![(usize::MAX, 0usize); g.tensors.len()];
            for (k, node) in g.nodes.iter().enumerate() {
                let o = node.output.0 as usize;
                span[o].0 = span[o].0.min(k);
                span[o].1 = span[o].1.max(k);
                for i in &node.inputs {
                    span[i.0 as usize].1 = span[i.0 as usize].1.max(k);
                }
            }
            for (t, info) in g.tensors.iter().enumerate() {
                match info.role {
                    Role::Input => span[t] = (0, n),
                    Role::Output => span[t].1 = n,
                    Role::Intermediate => {}
                }
            }
            for a in 0..g.tensors.len() {
                for b in a + 1..g.tensors.len() {
                    let live = span[a].0 <= span[b].1 && span[b].0 <= span[a].1;
                    let (sa, ea) = (p.offsets[a], p.offsets[a] + 4 * g.tensors[a].numel());
                    let (sb, eb) = (p.offsets[b], p.offsets[b] + 4 * g.tensors[b].numel());
                    assert!(
                        !live || ea <= sb || eb <= sa,
                        "{case}: `{}` and `{}` overlap",
                        g.tensors[a].name,
                        g.tensors[b].name
                    );
                }
            }
            let total: usize = g.tensors.iter().map(|t| 4 * t.numel()).sum();
            eprintln!(
                "{case} {:?}: arena {} bytes for {} bytes of tensors",
                g.phase, p.size, total
            );
            assert!(p.size < total, "{case}: the plan reuses nothing");
        }
    }
}

#[test]
fn a_decode_step_allocates_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let (cfg, _, mut s) = setup("gpt_tiny_t2i", dtype);
        let (prefill, decode) = (llamagen::runtime::GraphId(0), llamagen::runtime::GraphId(1));
        let f = fixture("gpt_tiny_t2i.safetensors");
        let mut embs = f.f32("caption_embs").unwrap().1;
        embs.extend_from_slice(&embs[..cfg.cls_token_num * cfg.caption_dim].to_vec());
        let mut x = embs.clone();
        x.extend_from_slice(&embs);
        let mask1: Vec<f32> = f.i64("emb_masks").unwrap().1.iter().map(|&m| m as f32).collect();
        let mut mask = mask1.clone();
        mask.extend_from_slice(&mask1[..cfg.cls_token_num]);
        let m2: Vec<f32> = mask.iter().chain(&mask).copied().collect();
        s.write_f32(prefill, "caption", &x).unwrap();
        s.write_f32(prefill, "cond_mask", &m2).unwrap();
        s.write_i32(prefill, "image_index", &[0, 1, 2]).unwrap();
        let mut step = StepParams {
            pos: 0,
            step: 0,
            cfg_active: true,
            seed: 7,
        };
        s.run(prefill, &step).unwrap();
        // the prefill's results first: the decode graph's inputs share the arena
        s.copy(prefill, "tokens", decode, "ids").unwrap();
        s.write_f32(decode, "cond_mask", &m2).unwrap();
        s.write_i32(decode, "image_index", &[0, 1, 2]).unwrap();
        if dtype == Dtype::F32 {
            // ... and after them the prefill's results are refused, not read from what may now be decode inputs
            let e = s.read_i32(prefill, "tokens").unwrap_err().to_string();
            assert!(e.contains("`tokens` is stale"), "{e}");
            let e = s.read_f32(prefill, "cond_mask").unwrap_err().to_string();
            assert!(e.contains("`cond_mask` is stale"), "{e}");
            assert_eq!(
                s.read_f32(decode, "cond_mask").unwrap(),
                m2,
                "the decode graph's inputs stay readable"
            );
        }
        // The first decode step sizes the sampler's scratch; every later one must allocate nothing.
        step.pos = cfg.cls_token_num;
        step.step = 1;
        s.run(decode, &step).unwrap();
        s.copy(decode, "tokens", decode, "ids").unwrap();
        // Driven from inside the pool, as the engine's loop is: jobs go to the worker's own deque. (From outside,
        // rayon's global injector queue allocates a block per ~60 injected jobs; that is rayon's, not ours.)
        let (before, after) = rayon::scope(|_| {
            let before = ALLOCS.load(Ordering::SeqCst);
            for i in 1..cfg.block_size - 1 {
                step.pos = cfg.cls_token_num + i;
                step.step = i as u32 + 1;
                s.run(decode, &step).unwrap();
                s.copy(decode, "tokens", decode, "ids").unwrap();
            }
            (before, ALLOCS.load(Ordering::SeqCst))
        });
        assert_eq!(
            after - before,
            0,
            "{dtype:?}: {} heap allocations in {} decode steps",
            after - before,
            cfg.block_size - 2
        );
    }
}

/// A node is checked against its op when it is pushed (element counts and types, naming the node), and a weight
/// against every op that reads it when the session is built or a graph added (naming the weight).
#[test]
fn graphs_and_weights_are_checked_against_the_op_descriptors() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    use llamagen::ops::reference::RefBackend;
    use llamagen::ops::{rmsnorm::Rmsnorm, Layout, Weight, WeightId};
    use llamagen::runtime::{Phase, Scalar};
    let mut g = Graph::new(Phase::Decode);
    let x = g.input("x", &[2, 8], Scalar::F32);
    let ids = g.input("ids", &[16], Scalar::I32);
    let norm = |d| Rmsnorm {
        w: WeightId(0),
        rows: 2,
        d,
        eps: 1e-5,
    };
    let e = g.push(norm(6), &[x], "bad_norm", &[2, 6]).unwrap_err().to_string();
    assert!(e.contains("bad_norm") && e.contains("needs 12 F32"), "{e}");
    let e = g.push(norm(8), &[ids], "int_norm", &[2, 8]).unwrap_err().to_string();
    assert!(e.contains("int_norm") && e.contains("I32"), "{e}");
    let e = g.push(norm(8), &[x, x], "two", &[2, 8]).unwrap_err().to_string();
    assert!(e.contains("2 inputs, the op takes 1"), "{e}");
    let e = g.push(norm(8), &[x], "wide", &[2, 9]).unwrap_err().to_string();
    assert!(e.contains("output shape [2, 9]"), "{e}");
    // Geometries an op cannot have are refused before their sizes are computed.
    use llamagen::ops::{conv::Conv, groupnorm::Groupnorm};
    let conv = Conv {
        w: WeightId(0),
        b: WeightId(1),
        n: 1,
        c_in: 1,
        h: 2,
        w_in: 8,
        c_out: 1,
        k: 3,
        stride: 1,
        pad: [0; 4],
        residual: false,
    };
    let e = g.push(conv, &[x], "small_conv", &[1]).unwrap_err().to_string();
    assert!(e.contains("small_conv") && e.contains("kernel 3"), "{e}");
    let gn = Groupnorm {
        gamma: WeightId(0),
        beta: WeightId(0),
        n: 1,
        c: 16,
        hw: 1,
        groups: 3,
        eps: 1e-6,
        silu: false,
    };
    let e = g.push(gn, &[x], "gn", &[16]).unwrap_err().to_string();
    assert!(e.contains("16 channels in 3 groups"), "{e}");
    let y = g.push(norm(8), &[x], "y", &[2, 8]).unwrap();
    g.mark_output(y);
    let weight = |n: usize| Weight {
        name: "norm.weight".into(),
        shape: vec![n],
        data: vec![1.0; n],
        storage: Dtype::F32,
        layout: Layout::Plain,
    };
    let e = Session::new(Box::new(RefBackend::new(false)), vec![weight(7)], None, vec![g.clone()]);
    let e = e.err().expect("a 7-wide norm weight for an 8-wide rmsnorm").to_string();
    assert!(
        e.contains("norm.weight") && e.contains("[7]") && e.contains("needs [8]"),
        "{e}"
    );
    let mut s = Session::new(Box::new(RefBackend::new(false)), vec![weight(8)], None, vec![g.clone()]).unwrap();
    s.write_f32(llamagen::runtime::GraphId(0), "x", &[1.0; 16]).unwrap();
    s.run(llamagen::runtime::GraphId(0), &Default::default()).unwrap();
    let out = s.read_f32(llamagen::runtime::GraphId(0), "y").unwrap();
    // Ones, normalised: 1 / sqrt(1 + eps).
    let want = (1.0 / (1.0 + 1e-5f64).sqrt()) as f32;
    assert!(out.iter().all(|&v| (v - want).abs() < 1e-6), "{out:?}");
    // A graph added later reads the same weight table and is checked too.
    let mut g2 = Graph::new(Phase::Decode);
    let x2 = g2.input("x", &[1, 4], Scalar::F32);
    let r = Rmsnorm {
        w: WeightId(0),
        rows: 1,
        d: 4,
        eps: 1e-5,
    };
    g2.push(r, &[x2], "y", &[1, 4]).unwrap();
    let e = s.add_graph(g2).unwrap_err().to_string();
    assert!(e.contains("norm.weight") && e.contains("needs [4]"), "{e}");
}
