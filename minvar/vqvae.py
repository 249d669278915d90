"""The multi-scale VQVAE tokenizer of VAR: a convolutional encoder, the multi-scale quantizer, a decoder.

Paper: Tian et al., "Visual Autoregressive Modeling", Section 3.2 ("a modified VQGAN architecture with a
multi-scale quantization", 16× downsampling, V = 4096, shared codebook).
Official counterpart: `models/vqvae.py` (VQVAE) and `models/basic_vae.py` (Encoder, Decoder and their blocks).
The `"official"` preset has exactly the keys and shapes of the released `vae_ch160v4096z32.pth`.

It differs from LDM/taming's VQGAN in three places (docs/official_model.md): one fused 1×1 `qkv` conv in attention,
3×3 (not 1×1) quant_conv / post_quant_conv, and an asymmetric zero-pad before the stride-2 downsampling conv.

Shape legend: B batch, K number of scales, pn side of a scale's token map, Cvae codebook dimension (z_channels),
V codebook size, H, W image size, h, w latent size (H / 2^(levels-1)).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from minvar.quantizer import SCHEDULE_256, SCHEDULE_512, SCHEDULE_TINY, MultiScaleQuantizer


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096  # V: codebook entries, shared by all scales
    code_dim: int = 32  # Cvae: channels of the latent map and of each code ("z_channels")
    channels: int = 160  # base channel count of encoder and decoder ("ch")
    channel_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)  # channels per level; len-1 stride-2 stages set the downsampling
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder uses one more)
    dropout: float = 0.0  # dropout inside ResNet blocks (0 in the released VAE)
    beta: float = 0.25  # commitment weight β of the quantizer loss
    phi_ratio: float = 0.5  # r in Φ(h) = (1-r)·h + r·conv(h)
    num_phis: int = 4  # Φ convolutions: 1 shared, 0 one per scale, 4 as the released VAE ("share_quant_resi")
    patch_nums: Tuple[int, ...] = SCHEDULE_256  # sides of the K token maps, coarse to fine
    image_size: int = 256  # H = W of the images the tokenizer is meant for
    attention: bool = True  # self-attention at the lowest-resolution encoder/decoder level ("using_sa")
    mid_attention: bool = True  # self-attention in the middle blocks ("using_mid_sa")
    norm_groups: int = 32  # GroupNorm groups (32 officially; fewer lets CPU-sized models have 16 channels)

    @property
    def downsample(self) -> int:
        """The image-to-latent factor: each level but the last halves the resolution."""
        return 2 ** (len(self.channel_mult) - 1)

    def check(self) -> None:
        """Fail early, with advice, on a scale schedule that does not fit the image size."""
        latent = self.image_size // self.downsample
        if self.image_size % self.downsample or self.patch_nums[-1] != latent:
            raise ValueError(
                f"scale schedule {tuple(self.patch_nums)} does not fit {self.image_size}px images: a "
                f"{len(self.channel_mult)}-level VAE downsamples {self.downsample}×, giving a {latent}×{latent} "
                f"latent, and the last scale must equal it. Change --image-size or the patch_nums.")
        if self.channels % self.norm_groups:
            raise ValueError(f"channels={self.channels} must be a multiple of norm_groups={self.norm_groups}")


# Named configurations. "official" is the released vae_ch160v4096z32 (108.9M parameters); "tiny" is for CPUs.
VQVAE_PRESETS = {
    "official": VQVAEConfig(),
    "official-512": VQVAEConfig(patch_nums=SCHEDULE_512, image_size=512),
    # The quickstart tokenizer: 32px images, 4× downsampling to an 8×8 latent, 6 scales (L = 130 tokens).
    "tiny": VQVAEConfig(vocab_size=512, code_dim=16, channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
                        patch_nums=SCHEDULE_TINY, image_size=32, norm_groups=8),
}


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm(32 groups officially, eps=1e-6, affine), as every LDM-family VAE (official `Normalize`)."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm → SiLU → conv3×3 → norm → SiLU → dropout → conv3×3, plus a (1×1 when channels change) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_channels, groups), nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2, self.conv2 = group_norm(out_channels, groups), nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h  # pre-activation residual: the identity path stays clean


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, with ONE fused 1×1 qkv conv (official basic_vae.py)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)  # each (B, C, H*W)
        q, k, v = (t.transpose(1, 2).unsqueeze(1) for t in (q, k, v))  # each (B, 1, H*W, C): one head
        # softmax(q·kᵀ / √C)·v as the official bmm code, through SDPA (same numbers, a fused kernel where available)
        h = F.scaled_dot_product_attention(q, k, v, scale=C ** -0.5)  # (B, 1, H*W, C)
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one pixel, then a stride-2 3×3 conv (asymmetric, as LDM's encoder)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))  # (B, C, 2H, 2W)


class ResolutionLevel(nn.Module):
    """One resolution level: ResNet blocks (each followed by attention when `attention`), then an optional resampler.

    The encoder's levels end in a `downsample`, the decoder's in an `upsample` (none at the lowest resolution for the
    encoder, none at full resolution for the decoder). The submodule names give the official state_dict keys
    `down.{i}.block.{j}`, `up.{i}.attn.{j}`, `down.{i}.downsample`, `up.{i}.upsample`.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool, resample: str,
                 dropout: float, groups: int):
        super().__init__()
        self.block, self.attn = nn.ModuleList(), nn.ModuleList()
        for j in range(num_blocks):  # block, its attention, next block...: the official construction order
            self.block.append(ResnetBlock(in_channels if j == 0 else out_channels, out_channels, dropout, groups))
            if attention:
                self.attn.append(AttnBlock(out_channels, groups))
        if resample == "down":
            self.downsample = Downsample(out_channels)
        elif resample == "up":
            self.upsample = Upsample(out_channels)
        elif resample != "none":
            raise ValueError(f"resample must be 'down', 'up' or 'none', got {resample!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)  # halves H and W
        if hasattr(self, "upsample"):
            x = self.upsample(x)  # doubles H and W
        return x


class Middle(nn.Module):
    """Res → Attn → Res at the lowest resolution (keys `mid.block_1`, `mid.attn_1`, `mid.block_2`)."""

    def __init__(self, channels: int, dropout: float, attention: bool, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> latent (B, Cvae, h, w) (before quant_conv)."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult = cfg.channels, cfg.channel_mult
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)  # RGB -> ch channels at full resolution
        self.down = nn.ModuleList()
        block_in = ch  # channels entering the next level; grows with the level's multiplier
        for level, m in enumerate(mult):
            lowest = level == len(mult) - 1  # attention only at the lowest resolution, which is not downsampled
            self.down.append(ResolutionLevel(block_in, ch * m, cfg.num_res_blocks, lowest and cfg.attention,
                                             "none" if lowest else "down", cfg.dropout, cfg.norm_groups))
            block_in = ch * m
        self.mid = Middle(block_in, cfg.dropout, cfg.mid_attention, cfg.norm_groups)
        self.norm_out = group_norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.code_dim, 3, 1, 1)  # to Cvae channels; no "double_z" (not a VAE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last ("NHWC") memory: the same tensor values, but oneDNN / cuDNN convolutions run faster on it
        # (docs/results.md#defaults-and-the-measurements-behind-them); the result is returned in the usual layout
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))  # (B, ch, H, W)
        for level in self.down:
            h = level(h)
        h = self.mid(h)  # (B, ch·mult[-1], h, w)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()  # (B, Cvae, h, w)


