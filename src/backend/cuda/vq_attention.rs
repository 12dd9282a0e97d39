//! `vq_attention` launcher: the VQ AttnBlock after its GroupNorm (CPU reference `backend::cpu::vq_attention`):
//! q, k, v = 1×1 convs (with bias) of `normed`; A = softmax_j(q_i · k_j / √c); o[:, i] = Σ_j A[i, j] v[:, j];
//! out = x + proj_out(o). Everything stays channel-major (NCHW), no transposed copies: five
//! [`gemm_strided`] launches read q, k and the scores through swapped strides, and `vq_attention_softmax_f32`
//! (kernels/vq_attention.cu) normalises the score rows in place.
use super::gemm::{gemm_strided, Strided};
use super::kernels::{self, SoftmaxRowsParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, LaunchConfig, Launcher};
use crate::Result;

/// f32 elements of scratch [`vq_attention`] needs: q, k and v for all n images (c·hw each; o reuses q's slot
/// once the scores are formed) and the n score matrices (hw·hw each). 16×16 latent, c = 512, n = 16: 28 MB.
pub fn vq_attention_workspace_len(n: usize, c: usize, hw: usize) -> usize {
    n * (3 * c * hw + hw * hw)
}

/// A read-only view of `len` elements at element offset `off` of `ws`.
///
/// # Safety
/// off + len ≤ ws.len(), and no launch writes the range while a launch reads it through the view.
unsafe fn view<'a>(ws: &DevPtrMut<'a, f32>, off: usize, len: usize) -> DevPtr<'a, f32> {
    DevPtr::from_raw(ws.addr() + (off * 4) as u64, len)
}

/// A writable view of `len` elements at element offset `off` of `ws` (same contract as [`view`]).
unsafe fn view_mut<'a>(ws: &DevPtrMut<'a, f32>, off: usize, len: usize) -> DevPtrMut<'a, f32> {
    DevPtrMut::from_raw(ws.addr() + (off * 4) as u64, len)
}

