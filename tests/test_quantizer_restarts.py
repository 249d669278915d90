"""Dead-code restarts of the multi-scale quantizer (tokenizer training only; Algorithms 1 and 2 are untouched).

What is protected: every restarted code is a residual vector that Algorithm 1 quantizes at some scale
(z_k = area_down(f - f̂_{<k}, pn_k), recomputed here independently); the error-weighted draw weighs each vector by
its squared distance to the nearest code times the latent area its token covers, so it never picks a vector that a
code already matches while others are left, draws distinct vectors when it can, and gives the 1×1 scale far more
than its 1-in-L share of the codes; live codes are never touched and restarted codes get their grace hit share.
"""
import torch

from minvar.quantizer import MultiScaleQuantizer

PATCH_NUMS = (1, 2, 3, 4)


def quantizer_and_latent(vocab_size: int, batch: int = 4, seed: int = 0, random_codes: bool = True):
    """A small quantizer (random codebook, or the training init when `random_codes` is False) and a random
    latent (B, Cvae, 4, 4) that, like an encoder's, varies more between images than between nearby positions."""
    torch.manual_seed(seed)
    quantizer = MultiScaleQuantizer(vocab_size, code_dim=4, patch_nums=PATCH_NUMS)
    if random_codes:
        torch.nn.init.normal_(quantizer.embedding.weight)
    return quantizer, torch.randn(batch, 4, 1, 1) + 0.3 * torch.randn(batch, 4, 4, 4)


def residuals_per_scale(quantizer, f_BChw) -> list:
    """What Algorithm 1 quantizes at each scale, computed apart from the restart code: (B*pn², Cvae) each."""
    _, f_hats = quantizer.encode(f_BChw)
    out = []
    for k, pn in enumerate(PATCH_NUMS):
        rest = f_BChw - (f_hats[k - 1] if k > 0 else 0)
        z = torch.nn.functional.adaptive_avg_pool2d(rest, pn)  # area downsampling
        out.append(z.permute(0, 2, 3, 1).reshape(-1, 4))
    return out


def scale_of(code: torch.Tensor, residuals: list) -> int:
    """Index of the scale whose residuals contain `code` (at most one, for random data), else -1."""
    found = [k for k, z in enumerate(residuals) if torch.isclose(z, code, atol=1e-6).all(dim=1).any()]
    assert len(found) <= 1, "random residuals of two scales should never coincide"
    return found[0] if found else -1


def test_restart_weights_are_each_vectors_share_of_the_error():
    """Weight = min_e ||z - e||² (brute force here) × 16 / pn² latent positions covered by the token."""
    quantizer, f = quantizer_and_latent(32)
    residuals = residuals_per_scale(quantizer, f)
    codebook = quantizer.embedding.weight.detach()
    expected = torch.cat([((z[:, None] - codebook[None]) ** 2).sum(-1).min(dim=1).values * 16 / pn ** 2
                          for z, pn in zip(residuals, PATCH_NUMS)])
    assert torch.allclose(quantizer.restart_weights(residuals), expected, rtol=1e-4, atol=1e-5)


def test_error_weighted_draw_takes_distinct_residuals_and_skips_matched_ones():
    """Codes 0-3 are live exact copies of the 4 images' 1×1 residuals (error 0): the restart of the 60 dead codes
    draws 60 distinct vectors of the other scales, none of them a 1×1 vector."""
    quantizer, f = quantizer_and_latent(64, seed=1)
    quantizer.embedding.weight.data[:4] = f.mean(dim=(2, 3))  # the 1×1 scale's residuals are the latent means
    quantizer.ema_vocab_hit_SV[0, :4] = 0.25
    residuals = residuals_per_scale(quantizer, f)
    assert quantizer.restart_weights(residuals)[:4].max() < 1e-5
    before = quantizer.embedding.weight.detach().clone()
    assert quantizer.restart_dead_codes(f, generator=torch.Generator().manual_seed(0), error_weighted=True) == 60
    new = quantizer.embedding.weight.detach()
    assert torch.equal(new[:4], before[:4]), "live codes are never touched"
    scales = [scale_of(code, residuals) for code in new[4:]]
    assert -1 not in scales and 0 not in scales, scales
    assert len(torch.unique(new[4:], dim=0)) == 60, "enough vectors with an error: each is drawn once at most"
    assert (quantizer.ema_vocab_hit_SV[:, 4:] > 1e-4).all(), "restarted codes get a grace hit share"
    assert quantizer.restart_dead_codes(f, error_weighted=True) == 0  # nothing is dead any more


def test_error_weighting_gives_the_coarsest_scale_its_codes():
    """From the training init (all codes near zero), the 1×1 scale holds 4 of the 120 residuals (3%), but large
    ones with a 16× weight per unit of error: over 5 restarts of 16 codes it gets at least 2 of its 4 vectors in on average, where a
    uniform draw would give it about 16 · 4 / 120 ≈ 0.5."""
    counts = []
    for seed in range(5):
        quantizer, f = quantizer_and_latent(16, seed=seed, random_codes=False)
        residuals = residuals_per_scale(quantizer, f)
        quantizer.restart_dead_codes(f, generator=torch.Generator().manual_seed(seed), error_weighted=True)
        coarse = [code for code in quantizer.embedding.weight if scale_of(code, residuals) == 0]
        counts.append(len(torch.unique(torch.stack(coarse), dim=0)) if coarse else 0)  # distinct 1×1 vectors
    assert sum(counts) / len(counts) >= 2, counts  # 4× the uniform draw's expectation


def test_more_dead_codes_than_residuals_repeats_some():
    """Batch 1: 1 + 4 + 9 + 16 = 30 residuals for 40 dead codes; every code is still one of them."""
    quantizer, f = quantizer_and_latent(40, batch=1, seed=2)
    residuals = residuals_per_scale(quantizer, f)
    assert quantizer.restart_dead_codes(f, error_weighted=True) == 40
    assert all(scale_of(code, residuals) >= 0 for code in quantizer.embedding.weight)


def test_uniform_draw_takes_residual_vectors_too():
    quantizer, f = quantizer_and_latent(64, seed=3)
    residuals = residuals_per_scale(quantizer, f)
    quantizer.restart_dead_codes(f)  # the default
    assert all(scale_of(code, residuals) >= 0 for code in quantizer.embedding.weight)


def test_train_tokenizer_runs_with_error_weighted_restarts(tmp_path, monkeypatch):
    """The script's flag reaches the quantizer: a short run restarts codes through the error weights (and the
    default run does not use them)."""
    import sys
    from conftest import REPO
    if str(REPO) not in sys.path:  # the scripts live at the repository root
        sys.path.insert(0, str(REPO))
    import train_tokenizer
    torch.set_num_threads(1)
    calls = []
    original = MultiScaleQuantizer.restart_weights
    monkeypatch.setattr(MultiScaleQuantizer, "restart_weights",
                        lambda self, residuals: calls.append(1) or original(self, residuals))
    common = ["--steps", "4", "--device", "cpu", "--num-images", "4", "--batch-size", "4", "--warmup-steps", "1",
              "--log-every", "0", "--grid-every", "0", "--restart-every", "2"]
    train_tokenizer.main(["--out-dir", str(tmp_path / "uniform"), *common])
    assert calls == [] and "restarted" in (tmp_path / "uniform" / "log.txt").read_text()
    train_tokenizer.main(["--out-dir", str(tmp_path / "weighted"), *common, "--restart-pool", "error-weighted"])
    assert len(calls) >= 1 and "restarted" in (tmp_path / "weighted" / "log.txt").read_text()
