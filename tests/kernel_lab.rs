//! The kernel lab's figures, held to the targets of the tensor-core work: every lab case coalesced (≥ 90 % of the
//! ideal 32-byte sectors; the 3x3 convolutions through their halo tiles), conflict-free ldmatrix and shared stores, exactly the mma count its tiling implies; every
//! kernel a real `generate` run launches coalesced; the cubins' SASS using tensor cores, ldmatrix and cp.async.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use llamagen::backend::cuda::conv::{self, Tile as ConvTile};
use llamagen::backend::cuda::emu::{self, EmuDevice};
use llamagen::backend::cuda::kernels::{CuemuStats, NVCC};
use llamagen::bench::lab::{self, Case, Kind};

fn counted(c: &Case) -> CuemuStats {
    let dev = EmuDevice::new();
    let bufs = c.prepare(&dev).expect("prepare");
    let (r, s) = emu::count(|| c.launch(&dev, &bufs));
    r.unwrap_or_else(|e| panic!("{}: {e}", c.kernel));
    s
}

fn sectors(s: &CuemuStats) -> f64 {
    s.global_ideal_sectors as f64 / s.global_sectors.max(1) as f64
}

/// The mma instructions each case's tiling issues (bf16, tf32), counted from the kernel design rather than from
/// the emulator: whole tiles issue, also where they hang over the edge.
fn expected_mma(c: &Case) -> (u32, u32) {
    let tiles = |a: usize, t: usize| a.div_ceil(t) as u32;
    // a 128x128 TF32 block: 8 x 16 m16n8k8 per 8 of k, 16 of k per stage
    let tc_gemm = |m: usize, n: usize, k: usize| tiles(m, 128) * tiles(n, 128) * 8 * 16 * 2 * tiles(k, 16);
    let passes = |t: ConvTile| match t {
        ConvTile::Tf32 => 1,
        ConvTile::Tf32x3 => 3,
        _ => 0,
    };
    match c.kind {
        // one m16n8k16 per 16 rows x 8 columns x 16 of k (the shapes fill the tiles)
        Kind::Gemm { m, n, k, .. } => (tiles(m, 16) * tiles(n, 8) * tiles(k, 16), 0),
        // per (sequence, head) and 64-query block of 4 warps x 16 queries: Q.K^T over the causal 64-key tiles,
        // P.V twice (bf16 hi + lo)
        Kind::Prefill { batch, len, heads, d } => {
            let key_tiles: u32 = (1..=tiles(len, 64)).sum();
            let per_tile = 4 * 8 * tiles(d, 16) + 4 * 2 * tiles(d, 8) * 4;
            ((batch * heads) as u32 * key_tiles * per_tile, 0)
        }
        Kind::Decode { .. } => (0, 0),
        // bf16: one m16n8k16 where TF32 issues two m16n8k8
        Kind::Conv {
            tile: ConvTile::Bf16,
            c,
            hw,
            ..
        } => (tc_gemm(c, hw * hw, 9 * c) / 2, 0),
        Kind::Conv { tile, c, hw, .. } => (0, passes(tile) * tc_gemm(c, hw * hw, 9 * c)),
        // four output phases, each a GEMM over the 2x2 folded taps; a block's 128 rows are 64 channels of both
        // column phases of one row phase
        Kind::Upsample { tile, c, hw } => (0, passes(tile) * 2 * tiles(c, 64) * tc_gemm(128, hw * hw, 4 * c)),
    }
}

