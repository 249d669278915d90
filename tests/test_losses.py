"""Tests for minvar/training/losses.py: the perceptual loss, the PatchGAN discriminator and the VQGAN GAN-loss helpers."""

import pytest
import torch
import torch.nn.functional as F

from minvar.training.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_generator_weight,
    build_vgg16_features,
    hinge_discriminator_loss,
    hinge_generator_loss,
)

# Conv layers of torchvision's vgg16().features, as (index, in channels, out channels); max pools sit at 4, 9, 16, 23.
TORCHVISION_VGG16_CONVS = [
    (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for this module


@pytest.fixture(scope="module")
def vgg_state_dict():
    """Random VGG16 features weights in torchvision's full-model layout (features.* plus a classifier key)."""
    torch.manual_seed(0)
    features = build_vgg16_features()
    # He init keeps random activations O(1) through 13 convs, so the distances below are not vanishingly small.
    for module in features.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
    state_dict = {f"features.{key}": value for key, value in features.state_dict().items()}
    state_dict["classifier.0.weight"] = torch.zeros(4, 8)  # stands in for the fully connected part, which is dropped
    return state_dict


@pytest.fixture(scope="module")
def vgg_path(vgg_state_dict, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(vgg_state_dict, path)
    return path


@pytest.fixture(scope="module")
def perceptual_loss(vgg_path):
    return PerceptualLoss(vgg_path)


def random_images(seed: int, batch_size: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------------- perceptual loss


def test_vgg16_layout_matches_torchvision_keys():
    """Conv weights sit at torchvision's vgg16().features indices with its shapes, and the parameter count is the
    conv part of VGG16's published 138,357,544 (minus the 3 fully connected layers), so vgg16-397923af.pth loads."""
    state_dict = build_vgg16_features().state_dict()
    expected_keys = set()
    for index, in_channels, out_channels in TORCHVISION_VGG16_CONVS:
        assert state_dict[f"{index}.weight"].shape == (out_channels, in_channels, 3, 3)
        expected_keys |= {f"{index}.weight", f"{index}.bias"}
    assert set(state_dict) == expected_keys
    fully_connected = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert sum(value.numel() for value in state_dict.values()) == 138_357_544 - fully_connected


def reference_lpips_distance(state_dict, x, y):
    """LPIPS with uniform channel weights written independently with functional ops, for comparison.

    Taps at the ReLU closing each of the five VGG blocks (relu1_2 ... relu5_3), i.e. before each max pool.
    """
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    blocks = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
    activations = [(x - shift) / scale, (y - shift) / scale]
    total = torch.zeros(x.shape[0])
    for block_index, conv_indices in enumerate(blocks):
        if block_index > 0:
            activations = [F.max_pool2d(a, 2) for a in activations]
        for index in conv_indices:
            weight, bias = state_dict[f"features.{index}.weight"], state_dict[f"features.{index}.bias"]
            activations = [F.relu(F.conv2d(a, weight, bias, padding=1)) for a in activations]
        normalized = [a / (a.norm(dim=1, keepdim=True) + 1e-10) for a in activations]
        total += (normalized[0] - normalized[1]).square().mean(dim=(1, 2, 3))  # channel mean and spatial mean
    return total


def test_perceptual_loss_matches_independent_reference(perceptual_loss, vgg_state_dict):
    """The distance per image equals an independent functional implementation of the LPIPS formula (right taps,
    scaling layer, channel normalisation, uniform channel weights, spatial mean, sum over the five layers)."""
    x, y = random_images(1), random_images(2)
    with torch.no_grad():
        got = perceptual_loss(x, y, reduction="none")
        expected = reference_lpips_distance(vgg_state_dict, x, y)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(perceptual_loss(x, y), expected.mean(), rtol=1e-4, atol=1e-6)


def test_perceptual_loss_zero_for_identical_positive_and_symmetric_for_different(perceptual_loss):
    """d(x, x) = 0; d(x, y) > 0 and d(x, y) = d(y, x) for different images."""
    x, y = random_images(3), random_images(4)
    with torch.no_grad():
        assert torch.equal(perceptual_loss(x, x.clone(), reduction="none"), torch.zeros(2))
        forward, backward = perceptual_loss(x, y, reduction="none"), perceptual_loss(y, x, reduction="none")
    assert (forward > 0).all()
    torch.testing.assert_close(forward, backward)


def test_perceptual_loss_gradient_reaches_input_but_not_weights(perceptual_loss):
    """Training signal flows to the reconstruction; the VGG (and channel weights) stay frozen."""
    x = random_images(5).requires_grad_(True)
    perceptual_loss(x, random_images(6)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not parameter.requires_grad for parameter in perceptual_loss.parameters())
    assert not perceptual_loss.training


def test_perceptual_loss_accepts_features_only_file(vgg_state_dict, perceptual_loss, tmp_path):
    """A file with only the features part (no 'features.' prefix) loads and gives the same distances."""
    path = tmp_path / "vgg16_features_only.pth"
    torch.save({k.removeprefix("features."): v for k, v in vgg_state_dict.items() if k.startswith("features.")}, path)
    x, y = random_images(7), random_images(8)
    with torch.no_grad():
        torch.testing.assert_close(PerceptualLoss(path)(x, y), perceptual_loss(x, y))


def test_perceptual_loss_lpips_weights_are_per_channel_weights(vgg_path, perceptual_loss, tmp_path):
    """LPIPS lin weights w_lc = 2 / Cl (twice the uniform channel mean) give exactly twice the unweighted distance,
    so the weights are applied per channel, to every layer, before the spatial mean."""
    lpips_path = tmp_path / "lpips_vgg.pth"
    channels = (64, 128, 256, 512, 512)
    torch.save({f"lin{i}.model.1.weight": torch.full((1, c, 1, 1), 2.0 / c) for i, c in enumerate(channels)}, lpips_path)
    x, y = random_images(9), random_images(10)
    with torch.no_grad():
        torch.testing.assert_close(PerceptualLoss(vgg_path, lpips_path)(x, y), 2 * perceptual_loss(x, y))


def test_perceptual_loss_missing_or_wrong_files_error_clearly(vgg_path, tmp_path):
    """No downloads: a missing VGG or LPIPS file, or a file with other keys, raises naming the file to supply."""
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        PerceptualLoss(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="vgg16-397923af.pth"):
        PerceptualLoss(wrong)
    with pytest.raises(FileNotFoundError, match="vgg.pth"):
        PerceptualLoss(vgg_path, tmp_path / "missing_lpips.pth")
    with pytest.raises(ValueError, match="lin0.model.1.weight"):
        PerceptualLoss(vgg_path, wrong)


# ---------------------------------------------------------------------------------------------------- discriminator


def test_patch_discriminator_output_shapes():
    """One logit per patch: 32×32 → 2×2 and 64×64 → 6×6 (three stride-2 and two stride-1 4×4 convs)."""
    discriminator = PatchDiscriminator(in_channels=3, base_channels=16, num_layers=3)
    assert discriminator(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert discriminator(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert PatchDiscriminator()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 6, 6)  # default width 64


def test_patch_discriminator_logits_do_not_depend_on_batch_mates():
    """GroupNorm (the justification for not using BatchNorm): an image's logits are the same alone or in a batch,
    in training mode too."""
    discriminator = PatchDiscriminator(base_channels=16).train()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(discriminator(images)[:1], discriminator(images[:1]))


# ------------------------------------------------------------------------------------------------------- GAN losses


def test_hinge_losses_on_hand_made_logits():
    """Hinge losses equal hand-computed values.

    real [2, 0.5, -1]: relu(1 - x) = [0, 0.5, 2], mean 5/6. fake [-2, 0, 1]: relu(1 + x) = [0, 1, 2], mean 1.
    Discriminator: ½ (5/6 + 1) = 11/12. Generator: -mean(fake) = 1/3.
    """
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(11 / 12)
    assert hinge_generator_loss(fake).item() == pytest.approx(1 / 3)
    # Confident, correct logits cost the discriminator nothing.
    assert hinge_discriminator_loss(torch.tensor([3.0]), torch.tensor([-3.0])).item() == 0.0


def test_adaptive_generator_weight_equals_gradient_norm_ratio():
    """λ = ||∇_W rec|| / (||∇_W gan|| + 1e-4) at the last layer's weight, computed here with separate forward
    passes and torch.autograd.grad; it is detached, clamped to max_weight, and leaves the graph usable."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    inputs, target = torch.randn(8, 5), torch.randn(8, 3)

    def losses():
        output = layer(inputs)
        return F.mse_loss(output, target), -(output * torch.linspace(0.5, 2.0, 3)).mean()

    reconstruction_loss, generator_loss = losses()
    weight = adaptive_generator_weight(reconstruction_loss, generator_loss, layer.weight)
    # Independent computation on fresh graphs.
    gradient_reconstruction = torch.autograd.grad(losses()[0], layer.weight)[0]
    gradient_generator = torch.autograd.grad(losses()[1], layer.weight)[0]
    expected = gradient_reconstruction.norm() / (gradient_generator.norm() + 1e-4)
    assert weight.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not weight.requires_grad
    (reconstruction_loss + weight * generator_loss).backward()  # graphs were retained for the real backward pass
    assert layer.weight.grad is not None
    clamped = adaptive_generator_weight(*losses(), layer.weight, max_weight=0.01)
    assert clamped.item() == pytest.approx(0.01) and expected.item() > 0.01
