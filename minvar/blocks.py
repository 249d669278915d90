"""The blocks of VAR's transformer: QK-norm self-attention, the FFN, and the block with AdaLN class conditioning.

Paper: Tian et al., "Visual Autoregressive Modeling", Section 3.2 (a GPT-2-like decoder with adaptive LayerNorm
conditioning on the class) and Section 4 / Table 3 (the ablation switches: AdaLN off, attention normalization off).
Official counterpart: `models/basic_var.py` (FFN, SelfAttention, AdaLNSelfAttn, AdaLNBeforeHead). Parameter and
buffer names are the official ones, so the released checkpoints load strictly.
minvar/var.py assembles these blocks into the model; `cfg` below is its `VARConfig` (the blocks read its fields).

Shape legend: B batch, L sequence length (Σ pn² of all scales, or one scale's pn² in cached sampling), C width,
H heads (named `num_heads` in code to avoid clashing with image height), hd = C / H head dim, S ≤ L the masked
prefix, D = C the class condition's width (`cond_BD`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability p, rescale by 1/(1-p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)  # (B, 1, 1)
        return x * keep.div_(1 - self.p)  # rescale the small (B, 1, 1) mask, not the (B, L, C) activations


class SelfAttention(nn.Module):
    """Multi-head attention with QK-norm: q, k L2-normalised per head, q scaled by a learned temperature.

    With `attn_l2_norm` the logits are cos(q, k) · exp(min(s_h, ln 100)), s_h initialised to ln 4, and the softmax
    scale is 1 (no 1/√hd): the temperature is learned instead. The official README says this "normalized attention"
    stabilises fp16 training. qkv has no bias of its own: q and v get learned biases, k a zero buffer.

    `attn_bias` is an additive (1, 1, S, S) mask over the first S ≤ L positions; the queries after S attend to
    every key, unmasked. VAR passes the block-causal mask without the finest scale (S = L - pn_K², 424 of the 680
    positions at 256px): the finest scale sees everything anyway, so two SDPA calls compute fewer scores than one
    masked L×L call and read a smaller mask (faster on a CPU, the same numbers to float32 rounding:
    docs/results.md#defaults-and-the-measurements-behind-them).
    NOTE (differs from official VAR): it makes one masked call over all L positions.
    """

    def __init__(self, width: int, num_heads: int, attn_drop: float, proj_drop: float, attn_l2_norm: bool,
                 attn_scale_mul: float = 0.25):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        else:
            # 0.25 / √hd is the official non-normalised scale (the config's default); 1.0 / √hd is GPT-2's
            self.scale = attn_scale_mul / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(width)), nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))  # persistent: the checkpoints carry it
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor], kv_cache: Optional[dict]) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))  # (3C,) laid out [q | k | v]
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, hd)
        if self.attn_l2_norm:
            temperature = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()  # (1, H, 1, 1)
            q = F.normalize(q, dim=-1).mul(temperature)
            k = F.normalize(k, dim=-1)
        if kv_cache is not None:  # sampling: this scale attends to itself and every cached coarser scale
            if "k" in kv_cache:
                k = torch.cat((kv_cache["k"], k), dim=2)  # (B, H, L_seen + l, hd)
                v = torch.cat((kv_cache["v"], v), dim=2)
            kv_cache["k"], kv_cache["v"] = k, v
        dropout = self.attn_drop if self.training else 0.0
        if attn_bias is None:  # no mask (cached generation): SDPA picks its fastest kernel (flash on CPU and GPU)
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale, dropout_p=dropout)  # (B, H, L, hd)
        else:
            attn_bias = attn_bias.to(q.dtype)  # SDPA needs the float mask in the query's dtype under autocast
            S = attn_bias.shape[-1]  # the mask may cover only the first S positions (see the class docstring)
            out = F.scaled_dot_product_attention(q[:, :, :S], k[:, :, :S], v[:, :, :S], attn_mask=attn_bias,
                                                 scale=self.scale, dropout_p=dropout)  # (B, H, S, hd)
            if S < L:  # the queries after S see every key: one unmasked call, then both parts side by side
                rest = F.scaled_dot_product_attention(q[:, :, S:], k, v, scale=self.scale, dropout_p=dropout)
                out = torch.cat((out, rest), dim=2)  # (B, H, L, hd)
        out = out.transpose(1, 2).reshape(B, L, C)  # (B, L, C)
        return self.proj_drop(self.proj(out))


class FFN(nn.Module):
    """fc1 → GELU (tanh approximation, as the official code) → fc2."""

    def __init__(self, width: int, hidden: int, drop: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class SharedAdaLin(nn.Linear):
    """The d36 shared AdaLN projection: class condition (B, C) -> (B, 1, 6, C), computed once for all blocks."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)  # (B, 1, 6, C)


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """AdaLN's affine step, x·(1 + scale) + shift, with (B, 1, C) scale and shift broadcast over the L positions.
    Written `mul(scale + 1).add(shift)` as the official code computes it, so the floats match its outputs."""
    return x.mul(scale + 1).add(shift)


class AdaLNBlock(nn.Module):
    """One transformer block with adaptive LayerNorm conditioning on the class (official `AdaLNSelfAttn`).

    From the condition come six C-vectors, in the official order gamma1, gamma2, scale1, scale2, shift1, shift2
    (NOT DiT's shift/scale/gate order; it matters when loading `ada_lin.1.weight`):
        x = x + gamma1 · attn(LN(x)·(1 + scale1) + shift1)
        x = x + gamma2 · ffn (LN(x)·(1 + scale2) + shift2)
    LN has no affine parameters: AdaLN supplies them.
    """

    def __init__(self, cfg: VARConfig, drop_path: float):
        super().__init__()
        C = cfg.width
        self.shared_aln = cfg.shared_aln
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = SelfAttention(C, cfg.num_heads, cfg.attn_drop_rate, cfg.drop_rate, cfg.attn_l2_norm,
                                  cfg.attn_scale_mul)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio), cfg.drop_rate)
        self.ln_without_affine = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        if cfg.shared_aln:
            # ada_gss: this block's learned offset ("gamma, scale, shift") to the shared (B, 1, 6, C) modulation;
            # the name is a key of the released d36 checkpoint, so it stays
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(C, 6 * C))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: Optional[torch.Tensor],
                kv_cache: Optional[dict] = None) -> torch.Tensor:
        """x (B, L, C); cond is the class vector (B, C), or the shared modulation (B, 1, 6, C) when shared_aln."""
        if self.shared_aln:
            modulation = self.ada_gss + cond  # (B, 1, 6, C)
        else:
            modulation = self.ada_lin(cond).view(-1, 1, 6, x.shape[-1])  # (B, 1, 6, C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = modulation.unbind(2)  # each (B, 1, C)
        h = self.attn(modulate(self.ln_without_affine(x), scale1, shift1), attn_bias, kv_cache)  # (B, L, C)
        x = x + self.drop_path(h.mul(gamma1))
        h = self.ffn(modulate(self.ln_without_affine(x), scale2, shift2))  # (B, L, C)
        return x + self.drop_path(h.mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    """The final AdaLN before the output head: LN(x)·(1 + scale) + shift, chunks in the order (scale, shift)."""

    def __init__(self, width: int, norm_eps: float):
        super().__init__()
        self.ln_without_affine = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, x.shape[-1]).unbind(2)  # each (B, 1, C)
        return modulate(self.ln_without_affine(x), scale, shift)