/// Every lab case: coalesced, conflict-free, and issuing exactly its tiling's mma count.
#[test]
fn lab_cases_meet_the_targets() {
    for c in lab::cases(true) {
        let s = counted(&c);
        let ratio = sectors(&s);
        eprintln!("{}: {ratio:.3}", c.kernel);
        assert!(ratio >= 0.9, "{}: {ratio:.3} of the ideal sectors", c.kernel);
        assert!(s.global_requests > 0, "{}: no global access counted", c.kernel);
        assert!(
            s.ldsm_worst_ways <= 1,
            "{}: ldmatrix {}-way bank conflicts",
            c.kernel,
            s.ldsm_worst_ways
        );
        assert!(
            s.shared_worst_ways <= 2,
            "{}: shared {}-way bank conflicts",
            c.kernel,
            s.shared_worst_ways
        );
        assert_eq!((s.mma_bf16, s.mma_tf32), expected_mma(&c), "{}: mma count", c.kernel);
        let uses_ldsm = c.kernel.contains("tiled") || c.kernel.contains("flash") || c.kernel.contains("_tc_");
        assert_eq!(s.ldsm_phases > 0, uses_ldsm, "{}: ldmatrix use", c.kernel);
    }
}

/// The 3x3 convolutions' halo tiles against their gathers, on the emulator's counts: every request whole and
/// aligned (the gathers' taps shifted by one float touch 5 sectors per 4 on long rows, 3 per 2 on 16-float rows),
/// and far fewer sectors in all, at whole-row tiles (16x16, 64x64) and at 32-column pieces of 128-wide rows.
#[test]
fn conv_halo_tiles_coalesce() {
    let dev = EmuDevice::new();
    for (tile, c, hw) in [
        (ConvTile::T64, 16, 16),
        (ConvTile::T64, 16, 64),
        (ConvTile::T128, 32, 64),
        (ConvTile::Tf32, 32, 64),
        (ConvTile::Tf32, 128, 16),
        (ConvTile::Tf32, 16, 128),
    ] {
        let x = dev.upload(&vec![0.5f32; c * hw * hw], "x");
        let w = dev.upload(&vec![0.25f32; c * c * 9], "w");
        let mut out = dev.alloc::<f32>(c * hw * hw, "out");
        let mut run = |loader| {
            let (r, s) = emu::count(|| {
                conv::conv2d_with(
                    &dev,
                    x.ptr(),
                    w.ptr(),
                    None,
                    None,
                    out.ptr_mut(),
                    (1, c, hw, hw),
                    (c, 3, 3),
                    1,
                    [1; 4],
                    Some(tile),
                    Some(loader),
                    None,
                )
            });
            r.unwrap_or_else(|e| panic!("{tile:?} {loader:?}: {e}"));
            s
        };
        let rw = conv::halo_width(c, hw).expect("a halo shape");
        let (g, h) = (run(conv::Loader::Gather), run(conv::Loader::Halo { rw }));
        let fewer = h.global_sectors as f64 / g.global_sectors as f64;
        eprintln!(
            "{tile:?} {c}ch {hw}x{hw}: gathers {:.3} of ideal ({} sectors), halo {:.3} ({} sectors, {fewer:.2} of the gathers')",
            sectors(&g),
            g.global_sectors,
            sectors(&h),
            h.global_sectors
        );
        assert!(
            sectors(&g) < 0.9,
            "{tile:?}: the gathers' shifted taps should cost extra sectors"
        );
        // whole rows up to 64 columns; 32-column pieces beyond, whose edge chunks half-use a sector each
        let want = if hw <= 64 { 0.99 } else { 0.85 };
        assert!(
            sectors(&h) >= want,
            "{tile:?}: halo {:.3} of the ideal sectors",
            sectors(&h)
        );
        assert!(
            fewer < 0.75,
            "{tile:?}: halo touches {fewer:.2} of the gathers' sectors"
        );
        assert!(
            h.shared_worst_ways <= 2,
            "{tile:?}: {}-way shared stores",
            h.shared_worst_ways
        );
    }
}

