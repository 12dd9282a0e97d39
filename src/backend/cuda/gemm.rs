//! `gemm` launchers (kernels/gemm.cu):
//!
//! - [`gemm`] / [`gemm_with`]: the GPT's `Op::Matmul` / `Op::MatmulAdd`, y[m, n] = x[m, k] · w[n, k]ᵀ (+ residual),
//!   w stored `[n, k]` row-major like `nn.Linear`; the CPU reference is `backend::cpu::matmul::matmul` (bf16 with
//!   `round = true`: the linear output is rounded to bf16, then residual + it is rounded again; f32 with
//!   `round = false`).
//! - [`gemm_strided`]: the VQ's strided batched f32 GEMM, C = alpha·A·B + bias + R with arbitrary element strides.
use super::kernels::{self, GemmParams, GemmStridedParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, LaunchConfig, Launcher};
use crate::Result;
use half::bf16;

/// Which kernel [`gemm_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// The launcher's choice ([`auto_path`]).
    Auto,
    /// bf16: `gemm_tiled_<tile>_bf16` (tensor cores, cp.async pipeline, ldmatrix) with this tile (`None`:
    /// [`pick_tile`]). f32: `gemm_strided_f32` with the matmul strides (the tile is ignored).
    Tiled(Option<Tile>),
    /// The weight-streaming decode kernels, `gemm_small_bf16` (tensor cores, grid.y over m in groups of 64) or
    /// `gemm_small_f32` (SIMT, groups of 16), with this many warps per block splitting k (1..=8; `None`:
    /// [`small_warps`]). They work for any m and are the fast path for m ≤ [`SMALL_M_MAX`].
    Small(Option<u32>),
}

/// The block tile of the tensor-core GEMM: rows of x × rows of w per block (kernels/gemm.cu `TiledGemm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 8 warps of 64×32, 48 KiB of shared memory.
    T128x128,
    /// 4 warps of 64×32, 36 KiB.
    T128x64,
    /// 4 warps of 32×32, 24 KiB.
    T64x64,
}

impl Tile {
    pub const ALL: [Tile; 3] = [Tile::T128x128, Tile::T128x64, Tile::T64x64];

    /// (rows of x, rows of w) per block.
    pub fn dims(self) -> (usize, usize) {
        match self {
            Tile::T128x128 => (128, 128),
            Tile::T128x64 => (128, 64),
            Tile::T64x64 => (64, 64),
        }
    }

    /// Threads per block.
    pub fn threads(self) -> u32 {
        match self {
            Tile::T128x128 => 256,
            _ => 128,
        }
    }

    /// Dynamic shared memory: three pipeline stages of (BM + BN) rows × 32 bf16 (the epilogue's output tile reuses
    /// them and is smaller).
    pub fn shared_bytes(self) -> u32 {
        let (bm, bn) = self.dims();
        (3 * (bm + bn) * 64) as u32
    }

    /// Blocks of the grid for an m × n output.
    pub fn blocks(self, m: usize, n: usize) -> usize {
        let (bm, bn) = self.dims();
        m.div_ceil(bm) * n.div_ceil(bn)
    }
}

/// Streaming multiprocessors the tile choice aims to fill (H100 SXM: 132; A100: 108).
pub const TARGET_SMS: usize = 132;

/// The largest tile whose grid still gives every SM of an H100 a block (larger tiles re-read x and w less: a
/// 128×128 tile loads 2·128·k values for 128² outputs, a 64×64 tile twice as many per output); when even 64×64
/// leaves SMs idle, 64×64 (most blocks). GPT-B qkv (n = 2304): at 64 images with CFG (m = 128) 64×64 (72
/// blocks; fewer than the SMs, where split-K would help); t2i prefill of 16 captions (m = 1920) 128×128 (270).
pub fn pick_tile(m: usize, n: usize) -> Tile {
    Tile::ALL
        .into_iter()
        .find(|t| t.blocks(m, n) >= TARGET_SMS)
        .unwrap_or(Tile::T64x64)
}

