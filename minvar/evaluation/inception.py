"""The "FID Inception-v3" feature extractor, in plain torch (no torchvision), for FID / IS / precision-recall.

VAR (Tian et al. 2024, Sec. 7 and Table 1) reports FID, IS, precision and recall measured by the ADM evaluator
(Dhariwal & Nichol 2021, openai/guided-diffusion `evaluations/evaluator.py`), which runs the TensorFlow graph
`inception-2015-12-05`. pytorch-fid (Seitzer 2020, mseitzer/pytorch-fid `src/pytorch_fid/inception.py`) ported
that graph's weights to `pt_inception-2015-12-05-6726825d.pth`. This file rebuilds the same network so that file
loads strictly: every module below is named exactly as in pytorch-fid (which reuses torchvision's `Inception3`
names), so the state_dict keys line up one to one.

The "FID" variant differs from torchvision's Inception-v3 in three places, all copied from the TF graph:
  * the classifier has 1008 outputs (the TF graph's 1000 classes plus 8 unused ones), not 1000;
  * the average-pool branch inside blocks A, C and E_1 ignores the zero padding when averaging
    (TF's `avg_pool` semantics, `count_include_pad=False`);
  * the last block (Mixed_7c, "E_2") pools its pool branch with a 3×3 MAX pool instead of an average pool.
There is no auxiliary classifier (pytorch-fid builds with `aux_logits=False`), so no `AuxLogits.*` keys.

Numbers will be close to, but not bit-identical with, the TF evaluator that VAR's paper used: image resizing and
convolution kernels differ slightly between the two frameworks (pytorch-fid README reports ~1e-3 relative error).

Shape legend:
    B   batch size
    H,W input image size (any; resized to 299×299)
    Ci  channels inside the network (32 ... 2048)
    h,w spatial size inside the network (149 ... 8)
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# Where the user can get the weights file; minvar itself never downloads anything.
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


class ConvBatchNormReLU(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3, the TF default) → ReLU; torchvision calls this `BasicConv2d`.

    The attribute names `conv` and `bn` are part of the checkpoint format (keys `*.conv.weight`, `*.bn.running_mean`).
    """

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        # No conv bias: the BatchNorm right after it has its own shift.
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))  # (B, Cout, h', w')


def tf_average_pool(x: torch.Tensor) -> torch.Tensor:
    """3×3 stride-1 average pool that, like TensorFlow's, divides by the number of real (unpadded) pixels."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)  # (B, C, h, w)


class InceptionA(nn.Module):
    """35×35 block (Mixed_5b/5c/5d): 1×1, 5×5, double 3×3 and pool branches, concatenated on channels."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBatchNormReLU(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = ConvBatchNormReLU(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = ConvBatchNormReLU(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = ConvBatchNormReLU(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = ConvBatchNormReLU(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = ConvBatchNormReLU(96, 96, kernel_size=3, padding=1)
        self.branch_pool = ConvBatchNormReLU(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_1x1 = self.branch1x1(x)  # (B, 64, h, w)
        branch_5x5 = self.branch5x5_2(self.branch5x5_1(x))  # (B, 64, h, w)
        branch_3x3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # (B, 96, h, w)
        # FID variant: TF-style average pool (padding not counted), see the file docstring.
        branch_pool = self.branch_pool(tf_average_pool(x))  # (B, pool_features, h, w)
        return torch.cat([branch_1x1, branch_5x5, branch_3x3, branch_pool], dim=1)  # (B, 224 + pool_features, h, w)


class InceptionB(nn.Module):
    """35→17 grid reduction (Mixed_6a): strided 3×3, strided double 3×3 and a strided max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBatchNormReLU(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = ConvBatchNormReLU(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = ConvBatchNormReLU(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = ConvBatchNormReLU(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_3x3 = self.branch3x3(x)  # (B, 384, h/2, w/2), unpadded so 35 → 17
        branch_3x3_double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # (B, 96, h/2, w/2)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, Cin, h/2, w/2)
        return torch.cat([branch_3x3, branch_3x3_double, branch_pool], dim=1)  # (B, 480 + Cin, h/2, w/2)


class InceptionC(nn.Module):
    """17×17 block (Mixed_6b..6e): 7×7 convolutions factorised into 1×7 and 7×1 pairs."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBatchNormReLU(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = ConvBatchNormReLU(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = ConvBatchNormReLU(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBatchNormReLU(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBatchNormReLU(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = ConvBatchNormReLU(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBatchNormReLU(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBatchNormReLU(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBatchNormReLU(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = ConvBatchNormReLU(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_1x1 = self.branch1x1(x)  # (B, 192, h, w)
        branch_7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))  # (B, 192, h, w)
        branch_7x7_double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch_7x7_double = layer(branch_7x7_double)  # ends at (B, 192, h, w)
        # FID variant: TF-style average pool.
        branch_pool = self.branch_pool(tf_average_pool(x))  # (B, 192, h, w)
        return torch.cat([branch_1x1, branch_7x7, branch_7x7_double, branch_pool], dim=1)  # (B, 768, h, w)