class Decoder(nn.Module):
    """Latent (B, Cvae, h, w) (after post_quant_conv) -> image (B, 3, H, W), NOT squashed: callers clamp."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult = cfg.channels, cfg.channel_mult
        block_in = ch * mult[-1]  # the decoder mirrors the encoder: it starts at the widest level
        self.conv_in = nn.Conv2d(cfg.code_dim, block_in, 3, 1, 1)
        self.mid = Middle(block_in, cfg.dropout, cfg.mid_attention, cfg.norm_groups)
        levels = []
        for level in reversed(range(len(mult))):  # from the lowest resolution up, one more block than the encoder
            lowest = level == len(mult) - 1
            levels.insert(0, ResolutionLevel(block_in, ch * mult[level], cfg.num_res_blocks + 1, lowest and
                                             cfg.attention, "none" if level == 0 else "up", cfg.dropout,
                                             cfg.norm_groups))
            block_in = ch * mult[level]
        self.up = nn.ModuleList(levels)  # indexed by level, so `up.{last}` is the lowest resolution (official layout)
        self.norm_out = group_norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)  # to RGB; the output is unbounded, callers clamp

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.contiguous(memory_format=torch.channels_last)  # faster convolutions, as in the Encoder
        h = self.mid(self.conv_in(z))  # (B, ch·mult[-1], h, w)
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()  # (B, 3, H, W), back to the usual layout


class VQVAE(nn.Module):
    """The tokenizer: image <-> K token maps (official `VQVAE`). Images are (B, 3, H, W) in [-1, 1]."""

    def __init__(self, cfg: VQVAEConfig = None):
        super().__init__()
        self.config = cfg = cfg or VQVAEConfig()
        cfg.check()  # a schedule that does not fit the image size fails here, before any weight is allocated
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg.vocab_size, cfg.code_dim, cfg.patch_nums, cfg.beta,
                                            cfg.phi_ratio, cfg.num_phis)
        # 3×3 here where LDM uses 1×1 (official vqvae.py:87-88)
        self.quant_conv = nn.Conv2d(cfg.code_dim, cfg.code_dim, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.code_dim, 3, 1, 1)

    @property
    def patch_nums(self) -> Tuple[int, ...]:
        """The sides of the K token maps, coarse to fine (the quantizer owns the schedule)."""
        return self.quantize.patch_nums

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VQVAE":
        """Build a named configuration (`VQVAE_PRESETS`), optionally changing some fields."""
        if name not in VQVAE_PRESETS:
            raise ValueError(f"unknown VQVAE preset {name!r}; choose one of {sorted(VQVAE_PRESETS)}")
        return cls(VQVAEConfig(**{**asdict(VQVAE_PRESETS[name]), **overrides}))

    # ----------------------------------------------------------------------------------------------------------------
    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Image -> continuous latent f = quant_conv(encoder(img)): (B, 3, H, W) -> (B, Cvae, h, w)."""
        if img_B3HW.ndim != 4 or img_B3HW.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(img_B3HW.shape)}")
        side = self.patch_nums[-1] * self.config.downsample
        if img_B3HW.shape[-1] != side or img_B3HW.shape[-2] != side:
            raise ValueError(
                f"images are {tuple(img_B3HW.shape[-2:])} but this tokenizer's scale schedule {self.patch_nums} "
                f"needs {side}×{side} (last scale {self.patch_nums[-1]} × downsample {self.config.downsample}); "
                f"resize or crop the images first")
        return self.quant_conv(self.encoder(img_B3HW))

    def fhat_to_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Decoder path: f̂ -> image in [-1, 1], (B, Cvae, h, w) -> (B, 3, H, W). Clamped, not tanh'ed (official)."""
        return self.decoder(self.post_quant_conv(f_hat_BChw)).clamp(-1, 1)

    @torch.no_grad()
    def img_to_idx(self, img_B3HW: torch.Tensor) -> List[torch.Tensor]:
        """Algorithm 1: images -> list of K LongTensors (B, pn²), row-major within a scale."""
        return self.quantize.encode(self.encode_latent(img_B3HW))[0]

    def idx_to_fhat(self, idx: Sequence[torch.Tensor]) -> torch.Tensor:
        """Algorithm 2 up to the latent: K token maps -> f̂ (B, Cvae, h, w)."""
        return self.quantize.decode(idx)

    def idx_to_img(self, idx: Sequence[torch.Tensor]) -> torch.Tensor:
        """Algorithm 2: K token maps -> image (B, 3, H, W) in [-1, 1]."""
        return self.fhat_to_img(self.idx_to_fhat(idx))

    def idx_to_var_input(self, idx: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of the transformer: (B, L - pn_1², Cvae) (see the quantizer)."""
        return self.quantize.idx_to_var_input(idx)

    def forward(self, img_B3HW: torch.Tensor):
        """Training pass: returns (reconstruction, vq loss, tokens per scale).

        The reconstruction is NOT clamped here so that pixel losses keep their gradient near ±1.
        """
        f_hat, vq_loss, idx = self.quantize(self.encode_latent(img_B3HW))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss, idx
