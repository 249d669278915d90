"""Losses for training the multi-scale VQVAE tokenizer: perceptual (LPIPS-style) loss and a PatchGAN hinge GAN.

VAR (Tian et al. 2024, Sec. 3.2) trains its tokenizer "with a compound loss" of reconstruction, perceptual,
commitment and GAN terms, "the same as VQGAN" (Esser et al. 2021), but the official VAR repo ships only the trained
tokenizer, not its training code. So this file follows the two sources that loss refers to, written from scratch:
  * LPIPS (Zhang et al. 2018, richzhang/PerceptualSimilarity `lpips/lpips.py`): compare unit-normalised VGG16
    activations at five depths, optionally weighted per channel by learned 1×1 "lin" layers.
  * VQGAN (taming-transformers `taming/modules/losses/vqperceptual.py` and `taming/modules/discriminator/model.py`):
    a PatchGAN discriminator (Isola et al. 2017), hinge losses, the adaptive GAN weight of Eq. 7 and a start step
    before which the discriminator is off.
The reconstruction (L1 / L2) and commitment terms live with the quantizer; this file has only what needs extra nets.

Weights are never downloaded: the user supplies torchvision's `vgg16-397923af.pth` (and optionally the LPIPS
`vgg.pth` lin weights), as files.

Shape legend:
    B     batch size
    H, W  image size
    Cl    channels of VGG tap l (64, 128, 256, 512, 512)
    Hl,Wl spatial size at VGG tap l (H, H/2, H/4, H/8, H/16)
    h, w  size of the discriminator's patch-logit map
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------------------------
# Perceptual loss
# ------------------------------------------------------------------------------------------------------------------

# VGG16 ("configuration D", Simonyan & Zisserman 2015): 3×3 conv widths, "M" = 2×2 max pool. Building
# conv → ReLU pairs and pools in this order reproduces torchvision's `vgg16().features` indices exactly, so the
# conv weights sit at features.{0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28}.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# Indices (in that Sequential) of the ReLUs LPIPS taps: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_TAP_INDICES = (3, 8, 15, 22, 29)
VGG16_TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's ScalingLayer: maps [-1, 1] inputs to roughly ImageNet-normalised ones, (x - shift) / scale.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

VGG_WEIGHTS_HELP = (
    "Supply torchvision's ImageNet VGG16 weights 'vgg16-397923af.pth' "
    "(https://download.pytorch.org/models/vgg16-397923af.pth): the full state dict or just its 'features.*' part."
)
LPIPS_WEIGHTS_HELP = (
    "Supply the LPIPS v0.1 VGG linear-layer weights 'vgg.pth' (richzhang/PerceptualSimilarity, "
    "lpips/weights/v0.1/vgg.pth), or pass lpips_weights_path=None for an unweighted channel mean."
)


def build_vgg16_features() -> nn.Sequential:
    """VGG16 convolutional trunk up to relu5_3 (torchvision indices 0..29; the final max pool is not needed)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for entry in VGG16_LAYOUT:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, entry, kernel_size=3, padding=1))
            # Not in-place (unlike torchvision), so a tapped activation is never overwritten by a later layer.
            layers.append(nn.ReLU())
            in_channels = entry
    return nn.Sequential(*layers)


def load_vgg16_features_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a VGG16 weights file and return the `features` part with keys '0.weight', '0.bias', ...

    Accepts torchvision's full vgg16 state dict (keys 'features.*' and 'classifier.*'; the classifier is dropped)
    or a features-only dict with or without the 'features.' prefix.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VGG16 weights not found at '{path}'. {VGG_WEIGHTS_HELP}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if any(key.startswith("features.") for key in state_dict):
        return {key.removeprefix("features."): value for key, value in state_dict.items() if key.startswith("features.")}
    return dict(state_dict)