/// Largest m for which [`auto_path`] picks the small-m kernels.
pub const SMALL_M_MAX: usize = 64;

/// m ≤ [`SMALL_M_MAX`] (a decode step: m = 2·batch rows with CFG) → `Small`: the product is bound by one pass
/// over the weights, and a 64×64-tiled grid would have only n/64 blocks (12 for n = 768) to stream them; the small
/// kernels have n/8 blocks and share each weight read among the rows of x (all 64 in bf16; 16 per block row in
/// f32, where 17..64 rows re-read w from L2). Larger m (prefill) → `Tiled`, which reuses every staged weight tile
/// for 64 rows. The same rule for both dtypes.
pub fn auto_path(_dtype: Dtype, m: usize) -> GemmPath {
    if m <= SMALL_M_MAX {
        GemmPath::Small(None)
    } else {
        GemmPath::Tiled(None)
    }
}

/// Warps per block of the small-m kernels (1..=8), splitting k. They are bound by weight loads in flight: each
/// warp keeps ~1 KiB of w outstanding, and HBM needs ~2 MB in flight on an H100 (3.35 TB/s × ~0.6 µs), i.e. ~2000
/// warps over the grid. So: enough warps per block that the n/8 blocks hold ~2048 warps, at most 8, and no more
/// than there are 32-wide chunks of k (idle warps would only add to the final cross-warp sum).
/// GPT-B: n = 768 (96 blocks) or 2304 → 8 warps; the output head (n = 16384, 2048 blocks) → 1 warp.
pub fn small_warps(n: usize, k: usize) -> u32 {
    let blocks = n.div_ceil(8).max(1);
    2048usize.div_ceil(blocks).min(k.div_ceil(32)).clamp(1, 8) as u32
}

/// y[m, n] = x[m, k] · w[n, k]ᵀ (+ residual[m, n]) with the kernel [`auto_path`] picks. `T` is the dtype of x, w,
/// residual and y: bf16 (weights bf16, f32 accumulation; CPU round = true) or f32 (CPU round = false).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, T>,
    w: DevPtr<'_, T>,
    residual: Option<DevPtr<'_, T>>,
    y: DevPtrMut<'_, T>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    gemm_with(l, x, w, residual, y, m, n, k, GemmPath::Auto)
}

/// [`gemm`] with the kernel chosen by the caller (tests force each path).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, T>,
    w: DevPtr<'_, T>,
    residual: Option<DevPtr<'_, T>>,
    y: DevPtrMut<'_, T>,
    m: usize,
    n: usize,
    k: usize,
    path: GemmPath,
) -> Result<()> {
    let op = "gemm";
    check_shapes(
        op,
        (m, n, k),
        (x.len(), w.len(), y.len()),
        residual.as_ref().map(DevPtr::len),
        n,
    )?;
    let path = match path {
        GemmPath::Auto => auto_path(T::DTYPE, m),
        p => p,
    };
    if T::DTYPE == Dtype::F32 && matches!(path, GemmPath::Tiled(_)) {
        // SAFETY: T is f32 here.
        let (x, w, y) = unsafe { (x.cast::<f32>(), w.cast::<f32>(), y.cast::<f32>()) };
        let r = residual.map(|r| unsafe { r.cast::<f32>() });
        let s = Strided {
            m,
            n,
            k,
            batch: 1,
            a: (k, 1, 0),
            b: (1, k, 0),
            c: (n, 1, 0),
            alpha: 1.0,
        };
        return launch_strided(l, x, w, None, r, y, &s);
    }
    let p = GemmParams {
        m: to_i32(op, "m", m)?,
        n: to_i32(op, "n", n)?,
        k: to_i32(op, "k", k)?,
        has_residual: residual.is_some() as i32,
        k_splits: 1,
        k_chunk: 0,
        swiglu: 0,
    };
    // SAFETY: a null pointer is never dereferenced: has_residual = 0 tells the kernel.
    let r = residual.unwrap_or(unsafe { DevPtr::from_raw(0, 0) });
    let (cfg, tile) = match path {
        GemmPath::Small(warps) => {
            let rows_per_block = if T::DTYPE == Dtype::Bf16 { 64 } else { 16 };
            (small_config(op, (m, n, k), warps, rows_per_block)?, None)
        }
        GemmPath::Tiled(tile) => {
            let tile = tile.unwrap_or_else(|| pick_tile(m, n));
            (tiled_config(op, tile, m, n, 1)?, Some(tile))
        }
        GemmPath::Auto => unreachable!("resolved by auto_path above"),
    };
    // SAFETY: T::DTYPE names the element type the chosen kernel reads and writes (f32 tiled returned above).
    unsafe {
        let (xb, wb, rb) = (x.cast::<bf16>(), w.cast::<bf16>(), r.cast::<bf16>());
        match (T::DTYPE, tile) {
            (Dtype::Bf16, None) => kernels::gemm_small_bf16(l, cfg, xb, wb, rb, y.cast(), p),
            (Dtype::Bf16, Some(tile)) => launch_tiled(l, tile, cfg, xb, wb, rb, y.cast(), DevPtrMut::from_raw(0, 0), p),
            (Dtype::F32, _) => kernels::gemm_small_f32(l, cfg, x.cast(), w.cast(), r.cast(), y.cast(), p),
        }
    }
}