class LayerNormBlock(nn.Module):
    """The ablation block without AdaLN (config `adaln=False`): a plain pre-LN GPT block.

        x = x + attn(LN1(x)),  x = x + ffn(LN2(x)),  LN with learned affine (the usual GPT-2 block)
    The class is not an input here: it reaches the tokens only through the start token, as in a GPT. The forward
    takes (and ignores) `cond` so that the model can call either kind of block the same way.
    """

    def __init__(self, cfg: VARConfig, drop_path: float):
        super().__init__()
        C = cfg.width
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = SelfAttention(C, cfg.num_heads, cfg.attn_drop_rate, cfg.drop_rate, cfg.attn_l2_norm,
                                  cfg.attn_scale_mul)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio), cfg.drop_rate)
        self.ln1 = nn.LayerNorm(C, eps=cfg.norm_eps)  # affine: nothing else scales or shifts the normalised x
        self.ln2 = nn.LayerNorm(C, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: Optional[torch.Tensor],
                kv_cache: Optional[dict] = None) -> torch.Tensor:
        """x (B, L, C) -> (B, L, C); `cond` is unused (the class is already in the start token)."""
        x = x + self.drop_path(self.attn(self.ln1(x), attn_bias, kv_cache))  # (B, L, C)
        return x + self.drop_path(self.ffn(self.ln2(x)))


class LayerNormBeforeHead(nn.LayerNorm):
    """The final norm of the ablation without AdaLN: LayerNorm with learned affine; `cond` is ignored."""

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(x)
