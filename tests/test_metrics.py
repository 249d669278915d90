"""Tests for minvar/evaluation/metrics.py and minvar/evaluation/inception.py: every metric against an answer known in closed form."""

import math

import numpy as np
import pytest
import torch

from minvar.evaluation.inception import FIDInceptionV3, InceptionV3Features, tf_average_pool
from minvar.evaluation.metrics import (
    codebook_usage,
    compute_generation_metrics,
    frechet_distance,
    frechet_distance_from_features,
    gaussian_statistics,
    inception_score,
    precision_recall,
    psnr,
)


def random_covariance(generator: torch.Generator, dim: int) -> torch.Tensor:
    """A well-conditioned random symmetric positive definite matrix (float64)."""
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return a @ a.t() / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------- Fréchet distance


def test_gaussian_statistics_match_numpy_mean_and_cov():
    """Mean and covariance are the unbiased ones np.cov gives (what pytorch-fid uses), also when accumulated in chunks."""
    features = np.random.default_rng(0).normal(size=(300, 7)).astype(np.float32)
    mean, covariance = gaussian_statistics(torch.from_numpy(features), chunk_size=64)
    np.testing.assert_allclose(mean.numpy(), features.astype(np.float64).mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(covariance.numpy(), np.cov(features.astype(np.float64), rowvar=False), atol=1e-12)


def test_frechet_distance_diagonal_covariances_closed_form():
    """With commuting (diagonal) covariances the distance is ||mu1-mu2||² + Σ(s1 + s2 - 2√(s1 s2))."""
    generator = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(16, generator=generator), torch.randn(16, generator=generator)
    variance1 = torch.rand(16, generator=generator) + 0.1
    variance2 = torch.rand(16, generator=generator) + 0.1
    expected = float(
        ((mu1 - mu2) ** 2).sum() + (variance1 + variance2 - 2 * (variance1 * variance2).sqrt()).sum()
    )
    got = frechet_distance(mu1, torch.diag(variance1), mu2, torch.diag(variance2))
    assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_general_2x2_closed_form():
    """Non-commuting 2×2 covariances: tr √(S1 S2) = √(tr(S1 S2) + 2√det(S1 S2)) (eigenvalues λ1, λ2 ≥ 0)."""
    sigma1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    sigma2 = np.array([[1.0, -0.4], [-0.4, 3.0]])
    assert not np.allclose(sigma1 @ sigma2, sigma2 @ sigma1)  # the case the diagonal test does not cover
    mu1, mu2 = np.array([0.5, -1.0]), np.array([1.5, 2.0])
    product = sigma1 @ sigma2
    trace_sqrt = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_general_covariances_match_nonsymmetric_eigenvalues():
    """In higher dimension, matches tr √(S1 S2) from the eigenvalues of the non-symmetric product S1 S2 (numpy)."""
    generator = torch.Generator().manual_seed(1)
    sigma1, sigma2 = random_covariance(generator, 24), random_covariance(generator, 24)
    mu1 = torch.randn(24, generator=generator, dtype=torch.float64)
    mu2 = torch.randn(24, generator=generator, dtype=torch.float64)
    eigenvalues = np.linalg.eigvals(sigma1.numpy() @ sigma2.numpy())  # complex dtype, real positive in theory
    trace_sqrt = np.sqrt(eigenvalues.real.clip(min=0)).sum()
    expected = float(((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace()) - 2 * trace_sqrt
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_identical_feature_sets_is_zero():
    """Identical feature sets give ≈0, including a singular covariance (fewer samples than dimensions)."""
    rng = np.random.default_rng(0)
    for num_samples, dim in [(500, 32), (20, 64)]:
        features = rng.normal(size=(num_samples, dim))
        assert abs(frechet_distance_from_features(features, features.copy())) < 1e-6


def test_frechet_distance_of_shifted_features_is_squared_shift():
    """Translating every feature by c leaves the covariance alone, so the distance is exactly ||c||²."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 10))
    shift = rng.normal(size=10)
    got = frechet_distance_from_features(features, features + shift)
    assert got == pytest.approx(float(np.sum(shift ** 2)), rel=1e-8)


# ------------------------------------------------------------------------------------------------------ Inception Score


def test_inception_score_of_uniform_predictions_is_one():
    """Identical (uniform) predictions carry no class information: KL to the marginal is 0, IS = exp(0) = 1."""
    probs = torch.full((100, 10), 0.1)
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_evenly_spread_predictions_is_number_of_classes():
    """One-hot predictions spread evenly over C classes in every split give IS = C (the maximum)."""
    num_classes = 8
    labels = torch.arange(10 * 4 * num_classes) % num_classes  # each split of 32 holds every class 4 times
    probs = torch.nn.functional.one_hot(labels, num_classes).double()
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(num_classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ Precision and recall


def test_precision_recall_of_identical_sets_is_one_one():
    """Every sample lies in its own ball (distance 0 ≤ radius), so identical sets give precision = recall = 1."""
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert precision_recall(features, features.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero_zero():
    """Two clouds far apart relative to their k-NN radii do not overlap: precision = recall = 0."""
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(150, 16, generator=generator)
    fake = torch.randn(120, 16, generator=generator) + 100.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_hand_made_one_dimensional_case():
    """1-D points with hand-computed answers; the result must not depend on the distance batch size.

    Real points 0, 1, ..., 9 with k = 1 have radius 1 (nearest other point). Fake points {0.5, 100}: with k = 1
    each has radius 99.5. Precision: 0.5 is inside a real ball, 100 is not → 1/2. Recall: every real point is
    within 99.5 of the fake point 0.5 → 1.
    """
    real = torch.arange(10.0).unsqueeze(1)  # (10, 1)
    fake = torch.tensor([[0.5], [100.0]])  # (2, 1)
    for batch_size in (1, 3, 1000):
        assert precision_recall(real, fake, k=1, batch_size=batch_size) == (0.5, 1.0)
    # Swapping the roles swaps the answers: precision and recall are mirror images of each other.
    assert precision_recall(fake, real, k=1) == (1.0, 0.5)


# ----------------------------------------------------------------------------------------- PSNR and codebook usage


def test_psnr_of_known_mse():
    """PSNR = 10 log10(range² / MSE): constant errors 1/8 and 1/4 on [-1, 1] images (range 2) give known values.

    The errors are powers of two so that float32 images hold them exactly.
    """
    target = torch.zeros(2, 3, 8, 8)
    reconstruction = target.clone()
    reconstruction[0] += 0.125  # MSE 1/64
    reconstruction[1] -= 0.25  # MSE 1/16
    per_image, mean = psnr(reconstruction, target, data_range=2.0)
    expected = [10 * math.log10(4 * 64), 10 * math.log10(4 * 16)]
    assert per_image.tolist() == pytest.approx(expected, rel=1e-9)
    assert mean == pytest.approx(sum(expected) / 2, rel=1e-9)


def test_codebook_usage_of_hand_made_histogram():
    """Usage = share of codes seen, perplexity = exp(entropy) of the histogram, per scale and pooled; batches add up.

    V = 4. Scale 0 (1×1): always code 0 → usage 1/4, perplexity 1. Scale 1 (2×2): codes 0, 1, 2, 3 evenly →
    usage 1, perplexity 4. Scale 2 (3×3): counts 10, 4, 4, 0 → usage 3/4, perplexity exp(entropy of 10/18, 4/18, 4/18).
    """
    scale0 = torch.tensor([[0], [0]])  # (B=2, 1)
    scale1 = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])  # (2, 4)
    scale2 = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2, 0], [0, 0, 0, 0, 1, 1, 2, 2, 0]])  # counts 10, 4, 4, 0
    result = codebook_usage([scale0, scale1, scale2], vocab_size=4)
    assert result["usage"] == pytest.approx([0.25, 1.0, 0.75])
    entropy2 = -(10 / 18 * math.log(10 / 18) + 2 * (4 / 18) * math.log(4 / 18))
    assert result["perplexity"] == pytest.approx([1.0, 4.0, math.exp(entropy2)], rel=1e-12)
    # Pooled counts over all scales: code 0: 2 + 2 + 10, code 1: 2 + 4, code 2: 2 + 4, code 3: 2.
    pooled = np.array([14.0, 6.0, 6.0, 2.0]) / 28
    assert result["perplexity_all_scales"] == pytest.approx(math.exp(-(pooled * np.log(pooled)).sum()), rel=1e-12)
    assert result["usage_all_scales"] == 1.0
    # The same tokens given as two batches of one image each must give the same statistics.
    split = codebook_usage([[scale[:1] for scale in (scale0, scale1, scale2)],
                            [scale[1:] for scale in (scale0, scale1, scale2)]], vocab_size=4)
    assert split == pytest.approx(result)


def test_codebook_usage_perfectly_even_and_collapsed():
    """A uniform histogram over all V codes has perplexity V; a collapsed one has perplexity 1 and usage 1/V."""
    even = codebook_usage([torch.arange(16).view(2, 8)], vocab_size=16)
    collapsed = codebook_usage([torch.full((2, 8), 5)], vocab_size=16)
    assert even["perplexity"][0] == pytest.approx(16.0) and even["usage"][0] == 1.0
    assert collapsed["perplexity"][0] == pytest.approx(1.0) and collapsed["usage"][0] == 1 / 16


# ------------------------------------------------------------------------------------------- compute_generation_metrics


def flatten_extractor(images):
    """A toy extractor: features are the pixels; 'probabilities' are a softmax over the first 4 pixels."""
    features = images.flatten(1)
    return features[:, :4].softmax(dim=1), features


def test_compute_generation_metrics_identical_sets_and_missing_probs():
    """Fake = real gives FID ≈ 0 and precision = recall = 1; an extractor without probabilities gives no IS."""
    images = torch.rand(60, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = compute_generation_metrics(flatten_extractor, images, images.clone(), batch_size=16)
    assert abs(results["fid"]) < 1e-6
    assert (results["precision"], results["recall"]) == (1.0, 1.0)
    assert "inception_score" in results
    no_probs = compute_generation_metrics(lambda x: (None, x.flatten(1)), images, images.clone(), batch_size=16)
    assert "inception_score" not in no_probs
    # Iterables of batches are accepted as well as tensors, and give the same numbers.
    from_batches = compute_generation_metrics(flatten_extractor, list(images.split(7)), images.split(9), batch_size=16)
    assert from_batches == pytest.approx(results)


# ------------------------------------------------------------------------------------------------------- Inception


def test_fid_inception_architecture_matches_pytorch_fid_layout():
    """Parameter count and key names match the pytorch-fid FID Inception (so its weights file can load strictly).

    torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with AuxLogits). The FID variant
    has no AuxLogits (conv0 768·128 + BN 2·128, conv1 128·768·25 + BN 2·768, fc 768·1000 + 1000) and a
    1008-way classifier (+8 rows of 2048 weights + 8 biases).
    """
    aux_logits = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
    expected = 27_161_264 - aux_logits + 8 * 2048 + 8
    network = FIDInceptionV3()
    assert sum(p.numel() for p in network.parameters()) == expected
    state_dict = network.state_dict()
    # A few keys and shapes as they appear in pt_inception-2015-12-05-6726825d.pth.
    assert state_dict["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state_dict["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state_dict["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state_dict["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert state_dict["fc.weight"].shape == (1008, 2048)
    assert not any(key.startswith("AuxLogits") for key in state_dict)


def test_fid_inception_pooling_quirks():
    """The FID variant's pool branches: TF-style average pooling that ignores zero padding (a constant image stays
    constant at the borders, where a padded average would give 4/9 at corners), and max pooling in Mixed_7c only."""
    ones = torch.ones(1, 2, 5, 5)
    assert torch.equal(tf_average_pool(ones), ones)
    with torch.device("meta"):
        network = FIDInceptionV3()
    assert network.Mixed_7c.max_pool_branch and not network.Mixed_7b.max_pool_branch


def test_inception_features_load_and_output_shapes(tmp_path, one_thread):
    """Weights saved from a random FIDInceptionV3 load strictly (with or without BatchNorm counters) and give
    probabilities (B, 1008) summing to 1 and the network's own 2048-d pool features for any input size."""
    torch.manual_seed(0)
    network = FIDInceptionV3().eval()
    # He init keeps random activations O(1) through ~90 layers; PyTorch's default init shrinks them into
    # denormal floats, which are slow on CPUs and would make the feature comparison below vacuous.
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    state_dict = network.state_dict()
    path = tmp_path / "inception.pth"
    # Old checkpoints lack `num_batches_tracked`; store it that way to cover that path too.
    torch.save({k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}, path)
    extractor = InceptionV3Features(path)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    probs, features = extractor(images)
    assert probs.shape == (1, 1008) and features.shape == (1, 2048)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        _, reference_features = network(torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear"))
    assert reference_features.abs().mean() > 1e-2  # a real signal, not vanishing activations
    torch.testing.assert_close(features, reference_features)
    # .train() from a parent must not switch BatchNorm to batch statistics.
    assert not extractor.train().network.training


def test_inception_features_wrong_or_missing_file_errors_clearly(tmp_path):
    """A missing file or a file with other keys fails loudly and points at where to get pytorch-fid's weights."""
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionV3Features(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match=r"missing keys.*unexpected keys.*pytorch-fid"):
        InceptionV3Features(wrong)
