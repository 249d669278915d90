"""The next-scale prediction transformer of VAR.

Paper: Tian et al., "Visual Autoregressive Modeling", Section 3.1-3.2 and Figure 4: a GPT-2-like decoder that
predicts ALL tokens of scale k at once from the class and the scales < k, with a block-causal mask, AdaLN class
conditioning and normalized (QK-norm) attention.
Official counterpart: `models/var.py` (VAR); its blocks (official `models/basic_var.py`) are in minvar/blocks.py.
Parameter and buffer names are the official ones, so the released checkpoints load strictly.

Input sequence of length L = Σ pn² (680 for the 256px schedule):
    position 0          : class embedding + pos_start              (the "start" token; scale 1 has no visual input)
    positions of scale k: word_embed(area_down(f̂_{<k}, pn_k))        (k ≥ 2, from `VQVAE.idx_to_var_input`)
    every position      : + lvl_embed(scale id) + pos_1LC
The logits at scale k's positions predict scale k's tokens (no shift between input and target).

Shape legend: B batch, K number of scales, k scale index, pn side of scale k's map, L = Σ pn², l = pn² (one scale),
C width, H heads (named `num_heads` in code to avoid clashing with image height), hd = C / H head dim,
Cvae codebook dim (Cv in a suffix, as `x_BLCv`), V codebook size, D = C the class condition's width (`cond_BD`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from minvar.blocks import AdaLNBeforeHead, AdaLNBlock, LayerNormBeforeHead, LayerNormBlock, SharedAdaLin
from minvar.quantizer import SCHEDULE_256, SCHEDULE_512, SCHEDULE_TINY


@dataclass
class VARConfig:
    depth: int = 16  # number of transformer blocks; the paper's single scaling knob
    width: int = 0  # C; 0 means the official rule 64·depth (so a head is always 64 wide)
    num_heads: int = 0  # 0 means the official rule heads = depth
    mlp_ratio: float = 4.0  # FFN hidden width = mlp_ratio · C
    num_classes: int = 1000  # class ids 0..num_classes-1; id num_classes is the null class (guidance, dropout)
    vocab_size: int = 4096  # V: must equal the tokenizer's codebook size
    code_dim: int = 32  # Cvae: must equal the tokenizer's code dimension
    patch_nums: Tuple[int, ...] = SCHEDULE_256  # must equal the tokenizer's schedule
    drop_rate: float = 0.0  # dropout after attention/FFN projections (0 officially)
    attn_drop_rate: float = 0.0  # dropout on attention weights (0 officially)
    drop_path_rate: float = -1.0  # stochastic depth of the last block; -1 means the official 0.1·depth/24
    norm_eps: float = 1e-6  # LayerNorm epsilon
    shared_aln: bool = False  # one AdaLN projection shared by all blocks plus a per-block offset (d36 only)
    attn_l2_norm: bool = True  # QK-norm with a learned per-head temperature (the released checkpoints use it);
    # False: the paper's ablation without "attention normalization", plain softmax(q·k·scale) attention
    attn_scale_mul: float = 0.25  # without attn_l2_norm, the softmax scale is attn_scale_mul / √hd: 0.25 is the
    # official temperature; 1.0 is GPT-2's 1/√hd, as minvar.ar uses (tutorial 07 sets it so that its rows 1 and 2
    # differ only in the prediction order). Unused with attn_l2_norm, whose temperature is learned.
    adaln: bool = True  # AdaLN class conditioning in every block and before the head; False: plain LayerNorm with
    # learned affine and the class enters only through the start token (the "AR to VAR" row of the ablation table)
    cond_drop_rate: float = 0.1  # label dropout in training, so that the null class learns the unconditional model
    init_adaln: float = 0.5  # scale of the AdaLN scale/shift rows at init
    init_adaln_gamma: float = 1e-5  # scale of the AdaLN gamma rows at init (the d16/d20 recipes use 1e-3)
    init_head: float = 0.02  # scale of the output head at init (initial loss ≈ ln V)
    init_std: float = -1.0  # std of Linear/Embedding weights; -1 means √(1/(3C))

    def resolved(self) -> "VARConfig":
        """The config with the official defaults filled in (width, heads, drop path)."""
        width = self.width or 64 * self.depth
        heads = self.num_heads or self.depth
        drop_path = self.drop_path_rate if self.drop_path_rate >= 0 else 0.1 * self.depth / 24
        if width % heads:
            raise ValueError(f"width {width} is not divisible by num_heads {heads}")
        if self.shared_aln and not self.adaln:
            raise ValueError("shared_aln=True shares the AdaLN projection, so it needs adaln=True")
        return VARConfig(**{**asdict(self), "width": width, "num_heads": heads, "drop_path_rate": drop_path})


# Named configurations (as DiT's DiT_models). dN are the released ImageNet models; "tiny" is the CPU quickstart.
VAR_PRESETS = {
    "d16": VARConfig(depth=16, init_adaln_gamma=1e-3),
    "d20": VARConfig(depth=20, init_adaln_gamma=1e-3),
    "d24": VARConfig(depth=24, init_adaln_gamma=1e-4),
    "d30": VARConfig(depth=30, init_adaln_gamma=1e-5),
    "d36": VARConfig(depth=36, shared_aln=True, patch_nums=SCHEDULE_512, init_adaln_gamma=5e-6),
    # tiny: the CPU quickstart. A half-width FFN (mlp_ratio 2; the official models use 4) buys more steps per CPU
    # minute at no loss in sample quality (docs/results.md#defaults-and-the-measurements-behind-them).
    "tiny": VARConfig(depth=4, width=128, num_heads=2, mlp_ratio=2.0, num_classes=15, vocab_size=512, code_dim=16,
                      patch_nums=SCHEDULE_TINY, drop_path_rate=0.0, init_adaln_gamma=1e-3),
    # small: tiny's architecture at depth 2, width 64, for small real folders at a few CPU-minutes: the
    # compute-optimal size of a depth ladder swept at equal compute (docs/results.md#real-photos).
    "small": VARConfig(depth=2, width=64, num_heads=2, mlp_ratio=2.0, num_classes=15, vocab_size=512, code_dim=16,
                       patch_nums=SCHEDULE_TINY, drop_path_rate=0.0, init_adaln_gamma=1e-3),
}


def block_causal_mask(patch_nums: Sequence[int]) -> torch.Tensor:
    """The attention bias of next-scale prediction: 0 where the key's scale ≤ the query's scale, -inf elsewhere.

    A token sees every token of its own scale (all of one scale are predicted in parallel) and of all coarser
    scales. Shape (1, 1, L, L). Figure 4 of the paper; official var.py:105-112.
    """
    level_L = torch.cat([torch.full((pn * pn,), k) for k, pn in enumerate(patch_nums)])  # (L,) scale id of each token
    visible = level_L[:, None] >= level_L[None, :]  # (L, L) query row, key column
    return torch.zeros(len(level_L), len(level_L)).masked_fill_(~visible, float("-inf"))[None, None]  # (1, 1, L, L)


class VAR(nn.Module):
    """Class-conditional next-scale prediction (official `VAR`)."""

    def __init__(self, cfg: VARConfig = None):
        super().__init__()
        self.config = cfg = (cfg or VARConfig()).resolved()
        C, V = cfg.width, cfg.vocab_size
        self.patch_nums = tuple(cfg.patch_nums)
        self.num_classes, self.num_scales = cfg.num_classes, len(self.patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        # (start, end) of each scale in the flattened sequence, e.g. (0,1) (1,5) (5,14) ... for the 256px schedule
        ends = list(itertools.accumulate(pn * pn for pn in self.patch_nums))
        self.begin_ends = list(zip([0] + ends[:-1], ends))
        init_std = math.sqrt(1 / C / 3)

        # 1. input embeddings
        self.word_embed = nn.Linear(cfg.code_dim, C)  # maps f̂ vectors (Cvae) to the width
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # row num_classes is the null class
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))  # added to the start (class) token
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))  # absolute position of every token of every scale
        nn.init.trunc_normal_(self.pos_start, std=init_std)
        nn.init.trunc_normal_(self.pos_1LC, std=init_std)
        self.lvl_embed = nn.Embedding(self.num_scales, C)  # which scale a token belongs to
        # Persistent buffers, as the released checkpoints carry them (docs/official_model.md#checkpoint-buffers).
        level_1L = torch.cat([torch.full((pn * pn,), k) for k, pn in enumerate(self.patch_nums)]).view(1, self.L)
        self.register_buffer("lvl_1L", level_1L)  # (1, L) scale id of each position
        self.register_buffer("attn_bias_for_masking", block_causal_mask(self.patch_nums))  # (1, 1, L, L)

        # 2. transformer blocks
        if cfg.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(C, 6 * C))
        # linear 0 → max over the blocks (block 0 gets 0), as torch.linspace; in Python so it also works on 'meta'
        drop_paths = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        block_class = AdaLNBlock if cfg.adaln else LayerNormBlock  # the paper's ablation switch ("AR to VAR" row)
        self.blocks = nn.ModuleList([block_class(cfg, drop_paths[i]) for i in range(cfg.depth)])

        # 3. output head
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps) if cfg.adaln else LayerNormBeforeHead(C, eps=cfg.norm_eps)
        self.head = nn.Linear(C, V)
        self.init_weights()

    # ----------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """The official `VAR.init_weights` (docs/official_model.md#init-rules): small logits, near-identity blocks.

        Linear/Embedding weights ~ trunc_normal(√(1/3C)), biases 0; head ×init_head so the first loss is ≈ ln V;
        attention/FFN output projections ÷√(2·depth) (GPT-2); AdaLN scale/shift rows ×init_adaln and gamma rows
        ×init_adaln_gamma, so every block starts close to the identity. pos_start / pos_1LC keep their init.
        """
        cfg = self.config
        std = cfg.init_std if cfg.init_std >= 0 else math.sqrt(1 / cfg.width / 3)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=std)
        self.head.weight.mul_(cfg.init_head)
        self.head.bias.zero_()
        if cfg.adaln:  # without AdaLN the LayerNorms keep PyTorch's init (weight 1, bias 0)
            self.head_nm.ada_lin[-1].weight.mul_(cfg.init_adaln)
            self.head_nm.ada_lin[-1].bias.zero_()
        C = cfg.width
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * cfg.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * cfg.depth))
            if not cfg.adaln:
                continue
            if cfg.shared_aln:
                block.ada_gss.data[:, :, 2:].mul_(cfg.init_adaln)  # scale and shift
                block.ada_gss.data[:, :, :2].mul_(cfg.init_adaln_gamma)  # gamma
            else:
                block.ada_lin[-1].weight[2 * C:].mul_(cfg.init_adaln)  # scale and shift rows
                block.ada_lin[-1].weight[:2 * C].mul_(cfg.init_adaln_gamma)  # gamma rows
                block.ada_lin[-1].bias.zero_()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VAR":
        """Build a named configuration (`VAR_PRESETS`), optionally changing some fields."""
        if name not in VAR_PRESETS:
            raise ValueError(f"unknown VAR preset {name!r}; choose one of {sorted(VAR_PRESETS)}")
        return cls(VARConfig(**{**asdict(VAR_PRESETS[name]), **overrides}))

    # ----------------------------------------------------------------------------------------------------------------
    @staticmethod
    def check_labels(label_B: torch.Tensor, num_classes: int) -> None:
        """Class ids must be in [0, num_classes]; num_classes itself is the null (unconditional) class. Static, so
        that `sampling.resolve_labels` runs the same check for any model with `num_classes`."""
        if label_B.dtype not in (torch.int64, torch.int32) or label_B.ndim != 1:
            raise ValueError(f"labels must be a 1-D integer tensor, got {label_B.dtype} of shape {tuple(label_B.shape)}")
        if label_B.numel() and (label_B.min() < 0 or label_B.max() > num_classes):
            bad = sorted(set(label_B[(label_B < 0) | (label_B > num_classes)].tolist()))
            raise ValueError(f"unknown class id(s) {bad}: class ids must be in 0..{num_classes - 1} "
                             f"(and {num_classes} = unconditional)")

    def condition(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """What the blocks receive: the class vector, or the shared (B, 1, 6, C) modulation when shared_aln."""
        return self.shared_ada_lin(cond_BD) if self.config.shared_aln else cond_BD

    def get_logits(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Final AdaLN then the head, in fp32 (official `get_logits` casts around head_nm): (B, L, C) -> (B, L, V)."""
        return self.head(self.head_nm(x_BLC.float(), cond_BD.float())).float()

    def forward(self, label_B: torch.Tensor, x_BLCv: torch.Tensor,
                drop_mask_B: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher-forced training forward: class ids (B,) and `VQVAE.idx_to_var_input` (B, L-1, Cvae) -> (B, L, V).

        Label dropout (which teaches the null class the unconditional model used by guidance) replaces the labels
        where `drop_mask_B` is True; without a mask, it is drawn with probability cond_drop_rate in training mode.
        The training script passes its own mask, drawn from a per-step generator, so that runs resume exactly.
        NOTE (differs from official VAR): no label is dropped in eval mode; the official code drops them whenever
        cond_drop_rate > 0, so its eval-mode forward is random (docs/official_model.md, label dropout).
        """
        self.check_labels(label_B, self.num_classes)
        B, L = x_BLCv.shape[0], x_BLCv.shape[1] + 1
        if drop_mask_B is None and self.training and self.config.cond_drop_rate > 0:
            drop_mask_B = torch.rand(B, device=label_B.device) < self.config.cond_drop_rate
        if drop_mask_B is not None:
            label_B = torch.where(drop_mask_B, torch.full_like(label_B, self.num_classes), label_B)
        cond_BD = self.class_emb(label_B)  # (B, C): the start token AND the AdaLN condition
        start_B1C = cond_BD.unsqueeze(1) + self.pos_start  # (B, 1, C)
        x_BLC = torch.cat((start_B1C, self.word_embed(x_BLCv.float())), dim=1)  # (B, L, C)
        x_BLC = x_BLC + self.lvl_embed(self.lvl_1L[:, :L]) + self.pos_1LC[:, :L]  # (B, L, C)
        # block-causal mask; the finest scale sees every position, so at full length it needs no mask rows
        S = self.begin_ends[-1][0] if L == self.L and self.num_scales > 1 else L  # L - pn_K² (424 at 256px)
        attn_bias = self.attn_bias_for_masking[:, :, :S, :S]  # (1, 1, S, S)
        cond = self.condition(cond_BD)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond, attn_bias)
        return self.get_logits(x_BLC, cond_BD)  # (B, L, V)

    def forward_scale(self, x_BlC: torch.Tensor, cond_BD: torch.Tensor, kv_caches: List[dict]) -> torch.Tensor:
        """One step of KV-cached generation: the embedded inputs of ONE scale (B, l, C) -> its logits (B, l, V).

        No mask is needed: the cache holds exactly the coarser scales, and within a scale every token sees every
        other, which is what the block-causal mask allows. `kv_caches` is one dict per block, grown in place.
        """
        cond = self.condition(cond_BD)
        for block, cache in zip(self.blocks, kv_caches):
            x_BlC = block(x_BlC, cond, None, cache)
        return self.get_logits(x_BlC, cond_BD)  # (B, l, V)

    def embed_scale_input(self, scale_index: int, next_BlCv: torch.Tensor) -> torch.Tensor:
        """word_embed + level + position embeddings of scale k's input (k ≥ 1): (B, l, Cvae) -> (B, l, C)."""
        begin, end = self.begin_ends[scale_index]
        position_1lC = self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]  # (1, l, C)
        return self.word_embed(next_BlCv.float()) + position_1lC

    def embed_start(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """The input of the first scale: class vector + pos_start + level/position embedding: (B, C) -> (B, 1, C)."""
        position_11C = self.lvl_embed(self.lvl_1L[:, :1]) + self.pos_1LC[:, :1]  # (1, 1, C)
        return cond_BD.unsqueeze(1) + self.pos_start + position_11C

    def parameter_groups(self, weight_decay: float) -> List[dict]:
        """AdamW groups as the official trainer: no decay for 1-D tensors, biases, position/level embeddings,
        temperatures, AdaLN offsets; decay for every matrix (class_emb, word_embed and head weights included)."""
        no_decay_names = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss", "gamma", "beta")
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            skip = param.ndim == 1 or name.endswith("bias") or any(word in name for word in no_decay_names)
            (no_decay if skip else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay, "decay": True},
                {"params": no_decay, "weight_decay": 0.0, "decay": False}]