def load_lpips_linear_weights(path: str | os.PathLike) -> list[torch.Tensor]:
    """Read LPIPS's per-channel weights `lin{0..4}.model.1.weight` (1, Cl, 1, 1) and return them as 5 (Cl,) tensors.

    Other keys in the file (for example a full LPIPS model's 'net.*' backbone) are ignored; VGG comes from its own
    file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS weights not found at '{path}'. {LPIPS_WEIGHTS_HELP}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    weights = []
    for layer_index, channels in enumerate(VGG16_TAP_CHANNELS):
        key = f"lin{layer_index}.model.1.weight"
        if key not in state_dict or tuple(state_dict[key].shape) != (1, channels, 1, 1):
            found = tuple(state_dict[key].shape) if key in state_dict else "missing"
            raise ValueError(
                f"'{path}' has no LPIPS weight '{key}' of shape (1, {channels}, 1, 1) (found: {found}). "
                f"{LPIPS_WEIGHTS_HELP}"
            )
        weights.append(state_dict[key].flatten())  # (Cl,)
    return weights


def normalize_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each pixel's feature vector by its L2 norm over channels (LPIPS `normalize_tensor`, Eq. 1)."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)  # (B, Cl, Hl, Wl)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance between images in [-1, 1], built on a frozen VGG16.

    d(x, y) = Σ_l mean_{h,w} Σ_c w_lc (x̂_lchw - ŷ_lchw)², with x̂ the channel-normalised relu{1_2,2_2,3_3,4_3,5_3}
    activations (Zhang et al. 2018, Eq. 1). With `lpips_weights_path` the w_lc are LPIPS's learned weights (this
    reproduces `lpips.LPIPS(net="vgg")`, which taming-transformers uses); without, w_lc = 1 / Cl, a uniform
    channel mean.

    NOTE (differs from LPIPS / taming): LPIPS applies dropout before its lin layers, and taming's training loop
    leaves that dropout active, because `.train()` on the VQ model reaches the loss module. Here the loss is
    deterministic: no dropout, always eval mode.

    forward(reconstruction, target, reduction="mean") → scalar, or (B,) with reduction="none".
    Gradients flow to the inputs only; every weight is frozen.
    """

    def __init__(self, vgg_weights_path: str | os.PathLike, lpips_weights_path: str | os.PathLike | None = None):
        super().__init__()
        self.vgg_features = build_vgg16_features()
        try:
            self.vgg_features.load_state_dict(load_vgg16_features_state_dict(vgg_weights_path), strict=True)
        except RuntimeError as error:  # load_state_dict's report of missing / unexpected keys or shape mismatches
            raise ValueError(f"'{vgg_weights_path}' does not hold VGG16 weights: {error}. {VGG_WEIGHTS_HELP}") from error
        if lpips_weights_path is None:
            channel_weights = [torch.full((channels,), 1.0 / channels) for channels in VGG16_TAP_CHANNELS]
        else:
            channel_weights = load_lpips_linear_weights(lpips_weights_path)
        # Buffers, not parameters: they move with .to(device) but no optimizer can ever pick them up.
        for layer_index, weight in enumerate(channel_weights):
            self.register_buffer(f"channel_weight_{layer_index}", weight.view(1, -1, 1, 1))  # (1, Cl, 1, 1)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))  # (1, 3, 1, 1)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))  # (1, 3, 1, 1)
        self.requires_grad_(False)
        self.eval()  # VGG16's trunk has no dropout or BatchNorm, so this only documents intent

    def tap_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five channel-normalised VGG activations of images (B, 3, H, W) in [-1, 1]."""
        x = (images - self.shift) / self.scale  # (B, 3, H, W), LPIPS ScalingLayer
        taps = []
        for index, layer in enumerate(self.vgg_features):
            x = layer(x)  # conv keeps H, W; max pool halves them
            if index in VGG16_TAP_INDICES:
                taps.append(normalize_channels(x))  # (B, Cl, Hl, Wl)
        return taps

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got '{reduction}'")
        batch_size = reconstruction.shape[0]
        # One VGG pass over both image sets is as cheap as two and keeps the code short.
        taps = self.tap_features(torch.cat([reconstruction, target]))  # 5 × (2B, Cl, Hl, Wl)
        distance = reconstruction.new_zeros(batch_size)  # (B,)
        for layer_index, features in enumerate(taps):
            squared_difference = (features[:batch_size] - features[batch_size:]).square()  # (B, Cl, Hl, Wl)
            weight = getattr(self, f"channel_weight_{layer_index}")  # (1, Cl, 1, 1)
            weighted = (squared_difference * weight).sum(dim=1)  # (B, Hl, Wl), LPIPS's 1×1 lin conv
            distance = distance + weighted.mean(dim=(1, 2))  # (B,), spatial average then sum over layers
        return distance.mean() if reduction == "mean" else distance


# ------------------------------------------------------------------------------------------------------------------
# PatchGAN discriminator and hinge GAN losses
# ------------------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017; taming's `NLayerDiscriminator`): one real/fake logit per patch.

    Layout for num_layers = 3: 4×4 convs with stride 2, 2, 2, 1 and widths C, 2C, 4C, 8C, then a 4×4 stride-1
    conv to 1 channel. Each output logit sees a 70×70 receptive field (for num_layers = 3), so the discriminator
    judges local texture, which is what the L1/L2 + perceptual terms leave blurry.

    Normalisation: GroupNorm, where taming uses BatchNorm. The discriminator is called on a batch of real images
    and, separately, a batch of reconstructions; BatchNorm would normalise each with its own batch statistics, so
    a patch's logit would depend on the other images in its batch and real and fake images would be normalised
    differently; its running statistics also make train and eval mode disagree. GroupNorm is per-sample,
    has no running state and works for any batch size, including the tiny CPU batches of minvar's default runs.

    forward(images (B, in_channels, H, W)) → logits (B, 1, h, w); 32×32 → 2×2 and 256×256 → 30×30 for num_layers = 3.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        # First layer: no normalisation (as pix2pix / taming), so the input's statistics reach the net.
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        channels = base_channels
        for layer_index in range(1, num_layers + 1):
            # Width doubles per layer up to 8× base; the last of these layers keeps the resolution (stride 1).
            out_channels = base_channels * min(2 ** layer_index, 8)
            stride = 2 if layer_index < num_layers else 1
            layers += [
                # No bias: the GroupNorm right after has its own shift.
                nn.Conv2d(channels, out_channels, kernel_size=4, stride=stride, padding=1, bias=False),
                # Up to 32 groups (Wu & He 2018's default); gcd keeps it a divisor of narrow test widths too.
                nn.GroupNorm(math.gcd(32, out_channels), out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))  # one logit per patch
        self.layers = nn.Sequential(*layers)
        self.apply(self.initialize_weights)

    @staticmethod
    def initialize_weights(module: nn.Module) -> None:
        """DCGAN-style init used by pix2pix and taming: conv weights N(0, 0.02), norm scales N(1, 0.02)."""
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)  # (B, 1, h, w): each stride-2 conv halves H, W; each 4×4 stride-1 conv takes 1


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the discriminator (Lim & Ye 2017), as taming's `hinge_d_loss`:

        ½ (mean relu(1 - D(x)) + mean relu(1 + D(x̂)))

    Real logits are pushed above +1 and fake ones below -1; beyond those margins they cost nothing. The ½ makes it
    the average of the real and fake terms.
    """
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator (tokenizer) side of the hinge GAN: -mean D(x̂), i.e. make reconstructions look real (taming)."""
    return -fake_logits.mean()


def adaptive_generator_weight(
    reconstruction_loss: torch.Tensor,
    generator_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """VQGAN's adaptive GAN weight λ (Esser et al. 2021, Eq. 7): ||∇_L rec|| / (||∇_L gan|| + 1e-4), L = last layer.

    It scales the GAN term so that, at the decoder's last layer, its gradient is as large as the reconstruction
    (+ perceptual) gradient: the GAN can then neither be drowned out nor dominate. Returned detached (λ is a
    coefficient, not something to differentiate through) and clamped to [0, max_weight] as taming does; the
    caller multiplies it by its own GAN weight. The caller also switches the GAN on only from a start step
    (taming's `adopt_weight`; `train_tokenizer.py --disc-start`): a discriminator facing the blurry early
    reconstructions wins too easily and its gradients only add noise.

    Both losses must still have their graphs (this takes gradients with retain_graph=True, so the caller can
    backpropagate the total loss afterwards).
    """
    reconstruction_gradient = torch.autograd.grad(reconstruction_loss, last_layer_weight, retain_graph=True)[0]
    generator_gradient = torch.autograd.grad(generator_loss, last_layer_weight, retain_graph=True)[0]
    weight = reconstruction_gradient.norm() / (generator_gradient.norm() + 1e-4)  # scalar; 1e-4 avoids 0 / 0
    return weight.clamp(0.0, max_weight).detach()
