//! kernels/rope.cu on the CUDA emulator against `backend::cpu::rope::rope`: the rotated q and the whole KV cache
//! buffer (pre-filled with a pattern, so a write to a wrong slot or a missing write shows), for the prefill, decode
//! steps at the first, a middle and the last position, and the full recompute, f32 and bf16, head_dim 32/64/100.

use half::bf16;
use llamagen::backend::cpu::kv_cache::KvData;
use llamagen::backend::cpu::{self, KernelFamily, KvCache};
use llamagen::backend::cuda::emu::EmuDevice;
use llamagen::backend::cuda::kernels::StepState;
use llamagen::backend::cuda::launch::DevPtr;
use llamagen::backend::cuda::rope;
use llamagen::ops::{Dtype, KvSpec, Placement};

use crate::support::devices::*;
use crate::support::emu_check::*;

/// Both dtypes are bit-exact against the CPU: the kernel forms the same two products and one sum per output, without
/// FMA contraction (__fmul_rn/__fadd_rn on the GPU; the emulator keeps them opaque to g++'s contraction), from the
/// same table values; bf16 rounds once at the store like `round = true`; v is a bit copy. So the bound is 0.
const NMSE_BOUND: f64 = 0.0;

fn step(pos: usize) -> StepState {
    StepState {
        pos: pos as i32,
        step: 0,
        cfg_active: 1,
        seed_lo: 0,
        seed_hi: 0,
    }
}

