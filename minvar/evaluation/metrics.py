"""Evaluation metrics for generated images and for the tokenizer: FID, IS, precision / recall, PSNR, codebook usage.

VAR (Tian et al. 2024, Table 1) reports FID, IS, precision and recall on 50k class-conditional ImageNet samples,
measured with the ADM evaluator (openai/guided-diffusion `evaluations/evaluator.py`). The official VAR repo has no
metric code of its own, so this file re-derives each metric from its paper:
  * FID, Fréchet Inception Distance (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the
    Inception features of real and generated images.
  * IS, Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), averaged over 10 splits.
  * Improved precision and recall (Kynkäänniemi et al. 2019): k-nearest-neighbour balls around feature vectors.
  * PSNR and codebook usage / perplexity: the usual tokenizer diagnostics (VQGAN, Esser et al. 2021; VAR Sec. 3.2).

Feature extractors are pluggable: any callable `images (B, 3, H, W) in [-1, 1] → (probs (B, C) or None,
features (B, D))` works (the `FeatureExtractor` protocol). `minvar.evaluation.inception.InceptionV3Features` is the
standard one.

Everything that is sensitive to rounding (covariances, matrix square roots, logs of small probabilities, distance
comparisons) runs in float64.

Shape legend:
    N, M  numbers of feature vectors (real, generated)
    D     feature dimension (2048 for Inception)
    C     number of classes of the classifier (1008 for the FID Inception)
    B     batch size
    K     number of scales, k its index; pn side of scale k's token map; V codebook size
    H, W  image size
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol, Union

import numpy as np
import torch


ArrayLike = Union[torch.Tensor, np.ndarray]  # Union, not |, so the alias also evaluates on Python 3.9


def as_float64_tensor(values: ArrayLike) -> torch.Tensor:
    """Accept numpy arrays or tensors on any device; return a detached float64 tensor on the same device."""
    return torch.as_tensor(values).detach().to(torch.float64)


# ------------------------------------------------------------------------------------------------------------------
# Fréchet Inception Distance
# ------------------------------------------------------------------------------------------------------------------


def gaussian_statistics(features: ArrayLike, chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of feature vectors (N, D), in float64, as `np.cov(rowvar=False)`.

    The covariance is accumulated over chunks of rows, so 50k × 2048 float32 features never need a float64 copy
    of the whole matrix (that copy alone would be 800 MB).
    """
    features = torch.as_tensor(features).detach()
    num_samples = features.shape[0]
    if num_samples < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {num_samples}")
    # Two passes (mean first, then centred products) are more accurate than E[xx^T] - mu mu^T in one pass.
    mean = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)  # (D,)
    for start in range(0, num_samples, chunk_size):
        mean += features[start:start + chunk_size].to(torch.float64).sum(dim=0)  # (D,)
    mean /= num_samples
    covariance = torch.zeros(features.shape[1], features.shape[1], dtype=torch.float64, device=features.device)
    for start in range(0, num_samples, chunk_size):
        centred = features[start:start + chunk_size].to(torch.float64) - mean  # (chunk, D)
        covariance += centred.t() @ centred  # (D, D)
    covariance /= num_samples - 1  # unbiased, as np.cov and pytorch-fid
    return mean, covariance


