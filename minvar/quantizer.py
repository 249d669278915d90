"""The multi-scale residual quantizer of VAR: Algorithms 1 and 2, and the Φ convolutions.

Paper: Tian et al., "Visual Autoregressive Modeling", Section 3.2 and Algorithms 1-2.
Official counterpart: `models/quant.py` (`VectorQuantizer2`, `Phi`, `PhiPartiallyShared`).

One latent map f (B, Cvae, h, w) is described by K token maps of growing side pn_1 < ... < pn_K = h.
Each scale quantizes what the coarser scales have not yet explained (the residual), with ONE codebook
shared by all scales:

    Algorithm 1 (encode):  f_rest = f, f_hat = 0
        for k in 1..K:   z_k   = area_down(f_rest, pn_k)            # what is left, seen at scale k
                         r_k   = nearest_code(z_k)                   # the k-th token map
                         h_k   = Φ_k(bicubic_up(embedding(r_k), h))  # its contribution at full size
                         f_hat += h_k ;  f_rest -= h_k
    Algorithm 2 (decode):  f_hat = Σ_k Φ_k(bicubic_up(embedding(r_k), h))

Shape legend: B batch, K number of scales, k scale index, pn side of scale k's token map,
L = Σ pn², Cvae codebook dimension, V codebook size, h = w latent side (= pn_K). In name suffixes C means Cvae,
l = pn² (one scale) and N a flattened count of vectors.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# The scale schedules (sides pn_1 < ... < pn_K of the K token maps), defined here once and imported by the tokenizer
# and the transformer, which must use the same one. Paper Section 3.2 and official `patch_nums`.
SCHEDULE_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # 256px images, 16×16 latent: L = 680 tokens
SCHEDULE_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)  # 512px images (VAR-d36), same tokenizer weights: L = 2240
SCHEDULE_TINY = (1, 2, 3, 4, 6, 8)  # minvar's CPU quickstart: 32px images, 8×8 latent, L = 130


def phi_index_per_scale(num_scales: int, num_phis: int) -> List[int]:
    """Which of the `num_phis` Φ convolutions each of the `num_scales` scales uses.

    The official rule (quant.py, `PhiPartiallyShared`): place `num_phis` ticks evenly in (0, 1) and give scale k
    the tick nearest to k / (K - 1). With 4 Φs the ticks are linspace(1/12, 11/12, 4), otherwise
    linspace(1/(2n), 1 - 1/(2n), n).
    The arithmetic MUST be float64 numpy: for K=10 scales 2 and 7 sit exactly half-way between two ticks, and
    float64 rounding (not float32) decides them. The result for the released VAE is [0,0,1,1,1,2,2,3,3,3].
    """
    if num_phis == 1:
        return [0] * num_scales  # one Φ shared by every scale
    margin = 1 / (3 * num_phis) if num_phis == 4 else 1 / (2 * num_phis)
    ticks = np.linspace(margin, 1 - margin, num_phis)  # float64, as the official code
    where = [k / (num_scales - 1) if num_scales > 1 else 0.0 for k in range(num_scales)]
    return [int(np.argmin(np.abs(ticks - at))) for at in where]


class Phi(nn.Conv2d):
    """Φ: a 3×3 convolution blended with the identity, Φ(h) = (1 - r)·h + r·conv(h), with r = 0.5 (quant.py `Phi`).

    It repairs the blur that bicubic upsampling of a coarse token map leaves behind, and is applied AFTER upsampling,
    at the full latent size, in every path (encode, decode, teacher forcing, sampling).
    """

    def __init__(self, channels: int, residual_ratio: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.residual_ratio = abs(residual_ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.residual_ratio) + super().forward(h_BChw).mul_(self.residual_ratio)


class PhiBank(nn.Module):
    """The n Φ convolutions and the scale → Φ table (n = 1: shared, n = K: one per scale, the official VAE: n = 4).

    The state_dict keys (`qresi_ls.{i}.weight`) are those of the official `PhiPartiallyShared`.
    """

    def __init__(self, channels: int, num_phis: int, num_scales: int, residual_ratio: float):
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(channels, residual_ratio) for _ in range(num_phis)])
        self.table = phi_index_per_scale(num_scales, num_phis)  # scale index -> Φ index

    def forward(self, h_BChw: torch.Tensor, scale_index: int) -> torch.Tensor:
        return self.qresi_ls[self.table[scale_index]](h_BChw)


class MultiScaleQuantizer(nn.Module):
    """Residual quantization of a latent map at K scales with one shared codebook (official `VectorQuantizer2`)."""

    def __init__(self, vocab_size: int, code_dim: int, patch_nums: Sequence[int], beta: float = 0.25,
                 phi_ratio: float = 0.5, num_phis: int = 4):
        super().__init__()
        self.vocab_size, self.code_dim, self.beta = vocab_size, code_dim, beta
        self.patch_nums = tuple(int(pn) for pn in patch_nums)
        if list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ValueError(f"patch_nums must strictly grow from coarse to fine, got {self.patch_nums}")
        num_phis = num_phis if num_phis > 0 else len(self.patch_nums)  # 0 means one Φ per scale, as official
        self.embedding = nn.Embedding(vocab_size, code_dim)  # the single codebook shared by all scales
        # Small uniform init (taming/VQGAN): with N(0, 1) codes far from the encoder's outputs, a few codes would win
        # every lookup from the first step on (collapse). Loaded checkpoints overwrite it.
        nn.init.uniform_(self.embedding.weight, -1.0 / vocab_size, 1.0 / vocab_size)
        self.quant_resi = PhiBank(code_dim, num_phis, len(self.patch_nums), phi_ratio)
        # How often each code was picked at each scale (EMA). The official checkpoint carries it as a buffer;
        # minvar's tokenizer training fills it to log codebook usage and to find dead codes.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    # ----------------------------------------------------------------------------------------------------------------
    # small pieces shared by every path
    def check_latent(self, f_BChw: torch.Tensor) -> None:
        """A scale schedule only fits latents whose side equals its last entry (official assert, quant.py:144)."""
        if f_BChw.shape[-1] != self.patch_nums[-1] or f_BChw.shape[-2] != self.patch_nums[-1]:
            raise ValueError(
                f"the latent map is {tuple(f_BChw.shape[-2:])} but the scale schedule {self.patch_nums} ends at "
                f"{self.patch_nums[-1]}: the last scale must be the full latent. Use images of side "
                f"{self.patch_nums[-1]} × the VAE's downsample factor, or a schedule ending at {f_BChw.shape[-1]}.")

    def nearest_code(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector (L2) for every position: (B, Cvae, pn, pn) -> (B, pn*pn).

        Computed as ||z||² + ||e||² - 2 z·e with one `addmm_`, in fp32, exactly as the official code: another
        summation order (e.g. torch.cdist) flips a few near-tied tokens (docs/official_model.md#nearest-code).
        """
        B, C, ph, pw = z_BChw.shape
        z_NC = z_BChw.permute(0, 2, 3, 1).reshape(-1, C)  # (B*pn*pn, Cvae), row-major (h, w)
        return self.squared_distances(z_NC).argmin(dim=1).view(B, ph * pw)  # (B, pn*pn)

    def squared_distances(self, z_NC: torch.Tensor) -> torch.Tensor:
        """||z - e||² of N vectors to all V codes, (N, Cvae) -> (N, V), in the official summation order (above)."""
        z_NC = z_NC.float()
        codebook_VC = self.embedding.weight.detach().float()
        distance_NV = z_NC.square().sum(dim=1, keepdim=True) + codebook_VC.square().sum(dim=1)
        return distance_NV.addmm_(z_NC, codebook_VC.T, alpha=-2, beta=1)  # (N, V)

    def upsampled_embedding(self, idx_Bl: torch.Tensor, scale_index: int, size: int) -> torch.Tensor:
        """Look up a token map and bring it to the latent size: (B, pn*pn) -> (B, Cvae, h, w).

        Bicubic, align_corners=False, no antialias (Algorithm 1 line 7); the last scale is already full size.
        """
        pn = self.patch_nums[scale_index]
        h_BChw = self.embedding(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.code_dim, pn, pn)  # (B, Cvae, pn, pn)
        return self.upsample(h_BChw, size)

    def upsample(self, h_BChw: torch.Tensor, size: int) -> torch.Tensor:
        """Bicubic up to (size, size); identity when already there (the last scale)."""
        if h_BChw.shape[-1] == size:
            return h_BChw
        return F.interpolate(h_BChw, size=(size, size), mode="bicubic")  # (B, Cvae, h, w)

    @staticmethod
    def area_down(f_BChw: torch.Tensor, pn: int) -> torch.Tensor:
        """Area downsampling (= adaptive average pooling, overlapping windows for 16→13 etc.): -> (B, C, pn, pn)."""
        if f_BChw.shape[-1] == pn:
            return f_BChw  # the last scale sees the full map
        return F.interpolate(f_BChw, size=(pn, pn), mode="area")

    # ----------------------------------------------------------------------------------------------------------------
    # Algorithm 1
    @torch.no_grad()
    def encode(self, f_BChw: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Algorithm 1: latent -> K token maps, plus the cumulative reconstruction f̂ after every scale.

        Returns (idx, f_hats): idx[k] is (B, pn_k²) row-major; f_hats[k] is (B, Cvae, h, w).
        """
        self.check_latent(f_BChw)
        size = f_BChw.shape[-1]
        f_rest = f_BChw.detach().float().clone()  # (B, Cvae, h, w) what is still unexplained
        f_hat = torch.zeros_like(f_rest)  # (B, Cvae, h, w) what the scales so far reconstruct
        idx, f_hats = [], []
        for k, pn in enumerate(self.patch_nums):
            idx_Bl = self.nearest_code(self.area_down(f_rest, pn))  # (B, pn*pn)  lines 5-6: downsample, quantize
            h_BChw = self.quant_resi(self.upsampled_embedding(idx_Bl, k, size), k)  # line 7: up, Φ
            f_hat.add_(h_BChw)
            f_rest.sub_(h_BChw)  # line 8: the next scale quantizes only what is left
            idx.append(idx_Bl)
            f_hats.append(f_hat.clone())
        return idx, f_hats

    # ----------------------------------------------------------------------------------------------------------------
    # Algorithm 2
    def decode(self, idx: Sequence[torch.Tensor], every_scale: bool = False):
        """Algorithm 2: K token maps -> f̂ = Σ_k Φ_k(up(embedding(r_k))), (B, Cvae, h, w).

        With `every_scale=True` returns the list of cumulative f̂ after each scale (the reconstruction pyramid).
        Fewer than K maps are allowed (a partial, coarse reconstruction).
        """
        size = self.patch_nums[-1]
        f_hat = None
        f_hats = []
        for k, idx_Bl in enumerate(idx):
            h_BChw = self.quant_resi(self.upsampled_embedding(idx_Bl, k, size), k)
            f_hat = h_BChw if f_hat is None else f_hat + h_BChw
            f_hats.append(f_hat)
        return f_hats if every_scale else f_hat

    # ----------------------------------------------------------------------------------------------------------------
    # training forward
    def forward(self, f_BChw: torch.Tensor):
        """The training pass: quantize f at all scales, return (f̂ with straight-through gradient, vq loss, tokens).

        Loss (quant.py:95-97), averaged over the K scales, computed on the cumulative f̂ after each scale:
            β·‖sg(f̂) − f‖²  (commitment: pulls the encoder towards its codes)
          +   ‖f̂ − sg(f)‖²  (codebook: pulls the codes, and Φ, towards the encoder output)
        Straight-through estimator: the forward value is f̂, the gradient to the encoder is the identity.
        """
        self.check_latent(f_BChw)
        size = f_BChw.shape[-1]
        f_target = f_BChw.detach().float()  # (B, Cvae, h, w) sg(f)
        f_rest = f_target.clone()
        f_hat = torch.zeros_like(f_target)
        vq_loss = f_BChw.new_zeros(())
        idx = []
        for k, pn in enumerate(self.patch_nums):
            idx_Bl = self.nearest_code(self.area_down(f_rest, pn))
            h_BChw = self.quant_resi(self.upsampled_embedding(idx_Bl, k, size), k)  # has gradient
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw.detach()  # the argmin is not differentiable, so f_rest needs no graph
            vq_loss = vq_loss + self.beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_target)
            idx.append(idx_Bl)
        vq_loss = vq_loss / len(self.patch_nums)
        f_hat_straight_through = (f_hat.detach() - f_target) + f_BChw  # value f̂, gradient of f
        if self.training:
            self.update_usage(idx)
        return f_hat_straight_through, vq_loss, idx

    @torch.no_grad()
    def update_usage(self, idx: Sequence[torch.Tensor], momentum: float = 0.99) -> None:
        """EMA of how often each code is hit at each scale (a share per scale; 0 marks a dead code)."""
        for k, idx_Bl in enumerate(idx):
            hits_V = torch.bincount(idx_Bl.flatten(), minlength=self.vocab_size).float()
            self.ema_vocab_hit_SV[k].mul_(momentum).add_(hits_V / hits_V.sum(), alpha=1 - momentum)

    # ----------------------------------------------------------------------------------------------------------------
    # inputs of the transformer
    def idx_to_var_input(self, idx: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input: for k = 1..K-1, the cumulative f̂ of scales < k area-downsampled to pn_k.

        It is NOT the previous scale's token embeddings: the transformer sees the running reconstruction, exactly
        what it will see at sampling time (official `idxBl_to_var_input`). Scale 1 has no visual input:
        its slot is the class token. Returns (B, L - pn_1², Cvae).
        """
        B, size = idx[0].shape[0], self.patch_nums[-1]
        f_hat = torch.zeros(B, self.code_dim, size, size, device=idx[0].device)  # (B, Cvae, h, w)
        inputs = []
        for k in range(len(self.patch_nums) - 1):
            f_hat, next_BlC = self.next_scale_input(k, f_hat, self.embedding(idx[k]))
            inputs.append(next_BlC)  # (B, pn_{k+1}², Cvae)
        return torch.cat(inputs, dim=1)  # (B, L - pn_1², Cvae)

    def next_scale_input(self, scale_index: int, f_hat_BChw: torch.Tensor, h_BlC: torch.Tensor):
        """Add scale k's embeddings to f̂ and return (f̂, f̂ area-downsampled to the next scale as (B, pn², Cvae)).

        The sampling-time twin of `idx_to_var_input` (official `get_next_autoregressive_input`). `h_BlC` is
        (B, pn_k², Cvae): hard code vectors, or soft (Gumbel) mixtures of them. At the last scale the second
        output is None.
        """
        B, pn, size = h_BlC.shape[0], self.patch_nums[scale_index], f_hat_BChw.shape[-1]
        h_BChw = h_BlC.transpose(1, 2).reshape(B, self.code_dim, pn, pn)  # (B, Cvae, pn, pn)
        f_hat_BChw = f_hat_BChw + self.quant_resi(self.upsample(h_BChw, size), scale_index)
        if scale_index == len(self.patch_nums) - 1:
            return f_hat_BChw, None
        next_pn = self.patch_nums[scale_index + 1]
        next_BlC = self.area_down(f_hat_BChw, next_pn).flatten(2).transpose(1, 2)  # (B, next_pn², Cvae)
        return f_hat_BChw, next_BlC

    # ----------------------------------------------------------------------------------------------------------------
    # fighting codebook collapse during tokenizer training
    @torch.no_grad()
    def restart_dead_codes(self, f_BChw: torch.Tensor, threshold: float = 1e-4, generator=None,
                           error_weighted: bool = False) -> int:
        """Re-initialise codes that no scale has used lately to residual vectors of the current batch.

        NOTE (not in official VAR, which ships no tokenizer training): the standard remedy for codebook collapse
        (e.g. Dhariwal et al. 2020, Jukebox). A code is dead when its EMA hit share is below `threshold` at every
        scale. It is replaced by a residual z_k that Algorithm 1 actually quantizes at some scale k (the vectors a
        code must match; the raw latent would only suit the 1×1 scale), so the first call, with all EMAs at zero,
        doubles as a data-dependent codebook init. A restarted code gets ~140 steps of grace (see below).
        Which residuals: by default a uniform draw from all B·L residuals, of which the finest scale holds ~half
        and the 1×1 scale only B (1% of the quickstart's pool); with `error_weighted`, a draw without replacement
        in proportion to each vector's share of the quantization error (`restart_weights`), which gives the coarse
        scales more codes (docs/results.md#tokenizer: better on average and on a photo folder, worse on 2 shapes
        seeds of 5).
        Returns how many codes were restarted.
        """
        dead_V = (self.ema_vocab_hit_SV < threshold).all(dim=0)
        num_dead = int(dead_V.sum())
        if num_dead == 0:
            return 0
        _, f_hats = self.encode(f_BChw)
        residuals = []
        for k, pn in enumerate(self.patch_nums):  # z_k = area_down(f - f̂_{<k}, pn_k), what scale k quantizes
            before = f_hats[k - 1] if k > 0 else torch.zeros_like(f_BChw)
            z_BChw = self.area_down(f_BChw.float() - before, pn)  # (B, Cvae, pn, pn)
            residuals.append(z_BChw.permute(0, 2, 3, 1).reshape(-1, self.code_dim))  # (B*pn*pn, Cvae)
        pool_NC = torch.cat(residuals)  # (B*L, Cvae)
        if error_weighted:
            weight_N = self.restart_weights(residuals)  # (B*L,)
            if not bool((weight_N > 0).any()):  # every residual already has its exact code: nothing to prefer
                weight_N = torch.ones_like(weight_N)
            enough = int((weight_N > 0).sum()) >= num_dead  # else some vectors must serve twice
            pick = torch.multinomial(weight_N, num_dead, replacement=not enough, generator=generator)
        else:
            pick = torch.randint(0, pool_NC.shape[0], (num_dead,), generator=generator, device=pool_NC.device)
        self.embedding.weight.data[dead_V] = pool_NC[pick]  # (num_dead, Cvae)
        self.ema_vocab_hit_SV[:, dead_V] = 4 * threshold  # grace: 4·0.99^n < 1 only after n ≈ 138 unused steps
        return num_dead

    def restart_weights(self, residuals: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each residual vector's share of the latent's squared quantization error: K tensors (B*pn_k², Cvae) -> (B*L,).

        A vector z of scale k weighs ||z - nearest code||² · h·w / pn_k²: its token is upsampled over h·w / pn_k²
        latent positions, so a 1×1 token's error covers the whole map and an 8×8 token's one position. Drawing dead
        codes' replacements in proportion to it (the D² seeding of k-means++, Arthur & Vassilvitskii 2007) puts
        them where the codebook serves the residuals worst: mostly at the coarse scales, whose few vectors are large
        and far from the codes, and never at a vector that a code already matches exactly.
        """
        size = self.patch_nums[-1]
        weights = []
        for k, z_NC in enumerate(residuals):
            error_N = self.squared_distances(z_NC).min(dim=1).values.clamp_min(0)  # (B*pn_k²,) rounding can dip < 0
            weights.append(error_N * (size * size / self.patch_nums[k] ** 2))
        return torch.cat(weights)  # (B*L,)