/// `p` advanced by `k` elements.
fn offset<T>(p: DevPtr<'_, T>, k: usize) -> DevPtr<'_, T> {
    // SAFETY: inside the same live buffer (k ≤ its length); the kernel reads T there.
    unsafe { DevPtr::from_raw(p.addr() + (k * size_of::<T>()) as u64, p.len() - k) }
}

struct Case {
    cls: usize,
    grid: usize,
    heads: usize,
    hd: usize,
    kv_batch: usize,
    batch: usize,
    len: usize,
    pos: usize,
    layer: usize,
    /// Continuous batching: (cache row, first position) per sequence, instead of (b, pos).
    rows: Option<Vec<i32>>,
}

fn cache_f32(c: &KvCache) -> Vec<f32> {
    match &c.data {
        KvData::F32(v) => v.to_vec(),
        KvData::Bf16(v) => from_bf16(v),
    }
}

/// Runs one case; returns (NMSE of q, NMSE of the cache).
/// `misalign`: qkv starts one element into its buffer, so the kernel must take its scalar path.
fn run_case<D: TestDevice>(
    dev: &D,
    rng: &mut Rng,
    c: &Case,
    bf: bool,
    block: Option<u32>,
    misalign: bool,
) -> (f64, f64) {
    let seq = c.cls + c.grid * c.grid;
    let table = llamagen::model::rope_table::rope_table(c.cls, c.grid, c.hd, 10000.0);
    let spec = KvSpec {
        layers: 2,
        batch: c.kv_batch,
        heads: c.heads,
        seq,
        head_dim: c.hd,
        storage: if bf { Dtype::Bf16 } else { Dtype::F32 },
    };
    let d = c.heads * c.hd;
    let mut qkv: Vec<f32> = (0..c.batch * c.len * 3 * d).map(|_| rng.uniform(-2.0, 2.0)).collect();
    // The previous contents of the cache: a pattern the kernel must leave alone outside the written slots.
    let mut pattern: Vec<f32> = (0..spec.elems()).map(|_| rng.uniform(-5.0, 5.0)).collect();
    if bf {
        round_all(&mut qkv);
        round_all(&mut pattern);
    }
    // The CPU reference, once per kernel family this CPU has: every family must give the same bits.
    let cpu = |family: KernelFamily| {
        let mut cache = KvCache::new(spec);
        cache.data = if bf {
            KvData::Bf16(llamagen::backend::cpu::Buf::vec(to_bf16(&pattern)))
        } else {
            KvData::F32(llamagen::backend::cpu::Buf::vec(pattern.clone()))
        };
        let mut q = vec![0f32; c.batch * c.len * d];
        let place = match &c.rows {
            Some(t) => Placement::PerRow(t),
            None => Placement::Uniform { pos: c.pos },
        };
        cpu::rope::rope(
            &qkv, c.batch, c.len, c.heads, c.hd, place, &table, &mut cache, c.layer, bf, family, &mut q,
        );
        (q, cache)
    };
    let (want_q, cache) = cpu(KernelFamily::Portable);
    for family in KernelFamily::all_supported() {
        let (q, other) = cpu(family);
        let same = q.iter().zip(&want_q).all(|(a, b)| a.to_bits() == b.to_bits())
            && cache_f32(&other)
                .iter()
                .zip(cache_f32(&cache))
                .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "CPU family {family}: rope differs from the portable family's bits"
        );
    }
    let want_cache = cache_f32(&cache);

    let tb = dev.upload(&table, "table");
    let sb = dev.upload(&[step(c.pos)], "step");
    let rb = c.rows.as_ref().map(|t| dev.upload(t, "rows"));
    let padded: Vec<f32> = [0.0].iter().take(usize::from(misalign)).chain(&qkv).copied().collect();
    let (got_q, got_cache) = if bf {
        let xb = dev.upload(&to_bf16(&padded), "qkv");
        let mut qb = dev.alloc::<bf16>(want_q.len(), "q");
        let mut cb = dev.upload(&to_bf16(&pattern), "cache");
        rope::rope(
            dev,
            offset(xb.ptr(), usize::from(misalign)),
            tb.ptr(),
            sb.ptr(),
            rb.as_ref().map(|r| r.ptr()),
            qb.ptr_mut(),
            cb.ptr_mut(),
            c.batch,
            c.len,
            &spec,
            c.layer,
            block,
        )
        .unwrap();
        (from_bf16(&qb.to_vec()), from_bf16(&cb.to_vec()))
    } else {
        let xb = dev.upload(&padded, "qkv");
        let mut qb = dev.alloc::<f32>(want_q.len(), "q");
        let mut cb = dev.upload(&pattern, "cache");
        rope::rope(
            dev,
            offset(xb.ptr(), usize::from(misalign)),
            tb.ptr(),
            sb.ptr(),
            rb.as_ref().map(|r| r.ptr()),
            qb.ptr_mut(),
            cb.ptr_mut(),
            c.batch,
            c.len,
            &spec,
            c.layer,
            block,
        )
        .unwrap();
        (qb.to_vec(), cb.to_vec())
    };
    let what = format!(
        "rope_{} T={} g={} heads={} hd={} batch={}/{} len={} pos={} layer={} rows={:?} block={block:?}",
        if bf { "bf16" } else { "f32" },
        c.cls,
        c.grid,
        c.heads,
        c.hd,
        c.batch,
        c.kv_batch,
        c.len,
        c.pos,
        c.layer,
        c.rows
    );
    let (eq, mq) = nmse(&got_q, &want_q, &format!("{what}: q"));
    assert!(eq <= NMSE_BOUND, "{what}: q NMSE {eq:.3e} (max abs err {mq:.3e})");
    // The whole cache, bit for bit (untouched slots keep the pattern; written ones equal the CPU's).
    for (i, (g, w)) in got_cache.iter().zip(&want_cache).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: cache element {i}: got {g}, want {w}"
        );
    }
    let (ec, _) = nmse(&got_cache, &want_cache, &format!("{what}: cache"));
    // Condition positions rotate by an all-zero table row: q and k become exact zeros.
    if c.pos < c.cls && c.rows.is_none() {
        let rows_cond = c.cls - c.pos;
        for b in 0..c.batch {
            for l in 0..rows_cond.min(c.len) {
                let row = &got_q[(b * c.len + l) * d..][..d];
                assert!(row.iter().all(|&v| v == 0.0), "{what}: condition q not zero");
            }
        }
    }
    (eq, ec)
}

#[test]
fn rope_matches_cpu() {
    rope_matches_cpu_on(&EmuDevice::new());
}