def zero_round_off_eigenvalues(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Set eigenvalues of a PSD matrix that are indistinguishable from 0 in float64 to exactly 0.

    A symmetric eigensolver is accurate to about D · eps · λ_max in absolute terms (the same tolerance
    `np.linalg.matrix_rank` uses), so smaller eigenvalues, including slightly negative ones, are round-off of a
    true 0. Zeroing them matters before a square root: √(1e-16) = 1e-8 per null direction would otherwise add up
    to ~1e-6 of spurious distance when the covariance is singular (fewer samples than feature dimensions).
    """
    tolerance = eigenvalues.shape[0] * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().max()
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))  # (D,)


def symmetric_matrix_square_root(matrix: torch.Tensor) -> torch.Tensor:
    """√S of a symmetric positive semi-definite S via its eigendecomposition S = Q diag(λ) Q^T."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)  # (D,), (D, D)
    root_eigenvalues = zero_round_off_eigenvalues(eigenvalues).sqrt()  # (D,)
    return (eigenvectors * root_eigenvalues) @ eigenvectors.t()  # (D, D) = Q diag(√λ) Q^T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):

        d² = ||mu1 - mu2||² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½)

    pytorch-fid computes (sigma1 sigma2)^½ with scipy's general `sqrtm`, which can return complex noise and needs an
    eps fallback. We avoid a non-symmetric square root entirely: sigma1 sigma2 = √sigma1 (√sigma1 sigma2) has the
    same eigenvalues as the symmetric PSD matrix √sigma1 sigma2 √sigma1 (AB and BA share eigenvalues), so

        tr((sigma1 sigma2)^½) = Σ_i sqrt(λ_i(√sigma1 sigma2 √sigma1)),

    two symmetric eigendecompositions in float64. This holds even when sigma1 is singular (fewer samples than D).
    """
    mu1, sigma1, mu2, sigma2 = (as_float64_tensor(value) for value in (mu1, sigma1, mu2, sigma2))
    sqrt_sigma1 = symmetric_matrix_square_root(sigma1)  # (D, D)
    middle = sqrt_sigma1 @ sigma2.to(sqrt_sigma1.device) @ sqrt_sigma1  # (D, D), symmetric PSD in exact arithmetic
    middle = (middle + middle.t()) / 2  # remove round-off asymmetry before eigvalsh, which reads one triangle
    trace_sqrt_product = zero_round_off_eigenvalues(torch.linalg.eigvalsh(middle)).sqrt().sum()
    mean_term = (mu1 - mu2.to(mu1.device)).square().sum()
    distance = mean_term + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product
    return float(distance)


def frechet_distance_from_features(real_features: ArrayLike, fake_features: ArrayLike) -> float:
    """FID-style distance between two feature sets (N, D) and (M, D): fit one Gaussian to each, compare them."""
    return frechet_distance(*gaussian_statistics(real_features), *gaussian_statistics(fake_features))


# ------------------------------------------------------------------------------------------------------------------
# Inception Score
# ------------------------------------------------------------------------------------------------------------------


def inception_score(probs: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) of class probabilities p(y|x) (N, C): returns (mean, std) over splits.

    For each of `splits` consecutive chunks: IS = exp(mean_x KL(p(y|x) || p(y))) with p(y) the chunk's mean
    prediction, exactly as openai/improved-gan `inception_score/model.py` (std is the population std, np.std).
    It is 1 when every prediction equals the marginal (no confident, no diverse classes) and C when each image is
    classified with certainty and the classes are used evenly.
    """
    probs = as_float64_tensor(probs)
    num_samples = probs.shape[0]
    if num_samples < splits:
        raise ValueError(f"need at least splits={splits} predictions, got {num_samples}")
    scores = []
    for split_index in range(splits):
        part = probs[split_index * num_samples // splits:(split_index + 1) * num_samples // splits]  # (N/splits, C)
        marginal = part.mean(dim=0, keepdim=True)  # (1, C), p(y)
        # xlogy gives 0 · log 0 = 0, so one-hot predictions do not produce NaN.
        kl = torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)  # (N/splits, C)
        scores.append(math.exp(float(kl.sum(dim=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------------------------------------------
# Improved precision and recall
# ------------------------------------------------------------------------------------------------------------------


def squared_distances(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (R, N) between rows (R, D) and columns (N, D), via ||a||² - 2ab + ||b||²."""
    distances = rows.square().sum(1, keepdim=True) - 2 * rows @ columns.t() + columns.square().sum(1)  # (R, N)
    return distances.clamp(min=0)  # the expansion can go slightly negative for near-identical vectors


def nearest_neighbour_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Squared distance (N,) from each feature vector to its k-th nearest neighbour in the same set, excluding itself.

    Each row's own distance (0) is the smallest, so the k-th neighbour other than itself is the (k+1)-th smallest.
    Squared distances are compared throughout, as in Kynkäänniemi et al.'s code; squaring is monotone so the
    inside / outside decisions are the same as with plain distances.
    """
    if features.shape[0] <= k:
        raise ValueError(f"need more than k={k} feature vectors, got {features.shape[0]}")
    radii = []
    for start in range(0, features.shape[0], batch_size):
        distances = squared_distances(features[start:start + batch_size], features)  # (batch, N)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # (batch,)
    return torch.cat(radii)  # (N,)


def precision_recall(
    real_features: ArrayLike, fake_features: ArrayLike, k: int = 3, batch_size: int = 1000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 2), k = 3 as in the paper and ADM's evaluator.

    The real manifold is the union of balls around each real feature whose radius is the distance to its k-th
    nearest real neighbour; likewise for the fake manifold.
      precision = share of fake samples inside the real manifold  (are samples realistic?)
      recall    = share of real samples inside the fake manifold  (is the data distribution covered?)
    Distances are computed `batch_size` rows at a time, so memory is O(batch_size · max(N, M)) and 10k × 10k fits
    easily; everything runs on the device of `real_features`, in float64.
    """
    real = as_float64_tensor(real_features)  # (N, D)
    fake = as_float64_tensor(fake_features).to(real.device)  # (M, D)
    real_radii = nearest_neighbour_radii(real, k, batch_size)  # (N,)
    fake_radii = nearest_neighbour_radii(fake, k, batch_size)  # (M,)
    # One pass over the (M, N) cross-distance matrix serves both directions: a row tells whether that fake sample
    # is inside some real ball, a column whether that real sample is inside some fake ball.
    fake_inside_real = torch.zeros(fake.shape[0], dtype=torch.bool, device=real.device)  # (M,)
    real_inside_fake = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)  # (N,)
    for start in range(0, fake.shape[0], batch_size):
        distances = squared_distances(fake[start:start + batch_size], real)  # (batch, N)
        fake_inside_real[start:start + batch_size] = (distances <= real_radii[None, :]).any(dim=1)  # (batch,)
        real_inside_fake |= (distances <= fake_radii[start:start + batch_size, None]).any(dim=0)  # (N,)
    return float(fake_inside_real.double().mean()), float(real_inside_fake.double().mean())


# ------------------------------------------------------------------------------------------------------------------
# Tokenizer metrics: PSNR and codebook usage
# ------------------------------------------------------------------------------------------------------------------


def psnr(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> tuple[torch.Tensor, float]:
    """Peak signal-to-noise ratio 10 log10(data_range² / MSE) of images (B, C, H, W).

    data_range is max − min of the pixel scale: 2 for minvar's [-1, 1] images (1 for [0, 1], 255 for uint8).
    Returns (per-image PSNR (B,), their mean): the mean of per-image PSNRs, as tokenizer papers usually report,
    which is not the PSNR of the mean MSE. Identical images give +inf.
    """
    difference = reconstruction.detach().to(torch.float64) - target.detach().to(torch.float64)  # (B, C, H, W)
    mse = difference.square().flatten(1).mean(dim=1)  # (B,)
    per_image = 10 * torch.log10(data_range ** 2 / mse)  # (B,)
    return per_image, float(per_image.mean())


def codebook_usage(
    indices_per_scale: Sequence[torch.Tensor] | Iterable[Sequence[torch.Tensor]], vocab_size: int
) -> dict[str, list[float] | float]:
    """How much of the codebook the multi-scale quantizer uses, per scale and over all scales.

    indices_per_scale: either one batch, a list of K LongTensors (B, pn_k²) as the quantizer returns, or a list of
    such lists (one per batch), whose histograms are summed.
    Returns a dict with
        "usage":       K fractions of the V codes that occur at least once at scale k,
        "perplexity":  K values exp(entropy of the code histogram at scale k), i.e. the effective number of codes
                       (V for perfectly even use, 1 for collapse onto a single code),
        "usage_all_scales", "perplexity_all_scales": the same over the tokens of all scales pooled.
    Small scales have few tokens per image (1 at 1×1), so their usage is bounded by the token count; compare
    scales on perplexity with that in mind.
    """
    batches = list(indices_per_scale)
    if len(batches) == 0:
        raise ValueError("codebook_usage needs at least one batch of indices")
    if isinstance(batches[0], torch.Tensor):
        batches = [batches]  # a single batch: list of K tensors
    num_scales = len(batches[0])
    counts = torch.zeros(num_scales, vocab_size, dtype=torch.float64)  # (K, V)
    for batch in batches:
        if len(batch) != num_scales:
            raise ValueError(f"every batch must have {num_scales} scales, got {len(batch)}")
        for scale_index, indices in enumerate(batch):
            counts[scale_index] += torch.bincount(indices.flatten().cpu(), minlength=vocab_size).double()  # (V,)

    def usage_and_perplexity(histogram: torch.Tensor) -> tuple[float, float]:
        probabilities = histogram / histogram.sum()  # (V,)
        entropy = -torch.special.xlogy(probabilities, probabilities).sum()  # nats; 0 · log 0 = 0
        return float((histogram > 0).double().mean()), math.exp(float(entropy))

    per_scale = [usage_and_perplexity(counts[scale_index]) for scale_index in range(num_scales)]
    usage_all, perplexity_all = usage_and_perplexity(counts.sum(dim=0))
    return {
        "usage": [usage for usage, _ in per_scale],
        "perplexity": [perplexity for _, perplexity in per_scale],
        "usage_all_scales": usage_all,
        "perplexity_all_scales": perplexity_all,
    }


# ------------------------------------------------------------------------------------------------------------------
# Putting it together: a pluggable feature extractor and one call for FID / IS / precision / recall
# ------------------------------------------------------------------------------------------------------------------


class FeatureExtractor(Protocol):
    """Anything that maps images (B, 3, H, W) in [-1, 1] to (class probabilities (B, C) or None, features (B, D)).

    `InceptionV3Features` is the standard choice (probs (B, 1008), features (B, 2048)); a DINOv2 or CLIP wrapper
    that returns (None, features) also works, and then no Inception Score is reported.
    """

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]: ...


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run `extractor` over images and return (probs (N, C) or None, features (N, D)), both float32 on the CPU.

    images: a tensor (N, 3, H, W), cut into chunks of `batch_size`, or an iterable of (b, 3, H, W) batches (for
    datasets that do not fit in memory; then the iterable's own batches are used). Each batch is moved to `device`
    if given. Keeping the outputs on the CPU lets a script cache the real-image features once.
    """
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)  # tuple of (batch_size, 3, H, W)
    all_probs, all_features = [], []
    for batch in images:
        probs, features = extractor(batch if device is None else batch.to(device))  # (b, C) or None, (b, D)
        all_features.append(features.float().cpu())
        if probs is not None:
            all_probs.append(probs.float().cpu())
    return (torch.cat(all_probs) if all_probs else None), torch.cat(all_features)  # (N, C) or None, (N, D)


def compare_features(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    fake_probs: torch.Tensor | None = None,
    k: int = 3,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """FID, precision, recall and (given class probabilities) Inception Score of fake vs real feature vectors.

    real_features (N, D), fake_features (M, D), fake_probs (M, C) or None. Split from `compute_generation_metrics`
    so that a script can extract the reference features once and compare several sets to them (samples, a second
    real set for the floor, tokenizer reconstructions for the ceiling). The Fréchet distance is biased upward at
    small M (the covariance estimate is noisy), so two sets are comparable only at the same M against the same
    reference: compare samples to a real floor and to reconstructions of as many images as there are samples.
    """
    results = {"fid": frechet_distance_from_features(real_features, fake_features)}
    distance_device = device if device is not None else "cpu"
    precision, recall = precision_recall(real_features.to(distance_device), fake_features.to(distance_device), k=k)
    results["precision"], results["recall"] = precision, recall
    if fake_probs is not None:
        results["inception_score"], results["inception_score_std"] = inception_score(fake_probs)
    return results


def compute_generation_metrics(
    extractor: FeatureExtractor,
    real_images: torch.Tensor | Iterable[torch.Tensor],
    fake_images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int,
    k: int = 3,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """FID, precision, recall and (if the extractor gives probabilities) Inception Score of fake vs real images.

    Images are (N, 3, H, W) tensors in [-1, 1] or iterables of batches (see `extract_features`). Returns a dict with
    "fid", "precision", "recall" and, when probabilities are available, "inception_score" and
    "inception_score_std" (IS is computed on the fake images only, as in the paper). Precision / recall run on
    `device` if given, otherwise on the CPU.

    NOTE (differs from the numbers in VAR's paper): those come from the TensorFlow Inception of the ADM evaluator
    with a fixed 10k-image ImageNet reference batch; a PyTorch port with another reference set gives close but not
    identical values, so compare runs measured the same way only.
    """
    _, real_features = extract_features(extractor, real_images, batch_size, device)  # (N, D)
    fake_probs, fake_features = extract_features(extractor, fake_images, batch_size, device)  # (M, C), (M, D)
    return compare_features(real_features, fake_features, fake_probs, k=k, device=device)
