"""The raster-scan next-token baseline: the "AR" row of VAR's ablation table, a GPT over one token map.

Paper: Tian et al., "Visual Autoregressive Modeling", Section 3.1 ("autoregressive modeling via next-token
prediction") and the first row of the ablation table: a VQGAN-style transformer that flattens ONE n×n token map in
raster order (row by row) and predicts token t from the class and tokens < t. Generation takes n² sequential steps
where VAR takes one step per scale; Section 3.1 also argues its cost is O(n⁶) without a KV cache (bench/bench_cost.py
measures it). The official repository has no such model; this one is written to be compared with minvar's VAR:
  * the tokens are those of the same VQVAE class with a one-scale schedule, `patch_nums=(n,)` (e.g. (8,) at 32 px),
    so AR and VAR see the same resolution and the same codebook size;
  * the same width / depth / heads / mlp_ratio knobs, init and FFN as `minvar.var` (so sizes can be matched), and
    the class embedding is the start token, as in VAR (the null class id = num_classes serves guidance);
  * the same top-k / top-p / classifier-free guidance helpers as VAR's sampler (`minvar.sampling`).
The block is a plain pre-LN GPT-2 block (LayerNorm with affine, causal softmax attention with 1/√hd), i.e. what
VQGAN's and LlamaGen's transformers use, with no AdaLN and no attention normalization.

Sequence of length T = n² (input position t predicts token t, as in VAR there is no separate shift):
    position 0        : class embedding                      (the start token)
    position t ≥ 1    : token_embed(token t-1)
    every position    : + pos_1TC[t]

Shape legend: B batch, n side of the token map, T = n² tokens, t a position, C width, H heads (`num_heads`),
hd = C / H head dim, V codebook size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from minvar.sampling import Labels, make_generator, resolve_labels, top_k_top_p_
from minvar.blocks import FFN



@dataclass
class ARConfig:
    depth: int = 16  # number of transformer blocks (the knob VARConfig scales with)
    width: int = 0  # C; 0 means 64·depth, the same rule as VARConfig
    num_heads: int = 0  # 0 means heads = depth, as VARConfig
    mlp_ratio: float = 4.0  # FFN hidden width = mlp_ratio · C
    num_classes: int = 1000  # class ids 0..num_classes-1; id num_classes is the null class (guidance, dropout)
    vocab_size: int = 4096  # V: must equal the one-scale tokenizer's codebook size
    grid_size: int = 16  # n: the token map is n×n, T = n² tokens (the tokenizer's patch_nums must be (n,))
    drop_rate: float = 0.0  # dropout after attention/FFN projections
    cond_drop_rate: float = 0.1  # label dropout in training, so that the null class learns the unconditional model
    norm_eps: float = 1e-6  # LayerNorm epsilon (VAR's)
    init_head: float = 0.02  # scale of the output head at init (initial loss ≈ ln V), as VARConfig
    init_std: float = -1.0  # std of Linear/Embedding weights; -1 means √(1/(3C)), as VARConfig

    def resolved(self) -> "ARConfig":
        """The config with the width and head rules filled in."""
        width = self.width or 64 * self.depth
        heads = self.num_heads or self.depth
        if width % heads:
            raise ValueError(f"width {width} is not divisible by num_heads {heads}")
        return ARConfig(**{**asdict(self), "width": width, "num_heads": heads})


# Named configurations. "d16" has VAR-d16's depth and width (the paper's 227M AR has about that shape);
# "tiny" matches VAR's "tiny" preset (depth 4, width 128, FFN 2×) on the 32px one-scale tokenizer (8×8 tokens).
AR_PRESETS = {
    "d16": ARConfig(depth=16),
    "tiny": ARConfig(depth=4, width=128, num_heads=2, mlp_ratio=2.0, num_classes=15, vocab_size=512, grid_size=8),
}


class CausalSelfAttention(nn.Module):
    """Multi-head softmax attention with a causal mask (SDPA's is_causal), and a growing KV cache for sampling."""

    def __init__(self, width: int, num_heads: int, proj_drop: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, kv_cache: Optional[dict] = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, hd)
        if kv_cache is not None:  # sampling: the new position attends to every cached earlier one
            if "k" in kv_cache:
                if T > 1:
                    raise ValueError("a KV cache that holds earlier positions takes one new position at a time")
                k = torch.cat((kv_cache["k"], k), dim=2)  # (B, H, T_seen + 1, hd)
                v = torch.cat((kv_cache["v"], v), dim=2)
            kv_cache["k"], kv_cache["v"] = k, v
        # causal mask among the new positions; one new position after a cached prefix needs none (all keys earlier)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)  # (B, H, T, hd), scale 1/√hd
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, C)))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN GPT-2 block: x + attn(LN(x)), then x + ffn(LN(x)); LayerNorm with learned affine."""

    def __init__(self, cfg: ARConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg.width, cfg.num_heads, cfg.drop_rate)
        self.ln2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.ffn = FFN(cfg.width, round(cfg.width * cfg.mlp_ratio), cfg.drop_rate)  # VAR's FFN (tanh GELU)

    def forward(self, x: torch.Tensor, kv_cache: Optional[dict] = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), kv_cache)  # (B, T, C)
        return x + self.ffn(self.ln2(x))


class AR(nn.Module):
    """Class-conditional raster-scan next-token prediction over one n×n token map."""

    def __init__(self, cfg: ARConfig = None):
        super().__init__()
        self.config = cfg = (cfg or ARConfig()).resolved()
        self.num_classes, self.grid_size = cfg.num_classes, cfg.grid_size
        self.T = cfg.grid_size ** 2
        C = cfg.width
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # the start token; row num_classes = null class
        self.token_embed = nn.Embedding(cfg.vocab_size, C)  # token ids (VAR embeds f̂ vectors instead)
        self.pos_1TC = nn.Parameter(torch.empty(1, self.T, C))  # learned absolute positions (raster order)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.ln_f = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """VAR's init (`minvar.var.VAR.init_weights` without its AdaLN part), so both start alike: weights
        ~ trunc_normal(√(1/3C)), biases 0, output projections ÷√(2·depth) (GPT-2), head ×init_head."""
        cfg = self.config
        std = cfg.init_std if cfg.init_std >= 0 else math.sqrt(1 / cfg.width / 3)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        nn.init.trunc_normal_(self.pos_1TC, std=std)
        self.head.weight.mul_(cfg.init_head)
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * cfg.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * cfg.depth))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AR":
        """Build a named configuration (`AR_PRESETS`), optionally changing some fields."""
        if name not in AR_PRESETS:
            raise ValueError(f"unknown AR preset {name!r}; choose one of {sorted(AR_PRESETS)}")
        return cls(ARConfig(**{**asdict(AR_PRESETS[name]), **overrides}))

    # ----------------------------------------------------------------------------------------------------------------
    def embed(self, label_B: torch.Tensor, idx_Bt: torch.Tensor, start: int) -> torch.Tensor:
        """Inputs of positions start .. start+t: the class token at position 0, token_embed(previous token)
        elsewhere. `idx_Bt` holds the tokens of positions start-1 .. start+t-1 that exist (B, t or t+1)."""
        pieces = []
        if start == 0:
            pieces.append(self.class_emb(label_B).unsqueeze(1))  # (B, 1, C)
        pieces.append(self.token_embed(idx_Bt))  # (B, t, C)
        x_BtC = torch.cat(pieces, dim=1)  # (B, t', C)
        return x_BtC + self.pos_1TC[:, start:start + x_BtC.shape[1]]

    def forward(self, label_B: torch.Tensor, idx_BT: torch.Tensor,
                drop_mask_B: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher-forced training forward: class ids (B,) and the raster-order tokens (B, T) -> logits (B, T, V).

        Logits at position t predict token t from the class and tokens < t; the last token is never an input.
        Label dropout as VAR's forward: `drop_mask_B` (or, in training mode without one, cond_drop_rate).
        """
        B, T = idx_BT.shape
        if T != self.T:
            raise ValueError(f"expected {self.T} tokens per image (a {self.grid_size}×{self.grid_size} map), got {T}: "
                             f"use the one-scale tokenizer with patch_nums=({self.grid_size},)")
        if drop_mask_B is None and self.training and self.config.cond_drop_rate > 0:
            drop_mask_B = torch.rand(B, device=label_B.device) < self.config.cond_drop_rate
        if drop_mask_B is not None:
            label_B = torch.where(drop_mask_B, torch.full_like(label_B, self.num_classes), label_B)
        x_BTC = self.embed(label_B, idx_BT[:, :-1], 0)  # (B, T, C)
        for block in self.blocks:
            x_BTC = block(x_BTC)
        return self.head(self.ln_f(x_BTC)).float()  # (B, T, V)

    def forward_step(self, x_BtC: torch.Tensor, kv_caches: Optional[List[dict]]) -> torch.Tensor:
        """Blocks + head on embedded inputs (B, t, C) -> logits (B, t, V); with `kv_caches`, one position at a time
        after the first call, attending to the cached earlier positions."""
        for i, block in enumerate(self.blocks):
            x_BtC = block(x_BtC, kv_caches[i] if kv_caches is not None else None)
        return self.head(self.ln_f(x_BtC)).float()

    def parameter_groups(self, weight_decay: float) -> List[dict]:
        """AdamW groups as VAR's: no decay for 1-D tensors, biases and positions; decay for every matrix."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            skip = param.ndim == 1 or name.endswith("bias") or "pos_1TC" in name
            (no_decay if skip else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay, "decay": True},
                {"params": no_decay, "weight_decay": 0.0, "decay": False}]


# --------------------------------------------------------------------------------------------------------------------
# sampling
@torch.no_grad()
def sample_tokens(ar: AR, label_B: torch.Tensor, cfg: float = 0.0, top_k: int = 0, top_p: float = 0.0,
                  generator: Optional[torch.Generator] = None, use_cache: bool = True) -> torch.Tensor:
    """Raster-scan generation, one token per transformer call: T = n² sequential steps. Returns (B, T).

    Guidance as VAR's sampler at its last scale: logits = (1 + cfg)·conditional − cfg·unconditional, both halves
    in one batch. NOTE (differs from VAR's ramp): VAR ramps the weight with the scale index (t = cfg·k/(K-1));
    a raster scan has no coarse-to-fine order to ramp over, so the weight is constant (as LlamaGen's).
    With `use_cache=False` every step recomputes the whole prefix (the O(n⁶) way); the tokens are the same.
    """
    B = label_B.shape[0]
    guided = cfg != 0
    labels = torch.cat((label_B, torch.full_like(label_B, ar.num_classes))) if guided else label_B  # (2B,) or (B,)
    kv_caches = [dict() for _ in ar.blocks] if use_cache else None
    idx_Bt = label_B.new_zeros(B, 0)  # the tokens sampled so far
    for t in range(ar.T):
        prefix = idx_Bt.repeat(2, 1) if guided else idx_Bt  # (2B, t) or (B, t)
        if use_cache:  # only the newest position: the class token, then the token sampled last
            x = ar.embed(labels, prefix[:, t - 1:t], t) if t > 0 else ar.embed(labels, prefix, 0)  # (·, 1, C)
        else:  # the whole prefix again
            x = ar.embed(labels, prefix, 0)  # (·, t + 1, C)
        logits = ar.forward_step(x, kv_caches)[:, -1:]  # (·, 1, V) the logits of position t
        if guided:
            logits = (1 + cfg) * logits[:B] - cfg * logits[B:]  # (B, 1, V)
        top_k_top_p_(logits, top_k, top_p)
        next_B1 = torch.multinomial(logits.softmax(dim=-1)[:, 0], 1, generator=generator)  # (B, 1)
        idx_Bt = torch.cat((idx_Bt, next_B1), dim=1)  # (B, t + 1)
    return idx_Bt  # (B, T)


@torch.no_grad()
def generate_ar(ar: AR, vae, labels: Labels, cfg: float = 0.0, top_k: int = 0, top_p: float = 0.0,
                seed: Optional[int] = None, num_samples: Optional[int] = None, use_cache: bool = True,
                return_tokens: bool = False):
    """Class-conditional raster-scan generation: labels -> images (B, 3, H, W) in [0, 1] (as `minvar.generate`).

    `vae` must be a one-scale tokenizer, `patch_nums=(n,)`, with the AR's codebook size.
    """
    check_ar_pair(ar, vae)
    device = ar.pos_1TC.device
    generator = make_generator(seed, device)
    label_B = resolve_labels(ar, labels, num_samples, device, generator)
    idx_BT = sample_tokens(ar, label_B, cfg, top_k, top_p, generator, use_cache)
    images = vae.idx_to_img([idx_BT]).add(1).mul(0.5)  # one scale: Algorithm 2 with K = 1
    return (images, idx_BT) if return_tokens else images


def check_ar_pair(ar: AR, vae) -> None:
    """The AR model works on the tokens of a one-scale tokenizer with its codebook and grid size."""
    if tuple(vae.patch_nums) != (ar.grid_size,) or vae.quantize.vocab_size != ar.config.vocab_size:
        raise ValueError(f"the AR model expects a one-scale tokenizer with patch_nums=({ar.grid_size},) and "
                         f"{ar.config.vocab_size} codes, got patch_nums={tuple(vae.patch_nums)} and "
                         f"{vae.quantize.vocab_size} codes: train one with `train_tokenizer.py --patch-nums "
                         f"{ar.grid_size}`")