fn rope_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(11);
    let mut n = 0usize;
    let (mut worst_f32, mut worst_bf16) = (0f64, 0f64);
    // (T, g): c2i (1 class token) and t2i-like (7 caption tokens) on small grids.
    for &(cls, grid) in &[(1usize, 4usize), (7, 3)] {
        let seq = cls + grid * grid;
        for &(heads, hd) in &[(2usize, 32usize), (1, 64), (3, 100)] {
            for &(kv_batch, batch) in &[(1usize, 1usize), (3, 2)] {
                // (len, pos): prefill, decode at position 1 / the first image token / middle / last, full recompute.
                let steps = [(cls, 0), (1, 1), (1, cls), (1, seq / 2), (1, seq - 1), (seq, 0)];
                for &(len, pos) in &steps {
                    for bf in [false, true] {
                        let block = [None, Some(32), Some(96), Some(7)][n % 4];
                        let dev = &dev.with_sched(SCHEDS[n % 3]);
                        let layer = n % 2;
                        n += 1;
                        let c = Case {
                            cls,
                            grid,
                            heads,
                            hd,
                            kv_batch,
                            batch,
                            len,
                            pos,
                            layer,
                            rows: None,
                        };
                        let (eq, ec) = run_case(dev, &mut rng, &c, bf, block, false);
                        let w = if bf { &mut worst_bf16 } else { &mut worst_f32 };
                        *w = w.max(eq).max(ec);
                    }
                }
            }
        }
    }
    println!("rope: {n} cases, worst NMSE f32 {worst_f32:.3e}, bf16 {worst_bf16:.3e}");
}

#[test]
fn rope_all_schedules() {
    rope_all_schedules_on(&EmuDevice::new());
}

fn rope_all_schedules_on<D: TestDevice>(dev: &D) {
    // One decode case and one prefill case under each schedule, batch 3, odd block.
    let mut rng = Rng(12);
    for s in SCHEDS {
        for &(len, pos) in &[(7usize, 0usize), (1, 9)] {
            let c = Case {
                cls: 7,
                grid: 3,
                heads: 2,
                hd: 100,
                kv_batch: 3,
                batch: 3,
                len,
                pos,
                layer: 1,
                rows: None,
            };
            run_case(&dev.with_sched(s), &mut rng, &c, true, Some(33), false);
            run_case(&dev.with_sched(s), &mut rng, &c, true, Some(33), true);
            run_case(&dev.with_sched(s), &mut rng, &c, false, Some(33), false);
            run_case(&dev.with_sched(s), &mut rng, &c, false, Some(33), true);
        }
    }
}

#[test]
fn rope_per_row_matches_cpu() {
    rope_per_row_matches_cpu_on(&EmuDevice::new());
}

/// Continuous batching: sequences in scattered cache rows at their own positions (decode steps at the first image
/// token, the middle and the last; a prefill of two newcomers), every schedule, both dtypes, aligned or not.
fn rope_per_row_matches_cpu_on<D: TestDevice>(dev: &D) {
    let mut rng = Rng(13);
    let (cls, grid) = (7usize, 3usize);
    let seq = (cls + grid * grid) as i32;
    let cases: [(usize, Vec<i32>); 2] = [(1, vec![4, seq - 1, 0, cls as i32, 2, 11]), (cls, vec![3, 0, 1, 0])];
    for (k, s) in SCHEDS.into_iter().enumerate() {
        for (len, rows) in &cases {
            let c = Case {
                cls,
                grid,
                heads: 2,
                hd: 32,
                kv_batch: 5,
                batch: rows.len() / 2,
                len: *len,
                pos: 0,
                layer: k % 2,
                rows: Some(rows.clone()),
            };
            for bf in [false, true] {
                run_case(&dev.with_sched(s), &mut rng, &c, bf, Some(64), k == 1);
            }
        }
    }
}

fn f32_setup<D: TestDevice>(dev: &D, spec: &KvSpec, rows: usize) -> (D::Buf<f32>, D::Buf<f32>, D::Buf<f32>) {
    let d = spec.heads * spec.head_dim;
    (
        dev.upload(&vec![1.0f32; rows * 3 * d], "qkv"),
        dev.upload(&vec![0.5f32; spec.seq * spec.head_dim], "table"),
        dev.upload(&vec![3.0f32; spec.elems()], "cache"),
    )
}

#[test]
fn rope_positions_past_the_cache_write_nothing() {
    rope_positions_past_the_cache_write_nothing_on(&EmuDevice::new());
}