/// Grid (n / 8, m / rows per block) of a small-m launch, with `warps` (default [`small_warps`]) splitting k.
fn small_config(op: &str, (m, n, k): (usize, usize, usize), warps: Option<u32>, rows: usize) -> Result<LaunchConfig> {
    let warps = warps.unwrap_or_else(|| small_warps(n, k));
    if !(1..=8).contains(&warps) {
        return Err(invalid(op, format!("small-m kernel with {warps} warps (1..=8)")));
    }
    let gy = m.div_ceil(rows);
    if gy > 65535 {
        return Err(invalid(op, format!("m = {m} needs {gy} > 65535 block rows")));
    }
    Ok(LaunchConfig::new(
        [n.div_ceil(8) as u32, gy as u32, 1],
        [32 * warps, 1, 1],
    ))
}

/// The checks every GEMM launcher makes: a non-empty shape, and x (m·k), w (n·k), y (m·`y_cols`: n, or f = n / 2
/// with SwiGLU) and the residual (m·n) long enough. Returns m·n.
fn check_shapes(
    op: &str,
    (m, n, k): (usize, usize, usize),
    (x, w, y): (usize, usize, usize),
    residual: Option<usize>,
    y_cols: usize,
) -> Result<usize> {
    if m == 0 || n == 0 || k == 0 {
        return Err(invalid(op, format!("empty shape m = {m}, n = {n}, k = {k}")));
    }
    let mul = |a: usize, b: usize, what: &str| a.checked_mul(b).ok_or_else(|| invalid(op, format!("{what} overflows")));
    check_len(op, "x", x, mul(m, k, "m·k")?)?;
    check_len(op, "w", w, mul(n, k, "n·k")?)?;
    let mn = mul(m, n, "m·n")?;
    check_len(op, "y", y, mul(m, y_cols, "m·(output columns)")?)?;
    if let Some(r) = residual {
        check_len(op, "residual", r, mn)?;
    }
    Ok(mn)
}

/// Grid (n / BN, m / BM, k splits) of a tiled launch with its threads and shared memory.
fn tiled_config(op: &str, tile: Tile, m: usize, n: usize, splits: u32) -> Result<LaunchConfig> {
    let (bm, bn) = tile.dims();
    let gy = m.div_ceil(bm);
    if gy > 65535 {
        return Err(invalid(op, format!("m = {m} needs {gy} > 65535 block rows")));
    }
    let grid = [n.div_ceil(bn) as u32, gy as u32, splits];
    Ok(LaunchConfig::new(grid, [tile.threads(), 1, 1]).with_shared(tile.shared_bytes()))
}

