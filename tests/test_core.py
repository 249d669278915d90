"""Properties of the tokenizer, the transformer and generation on tiny random models (no reference data needed)."""
import math

import pytest
import torch
import torch.nn.functional as F

from minvar import VAR, VQVAE, VARConfig, VQVAEConfig, edit, generate
from minvar.sampling import top_k_top_p_
from minvar.var import block_causal_mask


def random_images(batch, size=32, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_algorithm2_of_algorithm1_equals_final_fhat(tiny_pair):
    """Decoding Algorithm 1's tokens (Algorithm 2) gives exactly the f̂ that Algorithm 1 accumulated."""
    vae, _ = tiny_pair
    with torch.no_grad():
        f = vae.encode_latent(random_images(3))
        idx, f_hats = vae.quantize.encode(f)
        assert [t.shape for t in idx] == [(3, pn * pn) for pn in vae.patch_nums]
        assert (vae.idx_to_fhat(idx) - f_hats[-1]).abs().max() < 1e-5
        # and each partial decode equals the partial accumulation (the reconstruction pyramid)
        for k, f_hat_k in enumerate(vae.quantize.decode(idx, every_scale=True)):
            assert (f_hat_k - f_hats[k]).abs().max() < 1e-5


def test_residual_quantization_reduces_error_scale_by_scale():
    """With Φ = identity and a codebook that spans the latents, the final f̂ explains f far better than the 1×1
    scale alone: each scale quantizes what the coarser ones left (Algorithm 1's point)."""
    torch.manual_seed(0)
    vae = VQVAE.from_preset("tiny").eval()
    quantizer = vae.quantize
    with torch.no_grad():
        for phi in quantizer.quant_resi.qresi_ls:  # Φ(h) = 0.5·h + 0.5·conv(h) = h with a Dirac kernel
            torch.nn.init.dirac_(phi.weight)
            phi.bias.zero_()
        f = F.interpolate(torch.randn(4, 16, 3, 3), size=(8, 8), mode="bicubic") + 0.1 * torch.randn(4, 16, 8, 8)
        pool = torch.cat([F.interpolate(f, size=(p, p), mode="area").permute(0, 2, 3, 1).reshape(-1, 16)
                          for p in vae.patch_nums])
        # residuals shrink scale by scale, so offer codes at several magnitudes, and the zero code
        pool = torch.cat([pool * m for m in (1.0, 0.5, 0.25)])
        codebook = torch.cat([torch.zeros(1, 16), pool[torch.randperm(len(pool))[:511]]])
        quantizer.embedding.weight.copy_(codebook)
        _, f_hats = quantizer.encode(f)
    errors = [F.mse_loss(fh, f).item() for fh in f_hats]
    assert errors[-1] < 0.25 * errors[0], errors
    assert errors[-1] <= errors[-2] + 1e-7  # the last scale is not resampled: it can only reduce the error


def test_quantizer_training_forward_is_straight_through(tiny_pair):
    """The training pass returns f̂ in value but passes gradients to the encoder output unchanged (STE)."""
    vae, _ = tiny_pair
    quantizer = vae.quantize.train()
    f = torch.randn(2, 16, 8, 8, requires_grad=True)
    f_hat, loss, idx = quantizer(f)
    with torch.no_grad():
        _, f_hats = quantizer.encode(f)
    assert (f_hat - f_hats[-1]).abs().max() < 1e-5
    weight = torch.randn_like(f)
    (f_hat * weight).sum().backward()
    assert torch.allclose(f.grad, weight)  # d f̂ / d f = identity
    assert loss.item() > 0 and quantizer.ema_vocab_hit_SV.sum() > 0  # usage statistics were recorded


def test_block_causal_mask_structure():
    """Mask: a token sees its own scale and every coarser one, never a finer one."""
    mask = block_causal_mask((1, 2, 3))[0, 0]  # L = 14
    assert mask.shape == (14, 14)
    assert (mask[0, 1:] == float("-inf")).all() and mask[0, 0] == 0
    assert (mask[1:5, :5] == 0).all() and (mask[1:5, 5:] == float("-inf")).all()
    assert (mask[5:, :] == 0).all()


def test_logits_of_scale_k_ignore_finer_scales(tiny_pair):
    """Changing the inputs of scales > k leaves the logits of scales ≤ k unchanged (the mask really applies)."""
    _, var = tiny_pair
    x = torch.randn(2, var.L - 1, 16)
    labels = torch.tensor([1, 2])
    begin, end = var.begin_ends[3]
    y = x.clone()
    y[:, end - 1:] += torch.randn_like(y[:, end - 1:])  # inputs of scales 4.. (x has no slot for scale 0)
    with torch.no_grad():
        a, b = var(labels, x), var(labels, y)
    assert (a[:, :end] - b[:, :end]).abs().max() < 1e-5
    assert (a[:, end:] - b[:, end:]).abs().max() > 1e-3


def kv_cached_logits(var, vae, labels, idx):
    """Logits of every scale computed one scale at a time with the KV cache, feeding the given tokens."""
    cond = var.class_emb(labels)
    caches = [dict() for _ in var.blocks]
    x = var.embed_start(cond)
    f_hat = torch.zeros(len(labels), vae.quantize.code_dim, var.patch_nums[-1], var.patch_nums[-1])
    logits = []
    for k in range(var.num_scales):
        logits.append(var.forward_scale(x, cond, caches))
        f_hat, nxt = vae.quantize.next_scale_input(k, f_hat, vae.quantize.embedding(idx[k]))
        if nxt is not None:
            x = var.embed_scale_input(k + 1, nxt)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("shared_aln", [False, True])
def test_kv_cached_logits_equal_teacher_forced_logits(tiny_pair, shared_aln):
    """Scale-by-scale KV-cached inference computes the same logits as the block-causal training forward."""
    vae, _ = tiny_pair
    torch.manual_seed(1)
    var = VAR.from_preset("tiny", num_classes=10, shared_aln=shared_aln, init_adaln_gamma=0.5).eval()
    with torch.no_grad():
        idx = vae.img_to_idx(random_images(2))
        labels = torch.tensor([3, 7])
        teacher = var(labels, vae.idx_to_var_input(idx))
        cached = kv_cached_logits(var, vae, labels, idx)
    assert teacher.shape == cached.shape == (2, var.L, 512)
    assert (teacher - cached).abs().max() < 1e-4


def test_initial_loss_is_log_vocab(tiny_pair):
    """The official init (head ×0.02) gives near-zero logits, so the first loss is ≈ ln V."""
    vae, var = tiny_pair
    with torch.no_grad():
        idx = vae.img_to_idx(random_images(2))
        logits = var(torch.tensor([0, 1]), vae.idx_to_var_input(idx))
    loss = F.cross_entropy(logits.flatten(0, 1), torch.cat(idx, 1).flatten())
    assert abs(loss.item() - math.log(512)) < 0.05


def test_label_dropout_only_in_training(tiny_pair):
    """eval() forwards are deterministic (no label dropped); train() drops labels to the null class."""
    vae, var = tiny_pair
    x = vae.idx_to_var_input(vae.img_to_idx(random_images(32)))
    labels = torch.zeros(32, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(var(labels, x), var(labels, x))
        var.config.cond_drop_rate = 0.5
        var.train()
        conditional = var.eval()(labels, x)
        dropped = var.train()(labels, x)
        null = var.eval()(torch.full_like(labels, var.num_classes), x)
    var.eval()
    # with rate 0.5 some rows equal the null-class forward and some the conditional one
    as_null = ((dropped - null).abs().amax(dim=(1, 2)) < 1e-5).sum().item()
    as_cond = ((dropped - conditional).abs().amax(dim=(1, 2)) < 1e-5).sum().item()
    assert as_null > 0 and as_cond > 0 and as_null + as_cond == 32


def test_same_seed_same_samples_different_seed_different(tiny_pair):
    """generate(seed=s) is reproducible; another seed gives other samples; top_k=1 ignores the seed."""
    vae, var = tiny_pair
    a = generate(var, vae, [0, 1, 2], cfg=1.5, top_k=50, top_p=0.9, seed=3)
    b = generate(var, vae, [0, 1, 2], cfg=1.5, top_k=50, top_p=0.9, seed=3)
    c = generate(var, vae, [0, 1, 2], cfg=1.5, top_k=50, top_p=0.9, seed=4)
    assert a.shape == (3, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1 = generate(var, vae, [5], top_k=1, seed=1)
    g2 = generate(var, vae, [5], top_k=1, seed=2)
    assert torch.equal(g1, g2)


def test_batch_size_does_not_change_greedy_samples(tiny_pair):
    """A sample does not depend on what else is in the batch (greedy, so no RNG is shared)."""
    vae, var = tiny_pair
    together, tokens = generate(var, vae, [1, 4, 9], cfg=2.0, top_k=1, return_tokens=True)
    alone, tokens_alone = generate(var, vae, [4], cfg=2.0, top_k=1, return_tokens=True)
    assert all(torch.equal(t[1:2], s) for t, s in zip(tokens, tokens_alone))
    assert (together[1:2] - alone).abs().max() < 1e-5


def test_top_k_top_p_masking():
    """top-k keeps exactly the k largest; top-p keeps the smallest set whose mass exceeds p, and always the max."""
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    kept = top_k_top_p_(logits.clone(), top_k=2).isfinite()
    assert kept.tolist() == [[[True, True, False, False]]]
    kept = top_k_top_p_(logits.clone(), top_p=0.7).isfinite()
    assert kept.tolist() == [[[True, True, False, False]]]
    kept = top_k_top_p_(logits.clone(), top_p=0.01).isfinite()
    assert kept.tolist() == [[[True, False, False, False]]]


def test_edit_keeps_source_tokens_under_mask(tiny_pair):
    """After editing, the kept region's tokens are exactly the source image's at every scale, the rest is new,
    and the returned image is the decoding of exactly those tokens (issue 4)."""
    from minvar.sampling import scale_keep_mask
    vae, var = tiny_pair
    image = random_images(2, seed=5)
    keep = torch.zeros(8, 8)
    keep[:, :4] = 1  # keep the left half, regenerate the right half
    out, tokens = edit(var, vae, image, keep, label=[3, 4], cfg=1.0, top_k=20, seed=0, return_tokens=True)
    source = vae.img_to_idx(image)
    changed = 0
    for k, pn in enumerate(vae.patch_nums):
        kept = scale_keep_mask(keep.expand(2, 8, 8), pn)[..., 0].bool()  # (B, pn²)
        assert kept.any()
        assert torch.equal(tokens[k][kept], source[k][kept])
        changed += (tokens[k][~kept] != source[k][~kept]).sum().item()
    assert changed > 0  # the regenerated region really was sampled
    with torch.no_grad():
        assert (vae.idx_to_img(tokens).add(1).mul(0.5) - out).abs().max() < 1e-5


def test_clear_errors_for_bad_inputs(tiny_pair):
    """Unknown class ids, wrongly sized images and schedules that do not fit the VAE are clear ValueErrors."""
    vae, var = tiny_pair
    with pytest.raises(ValueError, match=r"unknown class id\(s\) \[11\]"):
        generate(var, vae, [0, 11])
    with pytest.raises(ValueError, match="class ids must be in"):
        var(torch.tensor([42]), torch.zeros(1, var.L - 1, 16))
    with pytest.raises(ValueError, match="needs 32×32"):
        vae.img_to_idx(random_images(1, size=64))
    with pytest.raises(ValueError, match="does not fit 32px images"):
        VQVAE(VQVAEConfig(vocab_size=64, code_dim=8, channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                          patch_nums=(1, 2, 4), image_size=32))
    other = VAR(VARConfig(depth=1, width=64, num_heads=1, num_classes=10, vocab_size=512, code_dim=16,
                          patch_nums=(1, 2, 4, 8)))
    with pytest.raises(ValueError, match="scale schedule"):
        generate(other, vae, [0])
