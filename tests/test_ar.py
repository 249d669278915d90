"""The raster-scan AR baseline (minvar/ar.py) and VAR's ablation switches (VARConfig.adaln, .attn_l2_norm).

Tiny models built in-process; every test runs in well under a second.
"""
from dataclasses import asdict

import pytest
import torch

from minvar.ar import AR, ARConfig, generate_ar, sample_tokens
from minvar.io.checkpoint import load_ar, save_ar
from minvar.io.checkpoint import CheckpointError, load_var, save_checkpoint
from minvar.sampling import sample_scales
from minvar.var import VAR, VARConfig
from minvar.vqvae import VQVAE

V, N_SIDE, CLASSES = 64, 4, 5


def tiny_ar(**overrides) -> AR:
    torch.manual_seed(0)
    return AR(ARConfig(**{**dict(depth=2, width=32, num_heads=2, mlp_ratio=2.0, num_classes=CLASSES, vocab_size=V,
                                 grid_size=N_SIDE), **overrides})).eval()


def tiny_var_config(**switches) -> VARConfig:
    return VARConfig(depth=2, width=32, num_heads=2, mlp_ratio=2.0, num_classes=CLASSES, vocab_size=V, code_dim=8,
                     patch_nums=(1, 2, 4), drop_path_rate=0.0, init_adaln_gamma=0.5, **switches)


def tiny_vae(patch_nums) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE.from_preset("tiny", vocab_size=V, code_dim=8, patch_nums=patch_nums,
                             image_size=4 * patch_nums[-1]).eval()


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# the AR baseline
def test_ar_is_causal():
    """Changing token t changes no logit at positions <= t (they predict tokens <= t from tokens < t), and does
    change the logits after it. A leak of the future into the past would break the first assertion."""
    ar = tiny_ar()
    labels = torch.tensor([1, 3])
    idx = torch.randint(0, V, (2, N_SIDE ** 2), generator=torch.Generator().manual_seed(1))
    logits = ar(labels, idx)  # (B, T, V)
    for t in (0, 5, N_SIDE ** 2 - 2):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        new = ar(labels, changed)
        assert torch.allclose(new[:, :t + 1], logits[:, :t + 1], atol=1e-6, rtol=0), f"token {t} leaked backwards"
        assert (new[:, t + 1:] - logits[:, t + 1:]).abs().amax() > 1e-4, f"token {t} changed nothing after it"


def test_ar_kv_cache_equals_full_recomputation():
    """KV-cached sampling (one position per call) draws exactly the tokens of sampling by recomputing the whole
    prefix every step, with guidance and top-k on: same seed, same tokens. The logits of the cached path also equal
    the teacher-forced forward on the sampled tokens."""
    ar = tiny_ar()
    labels = torch.tensor([0, 2, 4])
    runs = [sample_tokens(ar, labels, cfg=1.5, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(7),
                          use_cache=use_cache) for use_cache in (True, False)]
    assert runs[0].shape == (3, N_SIDE ** 2)
    assert torch.equal(runs[0], runs[1])
    caches = [dict() for _ in ar.blocks]
    step_logits = [ar.forward_step(ar.embed(labels, runs[0][:, :0], 0), caches)]
    for t in range(1, N_SIDE ** 2):
        step_logits.append(ar.forward_step(ar.embed(labels, runs[0][:, t - 1:t], t), caches))
    assert torch.allclose(torch.cat(step_logits, dim=1), ar(labels, runs[0]), atol=1e-5)


def test_ar_generates_images_with_a_one_scale_tokenizer_and_refuses_a_multi_scale_one():
    """generate_ar decodes the n×n tokens with a patch_nums=(n,) tokenizer; a multi-scale one is a clear error."""
    ar = tiny_ar()
    images = generate_ar(ar, tiny_vae((N_SIDE,)), [0, 1], top_k=5, seed=0)
    assert images.shape == (2, 3, 4 * N_SIDE, 4 * N_SIDE) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ValueError, match="one-scale tokenizer"):
        generate_ar(ar, tiny_vae((1, 2, N_SIDE)), [0], seed=0)


def test_ar_checkpoint_round_trip(tmp_path):
    """save_ar / load_ar rebuild the same model (config and weights: identical logits); a VAR file is refused."""
    ar = tiny_ar()
    path = tmp_path / "ar.pt"
    save_ar(str(path), ar, step=3, class_names=["a"] * CLASSES)
    loaded = load_ar(str(path))
    assert loaded.config == ar.config
    idx = torch.randint(0, V, (2, N_SIDE ** 2))
    assert torch.equal(loaded(torch.tensor([0, 1]), idx), ar(torch.tensor([0, 1]), idx))
    var = VAR(tiny_var_config())
    save_checkpoint(str(tmp_path / "var.pt"), "minvar-var", var, var.config, 0)
    with pytest.raises(CheckpointError, match="minvar-ar"):
        load_ar(str(tmp_path / "var.pt"))


# ----------------------------------------------------------------------------------------------------------------
# VAR's ablation switches
def test_adaln_off_removes_exactly_the_adaln_projections_and_keeps_the_class_in_the_start_token():
    """adaln=False replaces each block's 6C×C AdaLN projection by two LayerNorm affines (4C) and the head's 2C×C
    projection by one (2C): fewer parameters by exactly that. The class still changes the logits (through the start
    token), and the forward differs from the AdaLN model's."""
    C, depth = 32, 2
    with_adaln, without = VAR(tiny_var_config()), VAR(tiny_var_config(adaln=False))
    removed = depth * (6 * C * C + 6 * C - 4 * C) + (2 * C * C + 2 * C - 2 * C)
    assert count(with_adaln) - count(without) == removed
    assert not any("ada_lin" in name for name, _ in without.named_parameters())
    x = torch.randn(2, with_adaln.L - 1, 8)
    torch.manual_seed(0)
    logits = without(torch.tensor([0, 0]), x)
    assert (without(torch.tensor([1, 1]), x) - logits).abs().amax() > 1e-4, "the class no longer matters"
    assert (with_adaln(torch.tensor([0, 0]), x) - logits).abs().amax() > 1e-4