/// # Safety
/// The pointers are live device buffers of the sizes `p` implies (`part`: `p.k_splits · m · n` f32 when split).
#[allow(clippy::too_many_arguments)]
unsafe fn launch_tiled<L: Launcher + ?Sized>(
    l: &L,
    tile: Tile,
    cfg: LaunchConfig,
    x: DevPtr<'_, bf16>,
    w: DevPtr<'_, bf16>,
    r: DevPtr<'_, bf16>,
    y: DevPtrMut<'_, bf16>,
    part: DevPtrMut<'_, f32>,
    p: GemmParams,
) -> Result<()> {
    match tile {
        Tile::T128x128 => kernels::gemm_tiled_128x128_bf16(l, cfg, x, w, r, y, part, p),
        Tile::T128x64 => kernels::gemm_tiled_128x64_bf16(l, cfg, x, w, r, y, part, p),
        Tile::T64x64 => kernels::gemm_tiled_64x64_bf16(l, cfg, x, w, r, y, part, p),
    }
}

/// k per split for `splits` of k (a multiple of the 32-wide pipeline stage), and the splits that leaves.
fn split_chunk(k: usize, splits: usize) -> (usize, usize) {
    let chunk = k.div_ceil(splits).div_ceil(32) * 32;
    (chunk, k.div_ceil(chunk))
}

/// The (k per split, splits) of a split-K launch asked for `splits` (2..=64): refused where whole 32-wide stages
/// leave fewer than 2 ranges (k = 32 in 2 splits), since the tiled kernel would then write y itself and the reduce
/// would overwrite it with a workspace nobody wrote.
fn split_plan(op: &str, k: usize, splits: u32) -> Result<(usize, usize)> {
    if !(2..=64).contains(&splits) {
        return Err(invalid(op, format!("{splits} splits (2..=64)")));
    }
    let (chunk, n) = split_chunk(k, splits as usize);
    if n < 2 {
        return Err(invalid(
            op,
            format!("k = {k} cannot split {splits} ways in stages of 32"),
        ));
    }
    Ok((chunk, n))
}

/// Split-K for the tiled bf16 GEMM when its grid leaves SMs idle: splits so that the blocks reach [`TARGET_SMS`],
/// each split keeping ≥ 4 pipeline stages of k (128), at most 8. `None` where one pass fills the GPU (or k is too
/// short to split). GPT-B at batch 64 with CFG (m = 128): qkv (n = 2304, 72 blocks of 64×64) 2 splits; wo and w2
/// (n = 768, 24 blocks) 6; w1|w3 (n = 4096 → 128 blocks) 2. The partial sums cost 2·splits·m·n·4 bytes of traffic.
pub fn split_k(m: usize, n: usize, k: usize, tile: Tile) -> Option<u32> {
    let blocks = tile.blocks(m, n);
    let want = TARGET_SMS.div_ceil(blocks).min(k / 128).min(8);
    let (_, splits) = split_chunk(k, want.max(1));
    (splits > 1).then_some(splits as u32)
}

/// f32 elements of the workspace [`gemm_split_k`] needs.
pub fn split_k_workspace_len(m: usize, n: usize, k: usize, splits: u32) -> usize {
    split_chunk(k, splits as usize).1 * m * n
}

/// The tiled bf16 GEMM with k split `splits` ways (≥ 2): grid.z blocks each sum one k range into an f32 partial
/// tile in `part` (≥ [`split_k_workspace_len`] elements, scratch), then `gemm_splitk_reduce_bf16` sums the
/// partials in order and applies the usual epilogue (round, + residual, round). Same results as [`gemm_with`]'s
/// tiled path up to f32 summation order.
#[allow(clippy::too_many_arguments)]
pub fn gemm_split_k<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, bf16>,
    w: DevPtr<'_, bf16>,
    residual: Option<DevPtr<'_, bf16>>,
    y: DevPtrMut<'_, bf16>,
    (m, n, k): (usize, usize, usize),
    tile: Option<Tile>,
    splits: u32,
    part: DevPtrMut<'_, f32>,
) -> Result<()> {
    let op = "gemm split-k";
    let mn = check_shapes(
        op,
        (m, n, k),
        (x.len(), w.len(), y.len()),
        residual.as_ref().map(DevPtr::len),
        n,
    )?;
    let p = GemmParams {
        m: to_i32(op, "m", m)?,
        n: to_i32(op, "n", n)?,
        k: to_i32(op, "k", k)?,
        has_residual: residual.is_some() as i32,
        k_splits: 1,
        k_chunk: 0,
        swiglu: 0,
    };
    to_i32(op, "m·n", mn)?;
    // SAFETY: a null pointer is never dereferenced: has_residual = 0 tells the kernel.
    let r = residual.unwrap_or(unsafe { DevPtr::from_raw(0, 0) });
    // SAFETY: x, w, y and the residual are checked above.
    unsafe { launch_split_k(l, op, tile, splits, x, w, r, y, part, p) }
}

