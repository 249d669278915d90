"""The FLOP count behind MFU (minvar/evaluation/flops.py) against torch's own FLOP counter, and the MFU arithmetic."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from minvar import VAR, VQVAE, VARConfig
from minvar.evaluation.flops import measured_cpu_peak, mfu, peak_flops, var_training_flops, vqvae_training_flops


def test_training_flops_match_torch_flop_counter():
    """var_training_flops = what torch.utils.flop_counter counts for forward + cross-entropy + backward.

    The math SDPA backend is forced so that the attention's matrix products are visible to the counter. The model
    computes the finest scale's attention unmasked and the rest over S = L - pn_K² positions, so the counter sees
    S² + pn_K²·L scores per head where the documented count uses L²; the test adds exactly that difference. A wrong
    layer size, a missing layer or a forgotten backward factor would break the equality.
    """
    cfg = VARConfig(depth=2, width=64, num_heads=2, vocab_size=256, code_dim=8, num_classes=10, patch_nums=(1, 2, 3))
    var = VAR(cfg)
    B, L, S = 3, var.L, var.L - 9
    x_BLCv, labels_B = torch.randn(B, L - 1, 8), torch.randint(0, 10, (B,))
    target_BL = torch.randint(0, 256, (B, L))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits_BLV = var(labels_B, x_BLCv, torch.zeros(B, dtype=torch.bool))
        F.cross_entropy(logits_BLV.flatten(0, 1), target_BL.flatten()).backward()
    counted = counter.get_total_flops()
    computed_attention = 12 * cfg.depth * B * 64 * (S * S + (L - S) * L)
    documented_attention = 12 * cfg.depth * B * 64 * L * L
    # AdaLN's per-image projections are deliberately not counted: remove them from the counter's total
    adaln = 3 * 2 * B * (cfg.depth * 64 * 6 * 64 + 64 * 2 * 64)
    # within 0.5%: the count charges word_embed for all L positions and an input gradient (it has L - 1, and its
    # input needs no gradient), 0.17% of this model's FLOPs; anything missing or doubled would be off by far more
    expected = var_training_flops(cfg, B) - documented_attention
    assert counted - adaln - computed_attention == pytest.approx(expected, rel=0.005)


def test_tokenizer_flops_on_meta_equal_a_real_step(one_thread):
    """The tokenizer's MFU counts its step on the meta device; that count must equal the count of a real training
    step (real weights, real images, training mode) and grow linearly with the batch. On meta tensors attention
    runs as plain matrix products, so the real step runs SDPA's math kernel to count the same products."""
    torch.manual_seed(0)
    vae = VQVAE.from_preset("tiny")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        reconstruction, vq_loss, _ = vae(images)
        (F.mse_loss(reconstruction, images) + vq_loss).backward()
    real = counter.get_total_flops()
    assert real > 0
    assert vqvae_training_flops(vae.config, 2) == real
    assert vqvae_training_flops(vae.config, 6) == 3 * real


def test_mfu_and_cpu_peak():
    """The measured CPU peak is positive and cached; MFU is FLOPs / seconds / peak, None without a peak."""
    peak = measured_cpu_peak(torch.float32, size=256)
    assert peak > 0 and measured_cpu_peak(torch.float32, size=256) == peak  # cached: same number again
    assert peak_flops(torch.device("cpu"), "fp32") == peak
    assert mfu(2e9, 0.5, 8e9) == 0.5
    assert mfu(2e9, 0.5, None) is None