/// out = x + proj_out(attention(normed)) for `n` images of `c` channels × `hw` positions, all f32, NCHW contiguous.
/// Weights `[c, c]` row-major (the `[c, c, 1, 1]` conv tensors), biases `[c]`. `workspace` holds at least
/// [`vq_attention_workspace_len`]`(n, c, hw)` floats; its contents on entry do not matter. `out` must not alias
/// x, normed or the workspace. Launches (in order on one stream): 3 projections, scores, softmax, o, proj_out.
#[allow(clippy::too_many_arguments)]
pub fn vq_attention<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    normed: DevPtr<'_, f32>,
    wq: DevPtr<'_, f32>,
    bq: DevPtr<'_, f32>,
    wk: DevPtr<'_, f32>,
    bk: DevPtr<'_, f32>,
    wv: DevPtr<'_, f32>,
    bv: DevPtr<'_, f32>,
    wo: DevPtr<'_, f32>,
    bo: DevPtr<'_, f32>,
    out: DevPtrMut<'_, f32>,
    workspace: DevPtrMut<'_, f32>,
    n: usize,
    c: usize,
    hw: usize,
) -> Result<()> {
    let op = "vq_attention";
    if n == 0 || c == 0 || hw == 0 {
        return Err(invalid(op, format!("empty shape n = {n}, c = {c}, hw = {hw}")));
    }
    let ovf = || invalid(op, "shape overflows");
    let img = c.checked_mul(hw).ok_or_else(ovf)?;
    let total = n.checked_mul(img).ok_or_else(ovf)?;
    let ws_len = hw
        .checked_mul(hw)
        .and_then(|s| s.checked_add(3 * img))
        .and_then(|s| s.checked_mul(n))
        .ok_or_else(ovf)?;
    to_i32(op, "n·c·hw", total)?;
    to_i32(op, "hw·hw", hw * hw)?;
    check_len(op, "x", x.len(), total)?;
    check_len(op, "normed", normed.len(), total)?;
    check_len(op, "out", out.len(), total)?;
    check_len(op, "workspace", workspace.len(), ws_len)?;
    for (name, w) in [("wq", &wq), ("wk", &wk), ("wv", &wv), ("wo", &wo)] {
        check_len(op, name, w.len(), c * c)?;
    }
    for (name, b) in [("bq", &bq), ("bk", &bk), ("bv", &bv), ("bo", &bo)] {
        check_len(op, name, b.len(), c)?;
    }
    let (q_off, k_off, v_off, s_off) = (0, total, 2 * total, 3 * total);
    let s_len = n * hw * hw;
    // torch scales the q·k products by int(c) ** -0.5 after the matmul; the GEMM's alpha does the same.
    let scale = (c as f64).powf(-0.5) as f32;

    // 1×1 conv over every image: dst[b](co, p) = W(co, ci) · src[b](ci, p) + bias[co] (+ residual).
    let conv = Strided {
        m: c,
        n: hw,
        k: c,
        batch: n,
        a: (c, 1, 0),
        b: (hw, 1, img),
        c: (hw, 1, img),
        alpha: 1.0,
    };
    // SAFETY (all views): the ranges q, k, v, S are disjoint and inside the workspace (checked above); launches run
    // in order, and each one writes only a range that none of its own inputs overlaps.
    unsafe {
        for (w, b, off) in [(wq, bq, q_off), (wk, bk, k_off), (wv, bv, v_off)] {
            gemm_strided(l, w, normed, Some(b), None, view_mut(&workspace, off, total), &conv)?;
        }
        // S[b](i, j) = scale · Σ_ch q[b](ch, i) k[b](ch, j): q read transposed (A(i, ch) strides 1, hw).
        let scores = Strided {
            m: hw,
            n: hw,
            k: c,
            batch: n,
            a: (1, hw, img),
            b: (hw, 1, img),
            c: (hw, 1, hw * hw),
            alpha: scale,
        };
        gemm_strided(
            l,
            view(&workspace, q_off, total),
            view(&workspace, k_off, total),
            None,
            None,
            view_mut(&workspace, s_off, s_len),
            &scores,
        )?;
        let rows = n * hw;
        let threads = (hw.div_ceil(32) * 32).clamp(32, 1024) as u32;
        let cfg = LaunchConfig::linear(rows.min(65535) as u32, threads);
        let p = SoftmaxRowsParams {
            rows: to_i32(op, "rows", rows)?,
            len: to_i32(op, "hw", hw)?,
        };
        kernels::vq_attention_softmax_f32(l, cfg, view_mut(&workspace, s_off, s_len), p)?;
        // o[b](ch, i) = Σ_j v[b](ch, j) A[b](i, j): the scores read transposed (B(j, i) strides 1, hw); o goes
        // into q's slot, which nothing reads any more.
        let o = Strided {
            m: c,
            n: hw,
            k: hw,
            batch: n,
            a: (hw, 1, img),
            b: (1, hw, hw * hw),
            c: (hw, 1, img),
            alpha: 1.0,
        };
        gemm_strided(
            l,
            view(&workspace, v_off, total),
            view(&workspace, s_off, s_len),
            None,
            None,
            view_mut(&workspace, q_off, total),
            &o,
        )?;
        gemm_strided(l, wo, view(&workspace, q_off, total), Some(bo), Some(x), out, &conv)
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::vq_attention::VqAttention> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::vq_attention::VqAttention, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        self.f32_only("vq_attention")?;
        let ws = self.ws::<f32>("vq_attention", vq_attention_workspace_len(op.n, op.c, op.hw))?;
        let wp = |id| self.wptr::<f32>(id, "vq attention");
        let (q, k, v, p) = (op.q, op.k, op.v, op.proj);
        let w = [
            wp(q[0])?,
            wp(q[1])?,
            wp(k[0])?,
            wp(k[1])?,
            wp(v[0])?,
            wp(v[1])?,
            wp(p[0])?,
            wp(p[1])?,
        ];
        // SAFETY: f32 activations (checked above); the output is disjoint from both inputs.
        unsafe {
            let (x, normed, o) = (self.t(a.ins[0])?, self.t(a.ins[1])?, self.t_mut(a.out)?);
            let [wq, bq, wk, bk, wv, bv, wo, bo] = w;
            vq_attention(
                &self.dev, x, normed, wq, bq, wk, bk, wv, bv, wo, bo, o, ws, op.n, op.c, op.hw,
            )
        }
    }
}