/// Split-K of the tiled bf16 GEMM `p` (of [`gemm_split_k`] or [`gemm_swiglu`]): plans `splits` over k
/// ([`split_plan`]), checks `part`, then the two launches: the tiled kernel (`tile`, default [`pick_tile`]) over
/// grid.z = splits writing only `part` (not y), then `gemm_splitk_reduce_bf16` (a thread per 4 of the m·n
/// partials) reading `part` and the residual and writing y, so that each launch sees each buffer through one
/// pointer.
/// # Safety
/// x, w, y and r are live device buffers of the sizes `p` implies (checked by the caller); `part` is checked here.
#[allow(clippy::too_many_arguments)]
unsafe fn launch_split_k<L: Launcher + ?Sized>(
    l: &L,
    op: &str,
    tile: Option<Tile>,
    splits: u32,
    x: DevPtr<'_, bf16>,
    w: DevPtr<'_, bf16>,
    r: DevPtr<'_, bf16>,
    y: DevPtrMut<'_, bf16>,
    part: DevPtrMut<'_, f32>,
    mut p: GemmParams,
) -> Result<()> {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let mn = m * n;
    let (chunk, splits) = split_plan(op, k, splits)?;
    let need = splits
        .checked_mul(mn)
        .ok_or_else(|| invalid(op, "splits·m·n overflows"))?;
    check_len(op, "part", part.len(), need)?;
    (p.k_splits, p.k_chunk) = (splits as i32, chunk as i32);
    let tile = tile.unwrap_or_else(|| pick_tile(m, n));
    let cfg = tiled_config(op, tile, m, n, splits as u32)?;
    let (pa, pl, ya, yl, ra, rl) = (part.addr(), part.len(), y.addr(), y.len(), r.addr(), r.len());
    launch_tiled(l, tile, cfg, x, w, r, y, part, p)?;
    let cfg = LaunchConfig::linear(mn.div_ceil(4).div_ceil(256) as u32, 256);
    let (part, r, y) = (
        DevPtr::from_raw(pa, pl),
        DevPtr::from_raw(ra, rl),
        DevPtrMut::from_raw(ya, yl),
    );
    kernels::gemm_splitk_reduce_bf16(l, cfg, part, r, y, p)
}

/// Shape and element strides of a [`gemm_strided`] call: `a = (s_m, s_k, s_batch)`, `b = (s_k, s_n, s_batch)`,
/// `c = (s_m, s_n, s_batch)` (also the residual's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Strided {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub a: (usize, usize, usize),
    pub b: (usize, usize, usize),
    pub c: (usize, usize, usize),
    pub alpha: f32,
}

/// Index of the last element a strided operand touches, plus one (0 for an empty operand).
fn extent(rows: usize, cols: usize, batch: usize, (sr, sc, sb): (usize, usize, usize)) -> Option<usize> {
    let last = (rows - 1)
        .checked_mul(sr)?
        .checked_add((cols - 1).checked_mul(sc)?)?
        .checked_add((batch - 1).checked_mul(sb)?)?;
    last.checked_add(1)
}