/// Every kernel of a real run (`llamagen lab --engine`: the demo model generating two images on cuda-emu) is
/// coalesced (≥ 0.9 of the ideal sectors), and the run uses the kernels a bf16 decode step should: the FFN's
/// SwiGLU in the GEMM's epilogue, so no `swiglu_bf16` launch; and the VQ decoder's norms before convs in the
/// convs' prologue.
#[test]
fn every_engine_kernel_is_coalesced() {
    let out = std::env::temp_dir().join(format!("kernel-lab-{}.md", std::process::id()));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .args(["lab", "--quick", "--engine", "--out"])
        .arg(&out)
        .output()
        .expect("run llamagen lab");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let table = std::fs::read_to_string(&out).expect("lab output");
    let _ = std::fs::remove_file(&out);
    let engine = table.split("### Every kernel").nth(1).expect("engine table");
    let (mut seen, mut launches) = (Vec::new(), Vec::new());
    for row in engine
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| kernel"))
    {
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        let (name, ratio) = (cols[1], cols[4].split(' ').next().unwrap_or("-"));
        seen.push(name.to_string());
        launches.push((name.to_string(), cols[2].parse::<u64>().expect("launch count")));
        let Ok(r) = ratio.parse::<f64>() else {
            panic!("{name}: no global access counted ({row})");
        };
        assert!(r >= 0.9, "{name}: {r} of the ideal sectors");
    }
    for k in [
        "gemm_small_bf16",
        "attention_decode_bf16",
        "rmsnorm_bf16",
        "rope_bf16",
        "sampling_bf16",
    ] {
        assert!(
            seen.iter().any(|s| s == k),
            "{k} missing from the engine table: {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|s| s == "swiglu_bf16"),
        "the decode step launched swiglu_bf16: the fused epilogue was not used ({seen:?})"
    );
    // every norm's statistics feed either a conv's GroupNorm prologue (groupnorm_affine_f32) or the normalise pass,
    // which only the attention blocks' norms (no conv after them) still need
    let count = |k: &str| launches.iter().find(|(n, _)| n == k).map_or(0, |(_, c)| *c);
    let (stats, affine, normalise) = (
        count("groupnorm_stats_f32"),
        count("groupnorm_affine_f32"),
        count("groupnorm_f32"),
    );
    assert_eq!(stats, affine + normalise, "{launches:?}");
    assert!(
        affine > normalise,
        "most norms should feed a conv's prologue: {launches:?}"
    );
}

/// The cubins (sm_90) use the tensor cores, ldmatrix and cp.async in every kernel built for them.
#[test]
#[cfg_attr(
    not(llamagen_nvcc),
    ignore = "nvcc was not found at build time: no cubins to disassemble"
)]
fn sass_shows_tensor_core_pipelines() {
    assert!(NVCC.error.is_none(), "nvcc failed: {}", NVCC.error.unwrap_or(""));
    assert!(
        !NVCC.sass_mix.starts_with('#'),
        "nvcc built the cubins but the SASS mix is missing: {}",
        NVCC.sass_mix.lines().next().unwrap_or("")
    );
    for k in [
        "gemm_tiled_128x128_bf16",
        "gemm_tiled_128x64_bf16",
        "gemm_tiled_64x64_bf16",
        "attention_flash_bf16",
        "conv2d_tc_f32",
        "upsample_conv_tc_f32",
    ] {
        let mix = lab::sass_mix(k, "sm_90").unwrap_or_else(|| panic!("{k}: no SASS mix"));
        for op in ["HMMA", "LDSM", "LDGSTS"] {
            let n = mix.iter().find(|(o, _)| o == op).map_or(0, |(_, n)| *n);
            assert!(n > 0, "{k}: no {op} in its sm_90 SASS");
        }
    }
}

/// Bad lab flags exit non-zero with a message naming the flag, never a panic.
#[test]
fn lab_rejects_bad_flags() {
    for (args, needle) in [
        (&["lab", "--device", "cpu"][..], "--device cpu"),
        (&["lab", "--reps", "0"][..], "--reps"),
        (
            &["lab", "--quick", "--out", "/nonexistent-dir/lab.md"][..],
            "/nonexistent-dir/lab.md",
        ),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_llamagen"))
            .args(args)
            .output()
            .expect("run llamagen lab");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
