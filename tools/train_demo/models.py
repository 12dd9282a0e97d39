"""PyTorch modules of the LlamaGen family, written from docs/llamagen-spec.md (not vendored).

Module structure and state-dict names follow the official repository (FoundationVision/LlamaGen,
`tokenizer/tokenizer_image/vq_model.py` and `autoregressive/models/gpt.py`) so that the exported weights load
into `llamagen` (and into the official code) unchanged:

* VQ: `encoder.*`, `quant_conv`, `quantize.embedding.weight` (+ the `quantize.codebook_used` buffer),
  `post_quant_conv`, `decoder.*` — spec §6-§9, §11.
* GPT (c2i): `cls_embedding.embedding_table.weight`, `tok_embeddings.weight`, `layers.{i}.attention.wqkv/wo`,
  `layers.{i}.feed_forward.w1/w2/w3`, `layers.{i}.attention_norm/ffn_norm`, `norm`, `output` — spec §3, §4.1.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------
# VQ tokenizer
# ----------------------------------------------------------------------------------------------------------------

def Normalize(c):
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1 = Normalize(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2 = Normalize(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0)
        else:
            self.nin_shortcut = None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        s = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return s + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = Normalize(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        n = self.norm(x)
        b, c, h, w = x.shape
        q = self.q(n).reshape(b, c, h * w).permute(0, 2, 1)  # b, hw, c
        k = self.k(n).reshape(b, c, h * w)  # b, c, hw
        v = self.v(n).reshape(b, c, h * w)  # b, c, hw
        a = torch.softmax(torch.bmm(q, k) * (c ** -0.5), dim=2)  # b, hw(q), hw(k)
        o = torch.bmm(v, a.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(o)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, in_channels=3):
        super().__init__()
        n = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level in range(n):
            blk = nn.Module()
            res, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_mult[level]
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks):
                res.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if level == n - 1:
                    attn.append(AttnBlock(block_in))
            blk.res, blk.attn = res, attn
            if level != n - 1:
                blk.downsample = Downsample(block_in)
            self.conv_blocks.append(blk)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in), AttnBlock(block_in), ResnetBlock(block_in, block_in)])
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        n = len(self.conv_blocks)
        for level, blk in enumerate(self.conv_blocks):
            for i in range(self.num_res_blocks):
                h = blk.res[i](h)
                if len(blk.attn) > 0:
                    h = blk.attn[i](h)
            if level != n - 1:
                h = blk.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, out_channels=3):
        super().__init__()
        n = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[n - 1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in), AttnBlock(block_in), ResnetBlock(block_in, block_in)])
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(n)):
            blk = nn.Module()
            res, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                res.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if level == n - 1:
                    attn.append(AttnBlock(block_in))
            blk.res, blk.attn = res, attn
            if level != 0:
                blk.upsample = Upsample(block_in)
            self.conv_blocks.append(blk)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        n = len(self.conv_blocks)
        for i, blk in enumerate(self.conv_blocks):
            for r in range(self.num_res_blocks + 1):
                h = blk.res[r](h)
                if len(blk.attn) > 0:
                    h = blk.attn[r](h)
            if i != n - 1:
                h = blk.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """L2-normalised codebook, nearest code by cosine, straight-through estimator (official VectorQuantizer)."""

    def __init__(self, n_e, e_dim, beta=0.25, l2_norm=True):
        super().__init__()
        assert l2_norm, "the demo uses codebook_l2_norm = true"
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.embedding.weight.data = F.normalize(self.embedding.weight.data, p=2, dim=-1)
        # official training statistic (codebook_show_usage); kept so the official code loads the file strictly
        self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self):
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def nearest(self, zf):
        """zf: (N, e_dim) already normalised -> indices (N,), as the reference computes the distance."""
        e = self.codebook()
        d = (zf ** 2).sum(1, keepdim=True) + (e ** 2).sum(1)[None, :] - 2 * zf @ e.t()
        return torch.argmin(d, dim=1)

    def forward(self, z):
        # z: (b, c, h, w)
        z = z.permute(0, 2, 3, 1).contiguous()
        z = F.normalize(z, p=2, dim=-1)
        zf = z.view(-1, self.e_dim)
        idx = self.nearest(zf)
        zq = self.codebook()[idx].view(z.shape)
        vq_loss = torch.mean((zq - z.detach()) ** 2)
        commit_loss = self.beta * torch.mean((zq.detach() - z) ** 2)
        zq = z + (zq - z).detach()
        return zq.permute(0, 3, 1, 2).contiguous(), vq_loss, commit_loss, idx, zf.detach()

    def lookup(self, idx, shape):
        """idx: (b, h*w) -> (b, e_dim, h, w), raster order."""
        b, h, w = shape
        return self.codebook()[idx.reshape(-1)].view(b, h, w, self.e_dim).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        assert cfg["encoder_ch_mult"] == cfg["decoder_ch_mult"]
        self.encoder = Encoder(cfg["ch"], cfg["encoder_ch_mult"], cfg["num_res_blocks"], cfg["z_channels"])
        self.decoder = Decoder(cfg["ch"], cfg["decoder_ch_mult"], cfg["num_res_blocks"], cfg["z_channels"])
        self.quantize = VectorQuantizer(cfg["codebook_size"], cfg["codebook_embed_dim"], 0.25, cfg["codebook_l2_norm"])
        self.quant_conv = nn.Conv2d(cfg["z_channels"], cfg["codebook_embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(cfg["codebook_embed_dim"], cfg["z_channels"], 1)

    def encode(self, x):
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, zq):
        return self.decoder(self.post_quant_conv(zq))

    @torch.no_grad()
    def encode_codes(self, x):
        """x in [-1, 1] -> (b, h, w) int64 codes."""
        _, _, _, idx, _ = self.encode(x)
        b, _, H, W = x.shape
        f = 2 ** (len(self.cfg["encoder_ch_mult"]) - 1)
        return idx.view(b, H // f, W // f)

    @torch.no_grad()
    def decode_code(self, codes):
        """codes: (b, h, w) -> images (b, 3, H, W)."""
        b, h, w = codes.shape
        return self.decode(self.quantize.lookup(codes.reshape(b, h * w), (b, h, w)))

    def forward(self, x):
        zq, vq_loss, commit_loss, idx, zf = self.encode(x)
        return self.decode(zq), vq_loss, commit_loss, idx, zf


# ----------------------------------------------------------------------------------------------------------------
# GPT (c2i)
# ----------------------------------------------------------------------------------------------------------------

def ffn_hidden(cfg):
    hidden = 4 * cfg["dim"]
    hidden = int(2 * hidden / 3)
    if cfg.get("ffn_dim_multiplier") is not None:
        hidden = int(cfg["ffn_dim_multiplier"] * hidden)
    m = cfg["multiple_of"]
    return m * ((hidden + m - 1) // m)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, dim, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels, train):
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0]) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        f = ffn_hidden(cfg)
        self.w1 = nn.Linear(cfg["dim"], f, bias=False)
        self.w3 = nn.Linear(cfg["dim"], f, bias=False)
        self.w2 = nn.Linear(f, cfg["dim"], bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def precompute_freqs_cis_2d(grid, head_dim, base, cls_token_num):
    """(T + grid², head_dim/2, 2) table of (cos, sin); the T condition rows are all zero (spec §1 item 1, §3.7)."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(grid, dtype=torch.float32)
    f = torch.outer(t, freqs)  # (g, d/4)
    fg = torch.cat([f[:, None, :].expand(-1, grid, -1), f[None, :, :].expand(grid, -1, -1)], dim=-1)  # row | col
    cache = torch.stack([torch.cos(fg), torch.sin(fg)], dim=-1).flatten(0, 1)  # (g², d/2, 2)
    return torch.cat([torch.zeros(cls_token_num, half, 2), cache])