class InceptionD(nn.Module):
    """17→8 grid reduction (Mixed_7a)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBatchNormReLU(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = ConvBatchNormReLU(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = ConvBatchNormReLU(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = ConvBatchNormReLU(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBatchNormReLU(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBatchNormReLU(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_3x3 = self.branch3x3_2(self.branch3x3_1(x))  # (B, 320, h/2, w/2), unpadded so 17 → 8
        branch_7x7x3 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch_7x7x3 = layer(branch_7x7x3)  # ends at (B, 192, h/2, w/2)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, Cin, h/2, w/2)
        return torch.cat([branch_3x3, branch_7x7x3, branch_pool], dim=1)  # (B, 512 + Cin, h/2, w/2)


class InceptionE(nn.Module):
    """8×8 block (Mixed_7b, Mixed_7c) with split 1×3 / 3×1 heads; `max_pool_branch` selects the FID quirk.

    pytorch-fid calls the two FID variants FIDInceptionE_1 (Mixed_7b, TF-style average pool) and FIDInceptionE_2
    (Mixed_7c, max pool). The max pool in the last block is what the TF graph does, probably by mistake, and the
    released weights were trained with it, so we must keep it.
    """

    def __init__(self, in_channels: int, max_pool_branch: bool) -> None:
        super().__init__()
        self.max_pool_branch = max_pool_branch
        self.branch1x1 = ConvBatchNormReLU(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = ConvBatchNormReLU(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = ConvBatchNormReLU(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBatchNormReLU(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBatchNormReLU(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = ConvBatchNormReLU(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = ConvBatchNormReLU(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBatchNormReLU(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = ConvBatchNormReLU(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_1x1 = self.branch1x1(x)  # (B, 320, h, w)
        stem = self.branch3x3_1(x)  # (B, 384, h, w)
        branch_3x3 = torch.cat([self.branch3x3_2a(stem), self.branch3x3_2b(stem)], dim=1)  # (B, 768, h, w)
        stem = self.branch3x3dbl_2(self.branch3x3dbl_1(x))  # (B, 384, h, w)
        branch_3x3_double = torch.cat([self.branch3x3dbl_3a(stem), self.branch3x3dbl_3b(stem)], dim=1)  # (B, 768, h, w)
        if self.max_pool_branch:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)  # (B, Cin, h, w)
        else:
            pooled = tf_average_pool(x)  # (B, Cin, h, w)
        branch_pool = self.branch_pool(pooled)  # (B, 192, h, w)
        return torch.cat([branch_1x1, branch_3x3, branch_3x3_double, branch_pool], dim=1)  # (B, 2048, h, w)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 network with random weights; load weights with `InceptionV3Features`.

    forward(x) expects x already at 299×299 and in [-1, 1] and returns (logits (B, 1008), pool features (B, 2048)).
    """

    def __init__(self) -> None:
        super().__init__()
        # Stem. Attribute names (and so checkpoint keys) follow torchvision / pytorch-fid.
        self.Conv2d_1a_3x3 = ConvBatchNormReLU(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = ConvBatchNormReLU(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = ConvBatchNormReLU(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = ConvBatchNormReLU(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = ConvBatchNormReLU(80, 192, kernel_size=3)
        # Inception blocks; the channel counts are those of Szegedy et al. 2016, Table 1 / torchvision.
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True)
        # 1008-way classifier of the TF graph (1000 ImageNet classes + 8 unused).
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (B, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7a(x)  # (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        features = x.mean(dim=(2, 3))  # (B, 2048), the "pool_3" features FID uses
        logits = self.fc(features)  # (B, 1008); dropout is a no-op at eval time so it is left out
        return logits, features


class InceptionV3Features(nn.Module):
    """Feature extractor for `minvar.evaluation.metrics.compute_generation_metrics`: images → (class probabilities,
    features).

    Usage:
        extractor = InceptionV3Features("pt_inception-2015-12-05-6726825d.pth").to(device)
        probs, features = extractor(images)  # images (B, 3, H, W) in [-1, 1]; probs (B, 1008), features (B, 2048)

    Frozen and always in eval mode (BatchNorm must use its stored statistics).
    """

    def __init__(self, weights_path: str | os.PathLike) -> None:
        super().__init__()
        self.network = FIDInceptionV3()
        self.network.load_state_dict(load_fid_inception_state_dict(weights_path))
        self.network.eval()
        self.network.requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionV3Features:
        # A parent module's .train() must not switch BatchNorm to batch statistics, so this module stays in eval.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # pytorch-fid takes [0, 1] images, resizes them bilinearly to 299×299 (align_corners=False, no antialias)
        # and then maps them to [-1, 1]. Bilinear resizing commutes with that affine map (its weights sum to 1),
        # so resizing our [-1, 1] images directly gives the same network input.
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)  # (B, 3, 299, 299)
        _, features = self.network(x)  # (B, 2048)
        # NOTE: Inception Score uses logits WITHOUT the classifier bias: Salimans et al.'s released code
        # (openai/improved-gan `inception_score/model.py`) and the ADM evaluator VAR used both take the weight of
        # the graph's `softmax/logits/MatMul` op only. torch-fidelity calls these "logits_unbiased".
        logits_without_bias = features @ self.network.fc.weight.t()  # (B, 1008)
        probs = logits_without_bias.softmax(dim=-1)  # (B, 1008)
        return probs, features


def load_fid_inception_state_dict(weights_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read pytorch-fid's weights file and check that its keys are exactly those of `FIDInceptionV3`.

    Raises FileNotFoundError (missing file) or ValueError (a file with other keys or shapes), each saying where to
    get the right file. BatchNorm's `num_batches_tracked` counters are optional: older checkpoints lack them and
    they do not affect eval-mode outputs.
    """
    where_to_get_it = (
        f"Download pt_inception-2015-12-05-6726825d.pth from {FID_WEIGHTS_URL} (pytorch-fid's port of the "
        "TensorFlow FID Inception) and pass its path; minvar never downloads weights itself."
    )
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"FID Inception weights not found at '{weights_path}'. {where_to_get_it}")
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # shapes only: no memory, no random init
        expected = FIDInceptionV3().state_dict()
    required_keys = {key for key in expected if not key.endswith("num_batches_tracked")}
    missing = sorted(required_keys - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        key for key in required_keys & set(state_dict) if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"'{weights_path}' is not the pytorch-fid FID Inception state dict: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), "
            f"{len(wrong_shape)} keys with the wrong shape (e.g. {wrong_shape[:3]}). {where_to_get_it}"
        )
    # Fill in absent BatchNorm counters so that the caller's strict load_state_dict succeeds.
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)
    return state_dict