fn rope_positions_past_the_cache_write_nothing_on<D: TestDevice>(dev: &D) {
    // pos = seq: every row is past the end; the kernel must skip them (no write, no out-of-bounds access).
    let spec = KvSpec {
        layers: 1,
        batch: 2,
        heads: 2,
        seq: 5,
        head_dim: 8,
        storage: Dtype::F32,
    };
    let (x, t, mut cache) = f32_setup(dev, &spec, 4);
    let mut q = dev.upload(&vec![7.0f32; 4 * 16], "q");
    let st = dev.upload(&[step(5)], "step");
    rope::rope(
        dev,
        x.ptr(),
        t.ptr(),
        st.ptr(),
        None,
        q.ptr_mut(),
        cache.ptr_mut(),
        2,
        2,
        &spec,
        0,
        None,
    )
    .unwrap();
    assert!(cache.to_vec().iter().all(|&v| v == 3.0));
    assert!(q.to_vec().iter().all(|&v| v == 7.0));
    // pos = seq - 1 with len 2: the first row is written, the second skipped.
    let st = dev.upload(&[step(4)], "step");
    rope::rope(
        dev,
        x.ptr(),
        t.ptr(),
        st.ptr(),
        None,
        q.ptr_mut(),
        cache.ptr_mut(),
        1,
        2,
        &spec,
        0,
        None,
    )
    .unwrap();
    let qs = q.to_vec();
    // (1, 1) rotated by (cos, sin) = (0.5, 0.5): (1·0.5 − 1·0.5, 1·0.5 + 1·0.5) = (0, 1)
    let want: Vec<f32> = (0..16).map(|i| (i % 2) as f32).collect();
    assert_eq!(&qs[..16], &want[..]);
    assert!(qs[16..].iter().all(|&v| v == 7.0));
    // k and v of both heads at position 4 of sequence 0: 2 × 2 × 8 values, nothing else
    let written = cache.to_vec().iter().filter(|&&v| v != 3.0).count();
    assert_eq!(written, 32);
}

#[test]
fn rope_launcher_rejects_bad_shapes() {
    let dev = EmuDevice::new();
    let spec = KvSpec {
        layers: 2,
        batch: 2,
        heads: 2,
        seq: 5,
        head_dim: 8,
        storage: Dtype::F32,
    };
    let (x, t, mut cache) = f32_setup(&dev, &spec, 4);
    let mut q = dev.alloc::<f32>(4 * 16, "q");
    let st = dev.upload(&[step(0)], "step");
    let mut e = |b: usize, l: usize, spec: &KvSpec, layer: usize, block: Option<u32>| {
        rope::rope(
            &dev,
            x.ptr(),
            t.ptr(),
            st.ptr(),
            None,
            q.ptr_mut(),
            cache.ptr_mut(),
            b,
            l,
            spec,
            layer,
            block,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(e(0, 2, &spec, 0, None).contains("empty shape"));
    assert!(e(3, 1, &spec, 0, None).contains("do not fit the KV cache"));
    assert!(e(1, 6, &spec, 0, None).contains("do not fit the KV cache"));
    assert!(e(1, 1, &spec, 2, None).contains("do not fit the KV cache"));
    assert!(e(1, 1, &spec, 0, Some(0)).contains("block size 0"));
    let odd = KvSpec { head_dim: 6, ..spec };
    assert!(e(1, 1, &odd, 0, None).contains("not a multiple of 4"));
    let bf = KvSpec {
        storage: Dtype::Bf16,
        ..spec
    };
    assert!(e(1, 1, &bf, 0, None).contains("does not match the activation dtype"));
    // qkv holds 4 rows: 2 × 3 rows are too many.
    assert!(e(2, 3, &spec, 0, None).contains("qkv has 192 elements, needs 288"));
    // a cache buffer shorter than the geometry
    let big = KvSpec { layers: 3, ..spec };
    assert!(e(1, 1, &big, 2, None).contains("cache has 640 elements, needs 960"));
}

/// The cases above on the GPU (scripts/gpu-check.sh); fails without one.
#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh"]
fn gpu_rope_matches_cpu() {
    let g = GpuTest::new();
    rope_matches_cpu_on(&g);
    rope_all_schedules_on(&g);
    rope_per_row_matches_cpu_on(&g);
    rope_positions_past_the_cache_write_nothing_on(&g);
}