def apply_rotary_emb(x, freqs_cis):
    # x: (b, s, h, d); interleaved pairs (x[2j], x[2j+1])
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    fc = freqs_cis.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1], xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1]], dim=-1
    )
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["dim"]
        self.n_head, self.head_dim = cfg["n_head"], d // cfg["n_head"]
        self.wqkv = nn.Linear(d, 3 * d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x, freqs_cis):
        b, s, d = x.shape
        q, k, v = self.wqkv(x).split([d, d, d], dim=-1)
        q = q.view(b, s, self.n_head, self.head_dim)
        k = k.view(b, s, self.n_head, self.head_dim)
        v = v.view(b, s, self.n_head, self.head_dim)
        q = apply_rotary_emb(q, freqs_cis)
        k = apply_rotary_emb(k, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(o.transpose(1, 2).contiguous().view(b, s, d))


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg["dim"], cfg["norm_eps"])
        self.ffn_norm = RMSNorm(cfg["dim"], cfg["norm_eps"])

    def forward(self, x, freqs_cis):
        h = x + self.attention(self.attention_norm(x), freqs_cis)
        return h + self.feed_forward(self.ffn_norm(h))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg["model_type"] == "c2i" and cfg["cls_token_num"] == 1
        self.cfg = cfg
        d = cfg["dim"]
        self.cls_embedding = LabelEmbedder(cfg["num_classes"], d, cfg["class_dropout_prob"])
        self.tok_embeddings = nn.Embedding(cfg["vocab_size"], d)
        self.layers = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layer"])])
        self.norm = RMSNorm(d, cfg["norm_eps"])
        self.output = nn.Linear(d, cfg["vocab_size"], bias=False)
        grid = int(round(math.sqrt(cfg["block_size"])))
        assert grid * grid == cfg["block_size"]
        # not a registered buffer: the official state dict has no rotary table
        self.freqs_cis = precompute_freqs_cis_2d(grid, d // cfg["n_head"], cfg["rope_base"], cfg["cls_token_num"])
        self.apply(self._init)
        nn.init.constant_(self.output.weight, 0)  # official initialize_weights: zero LM head

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, labels, idx, train=False):
        """Teacher forcing: labels (b,), idx (b, s) image tokens fed at positions 1..s -> logits (b, s+1, V)."""
        x = torch.cat([self.cls_embedding(labels, train), self.tok_embeddings(idx)], dim=1)
        fc = self.freqs_cis[: x.shape[1]]
        for layer in self.layers:
            x = layer(x, fc)
        return self.output(self.norm(x)).float()

    @torch.no_grad()
    def generate(self, labels, cfg_scale=1.0, temperature=1.0, top_k=0, generator=None):
        """Plain full-recomputation sampler (slow, for checks only; the engine is the real sampler)."""
        b = labels.shape[0]
        n = self.cfg["block_size"]
        use_cfg = cfg_scale > 1.0
        lab = torch.cat([labels, torch.full_like(labels, self.cfg["num_classes"])]) if use_cfg else labels
        seq = torch.zeros(lab.shape[0], 0, dtype=torch.long)
        for i in range(n):
            logits = self.forward(lab, seq)[:, -1]
            if use_cfg:
                c, u = logits[:b], logits[b:]
                logits = u + cfg_scale * (c - u)
            logits = logits / max(temperature, 1e-5)
            if top_k > 0:
                v = torch.topk(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
                logits = torch.where(logits < v, torch.full_like(logits, -float("inf")), logits)
            tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            if use_cfg:
                tok = torch.cat([tok, tok])
            seq = torch.cat([seq, tok], dim=1)
        return seq[:b]