/// For each b < s.batch: C[b](i, j) = s.alpha · Σ_k A[b](i, k) · B[b](k, j) + bias[i] + R[b](i, j), with
/// X[b](i, j) = X[b·s_batch + i·s_row + j·s_col] (strides in elements, any, 0 included). bias (length ≥ m) and
/// the residual R (C's strides) are optional; R may be C's own buffer only through a separate pointer the caller
/// owns (each element is read before it is written, by the same thread). C's strides must not make two (b, i, j)
/// land on one element. Kernel `gemm_strided_f32`: 64×64 tiles of 256 threads, grid (n/64, m/64, batch ≤ 65535).
pub fn gemm_strided<L: Launcher + ?Sized>(
    l: &L,
    a: DevPtr<'_, f32>,
    b: DevPtr<'_, f32>,
    bias: Option<DevPtr<'_, f32>>,
    residual: Option<DevPtr<'_, f32>>,
    c: DevPtrMut<'_, f32>,
    s: &Strided,
) -> Result<()> {
    launch_strided(l, a, b, bias, residual, c, s)
}

fn launch_strided<L: Launcher + ?Sized>(
    l: &L,
    a: DevPtr<'_, f32>,
    b: DevPtr<'_, f32>,
    bias: Option<DevPtr<'_, f32>>,
    residual: Option<DevPtr<'_, f32>>,
    c: DevPtrMut<'_, f32>,
    s: &Strided,
) -> Result<()> {
    let op = "gemm_strided";
    let Strided { m, n, k, batch, .. } = *s;
    if m == 0 || n == 0 || k == 0 || batch == 0 {
        return Err(invalid(
            op,
            format!("empty shape m = {m}, n = {n}, k = {k}, batch = {batch}"),
        ));
    }
    if batch > 65535 {
        return Err(invalid(op, format!("batch = {batch} > 65535 (grid.z)")));
    }
    let ext =
        |r, cl, st, what: &str| extent(r, cl, batch, st).ok_or_else(|| invalid(op, format!("{what} extent overflows")));
    check_len(op, "a", a.len(), ext(m, k, s.a, "a")?)?;
    check_len(op, "b", b.len(), ext(k, n, s.b, "b")?)?;
    let ce = ext(m, n, s.c, "c")?;
    check_len(op, "c", c.len(), ce)?;
    if let Some(r) = &residual {
        check_len(op, "residual", r.len(), ce)?;
    }
    if let Some(bi) = &bias {
        check_len(op, "bias", bi.len(), m)?;
    }
    let i = |what: &str, v: usize| to_i32(op, what, v);
    // Element offsets are formed in 64 bits in the kernel, but each stride must be an int32.
    let p = GemmStridedParams {
        m: i("m", m)?,
        n: i("n", n)?,
        k: i("k", k)?,
        batch: i("batch", batch)?,
        a_sm: i("a row stride", s.a.0)?,
        a_sk: i("a column stride", s.a.1)?,
        b_sk: i("b row stride", s.b.0)?,
        b_sn: i("b column stride", s.b.1)?,
        c_sm: i("c row stride", s.c.0)?,
        c_sn: i("c column stride", s.c.1)?,
        a_sb: i("a batch stride", s.a.2)?,
        b_sb: i("b batch stride", s.b.2)?,
        c_sb: i("c batch stride", s.c.2)?,
        alpha: s.alpha,
        has_bias: bias.is_some() as i32,
        has_residual: residual.is_some() as i32,
    };
    let (gx, gy) = (n.div_ceil(64), m.div_ceil(64));
    if gy > 65535 {
        return Err(invalid(op, format!("m = {m} needs {gy} > 65535 block rows")));
    }
    let cfg = LaunchConfig::new([gx as u32, gy as u32, batch as u32], [256, 1, 1]);
    // SAFETY: null pointers are never dereferenced: has_bias / has_residual = 0 tell the kernel.
    let null = || unsafe { DevPtr::from_raw(0, 0) };
    kernels::gemm_strided_f32(
        l,
        cfg,
        a,
        b,
        bias.unwrap_or_else(null),
        residual.unwrap_or_else(null),
        c,
        p,
    )
}