def test_attention_normalization_off_drops_the_temperatures_and_changes_the_attention():
    """attn_l2_norm=False removes the one learned temperature per head and block (depth·H parameters) and, with every
    other weight copied over, changes the logits (plain q·k/4√hd instead of cosine × temperature)."""
    normalised, plain = VAR(tiny_var_config()), VAR(tiny_var_config(attn_l2_norm=False))
    assert count(normalised) - count(plain) == 2 * 2  # depth × heads
    missing = plain.load_state_dict(normalised.state_dict(), strict=False)
    assert sorted(missing.unexpected_keys) == [f"blocks.{i}.attn.scale_mul_1H11" for i in range(2)]
    assert not missing.missing_keys
    x = torch.randn(2, normalised.L - 1, 8)
    labels = torch.tensor([0, 3])
    assert (normalised(labels, x) - plain(labels, x)).abs().amax() > 1e-4


def test_attn_scale_mul_one_is_the_ar_attention_and_the_default_is_the_official_temperature():
    """The "AR to VAR" row shares the AR's attention: with attn_scale_mul=1.0 (and attn_l2_norm off), VAR's attention
    given the AR's qkv and output weights and a causal mask returns the AR's causal attention (softmax scale
    1/√hd); the default 0.25 (the official temperature, 0.25/√hd) gives another result, and is what a plain
    VARConfig() builds, so the official parity is untouched."""
    torch.manual_seed(0)
    ar_attention = tiny_ar().blocks[0].attn  # width 32, 2 heads: hd = 16
    x = torch.randn(2, N_SIDE * N_SIDE, 32)  # (B, T, C)
    causal = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)[None, None]  # (1, 1, T, T)
    with torch.no_grad():
        ar_attention.qkv.bias[32:64].zero_()  # VAR's k has no bias (a per-query constant: softmax ignores it)
        expected = ar_attention(x)
    outputs = {}
    for multiplier in (1.0, 0.25):
        attention = VAR(tiny_var_config(adaln=False, attn_l2_norm=False, attn_scale_mul=multiplier)).blocks[0].attn
        assert attention.scale == multiplier / 16 ** 0.5
        with torch.no_grad():
            attention.mat_qkv.weight.copy_(ar_attention.qkv.weight)
            attention.q_bias.copy_(ar_attention.qkv.bias[:32])
            attention.v_bias.copy_(ar_attention.qkv.bias[64:])
            attention.proj.load_state_dict(ar_attention.proj.state_dict())
            outputs[multiplier] = attention(x, causal, None)  # (B, T, C)
    torch.testing.assert_close(outputs[1.0], expected, atol=1e-6, rtol=1e-5)
    assert (outputs[0.25] - expected).abs().amax() > 1e-4
    assert VARConfig().attn_scale_mul == 0.25


def test_defaults_are_the_official_architecture():
    """The switches default to the released models: AdaLN blocks and QK-norm attention (tests/test_parity.py checks
    the numbers; this checks that the defaults did not move), and shared AdaLN without AdaLN is refused."""
    config = VARConfig()
    assert config.adaln and config.attn_l2_norm
    keys = VAR(tiny_var_config()).state_dict()
    for key in ("blocks.0.ada_lin.1.weight", "blocks.0.attn.scale_mul_1H11", "head_nm.ada_lin.1.weight"):
        assert key in keys
    with pytest.raises(ValueError, match="adaln"):
        VAR(tiny_var_config(adaln=False, shared_aln=True))


@pytest.mark.parametrize("switches", [dict(adaln=False), dict(attn_l2_norm=False), dict(adaln=False,
                                                                                         attn_l2_norm=False)])
def test_switches_survive_a_checkpoint_round_trip(tmp_path, switches):
    """A checkpoint of a switched-off VAR reloads as the same architecture (config fields) with identical logits."""
    var = VAR(tiny_var_config(**switches)).eval()
    path = str(tmp_path / "var.pt")
    save_checkpoint(path, "minvar-var", var, var.config, 5)
    loaded = load_var(path)
    assert asdict(loaded.config) == asdict(var.config)
    x, labels = torch.randn(2, var.L - 1, 8), torch.tensor([1, 2])
    assert torch.equal(loaded(labels, x), var(labels, x))


def test_unguided_sampling_skips_the_unconditional_half_without_changing_the_tokens():
    """With cfg = 0 the sampler runs only the conditional half; greedy tokens equal those of a run that computes
    both halves with a vanishing guidance (cfg = 1e-30: (1 + t)·c − t·u rounds to c exactly)."""
    vae = tiny_vae((1, 2, 4))
    var = VAR(tiny_var_config()).eval()
    labels = torch.tensor([0, 1, 4])
    _, alone, _ = sample_scales(var, vae, labels, cfg=0.0, top_k=1)
    _, both, _ = sample_scales(var, vae, labels, cfg=1e-30, top_k=1)
    assert all(torch.equal(a, b) for a, b in zip(alone, both))