/// y[m, f] = silu(x·W1ᵀ) · (x·W3ᵀ), w = W1 | W3 stacked `[2f, k]` (the FFN's w1|w3): the GEMM of n = 2f with
/// its SwiGLU epilogue, so the `[m, 2f]` product never reaches memory. The kernels read W1 and W3 rows interleaved
/// in groups of 4 (gemm.cu `swiglu_row`: no weight permutation), so both halves of an output meet in one block.
/// Same arithmetic as [`gemm`] then `swiglu`: in bf16 the linear outputs rounded, silu rounded, the product
/// rounded. `path` as for [`gemm_with`] (`Auto`: [`auto_path`]); f32 has the small-m kernel only (its tiled GEMM,
/// `gemm_strided_f32`, has no SwiGLU epilogue). `split`: split-K of the bf16 tiled path, `(splits, part)` with
/// `part` ≥ [`split_k_workspace_len`]`(m, 2f, k, splits)`. f % 4 == 0.
#[allow(clippy::too_many_arguments)]
pub fn gemm_swiglu<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, T>,
    w: DevPtr<'_, T>,
    y: DevPtrMut<'_, T>,
    (m, k, f): (usize, usize, usize),
    path: GemmPath,
    split: Option<(u32, DevPtrMut<'_, f32>)>,
) -> Result<()> {
    let op = "gemm swiglu";
    if f % 4 != 0 {
        return Err(invalid(
            op,
            format!("f = {f}: needs f % 4 == 0 (a block pairs W1 and W3 in groups of 4)"),
        ));
    }
    let n = f.checked_mul(2).ok_or_else(|| invalid(op, "2f overflows"))?;
    let mn = check_shapes(op, (m, n, k), (x.len(), w.len(), y.len()), None, f)?;
    let p = GemmParams {
        m: to_i32(op, "m", m)?,
        n: to_i32(op, "2f", n)?,
        k: to_i32(op, "k", k)?,
        has_residual: 0,
        k_splits: 1,
        k_chunk: 0,
        swiglu: 1,
    };
    to_i32(op, "m·2f", mn)?;
    // SAFETY (all launches): sizes checked above; the residual pointer is null and never read (has_residual = 0).
    let r: DevPtr<'_, T> = unsafe { DevPtr::from_raw(0, 0) };
    let path = match path {
        GemmPath::Auto => auto_path(T::DTYPE, m),
        p => p,
    };
    if T::DTYPE == Dtype::F32 {
        let GemmPath::Small(warps) = path else {
            return Err(invalid(op, format!("f32 runs the small-m kernel only, not {path:?}")));
        };
        if split.is_some() {
            return Err(invalid(op, "split-K runs the bf16 tiled kernels"));
        }
        let cfg = small_config(op, (m, n, k), warps, 16)?;
        // SAFETY: T is f32 here.
        return unsafe { kernels::gemm_small_f32(l, cfg, x.cast(), w.cast(), r.cast(), y.cast(), p) };
    }
    // SAFETY: T is bf16 from here on.
    let (x, w, r, y) = unsafe { (x.cast::<bf16>(), w.cast::<bf16>(), r.cast::<bf16>(), y.cast::<bf16>()) };
    match (path, split) {
        (GemmPath::Small(warps), None) => {
            let cfg = small_config(op, (m, n, k), warps, 64)?;
            kernels::gemm_small_bf16(l, cfg, x, w, r, y, p)
        }
        (GemmPath::Tiled(tile), None) => {
            let tile = tile.unwrap_or_else(|| pick_tile(m, n));
            let cfg = tiled_config(op, tile, m, n, 1)?;
            unsafe { launch_tiled(l, tile, cfg, x, w, r, y, DevPtrMut::from_raw(0, 0), p) }
        }
        (GemmPath::Tiled(tile), Some((splits, part))) => unsafe {
            launch_split_k(l, op, tile, splits, x, w, r, y, part, p)
        },
        (path, Some(_)) => Err(invalid(op, format!("split-K runs the tiled kernels, not {path:?}"))),
        (GemmPath::Auto, None) => unreachable!("resolved by auto_path above"),
    }
}
