# %% [markdown]
# # Tutorial 1: the multi-scale tokenizer, Algorithms 1 and 2 of the VAR paper, step by step
#
#     python tutorials/01_tokenizer.py            # uses runs/tokenizer/checkpoint.pt if the quickstart made it
#     python tutorials/01_tokenizer.py --fast     # a few seconds; trains a tiny stand-in tokenizer if needed
#
# Opened as a notebook (Jupyter with jupytext, VS Code, PyCharm) it runs cell by cell, with its flags taken from the
# environment variable `MINVAR_TUTORIAL_ARGS`, e.g. `"--fast"` (tutorials/README.md).
#
# VAR (Tian et al., NeurIPS 2024) does not predict the next token of a raster scan: it predicts the next *scale*.
# That needs a tokenizer that describes an image as K token maps of growing size, 1×1, 2×2, ..., h×w, where each map
# only encodes what the coarser maps have not explained yet: a residual, multi-scale VQ-VAE (paper Section 3.2).
#
# What you will see (figures go to `--out-dir`):
#
# 1. the encoder's continuous latent f (paper Section 3.2)
# 2. Algorithm 1 written out by hand, one scale at a time (paper Algorithm 1): downsample the residual, pick the
#    nearest codes, upsample, apply Φ, subtract → `01_token_maps.png`, `01_residual.png`
# 3. the Φ convolutions and which scale uses which one (official `models/quant.py`)
# 4. Algorithm 2: tokens → f̂, and the Algorithm 1 → 2 round trip
# 5. the reconstruction pyramid: the image decoded from scales 1..k, for every k → `01_reconstruction_pyramid.png`
#
# Shape legend: B batch, K number of scales, k scale index, pn side of scale k's token map, Cvae code dimension,
# V codebook size, h = w latent side, H = W image side.

# %%
import numpy as np
import torch

import common  # flags, threads, and the trained tokenizer (tutorials/common.py)
import matplotlib.pyplot as plt

from minvar.io.data import HELD_OUT_SEED_OFFSET, ShapesDataset
from minvar.evaluation.metrics import psnr
from minvar.quantizer import phi_index_per_scale

args = common.parse_args("Tutorial 1: the multi-scale tokenizer, Algorithms 1 and 2 of the VAR paper, step by step.")

# %% [markdown]
# ## 0. A tokenizer and a few images
#
# The quickstart's tokenizer if it exists, otherwise a stand-in (tutorials/README.md). The images are held-out
# images of the built-in dataset (another seed than training): a few different shapes and colours.

# %%
common.section("0. A tokenizer and a few images")
vae, source = common.get_tokenizer(args)
cfg = vae.config
quantizer = vae.quantize
patch_nums = quantizer.patch_nums
K, size = len(patch_nums), patch_nums[-1]
print(f"tokenizer: {sum(p.numel() for p in vae.parameters()):,} parameters, {cfg.image_size}px images, "
      f"downsampling ×{cfg.downsample} to a {size}×{size} latent of {cfg.code_dim} channels")
print(f"codebook: V = {cfg.vocab_size} codes of dimension Cvae = {cfg.code_dim}, ONE codebook shared by all scales")
print(f"scale schedule (patch_nums): {patch_nums}, so an image is L = Σ pn² = "
      f"{' + '.join(str(pn * pn) for pn in patch_nums)} = {sum(pn * pn for pn in patch_nums)} tokens")
print("(the released 256px VAE: a 16×16 latent, patch_nums (1,2,3,4,5,6,8,10,13,16), L = 680, V = 4096, Cvae = 32)")

dataset = ShapesDataset(64, cfg.image_size, seed=args.seed + HELD_OUT_SEED_OFFSET)
picked = [0, 6, 12, 8]  # label = index % 15: red circle, green square, blue triangle, green bar
images = torch.stack([dataset[i][0] for i in picked])  # (B, 3, H, W) in [-1, 1]
names = [dataset.class_names[dataset[i][1]] for i in picked]
print(f"images: {names}, tensor {tuple(images.shape)} in [-1, 1]")


def to_numpy_image(image_3HW: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) in [0, 1] for imshow."""
    return image_3HW.detach().add(1).div(2).clamp(0, 1).permute(1, 2, 0).numpy()


# %% [markdown]
# ## 1. The encoder: image → continuous latent f
#
# `f = quant_conv(encoder(image))`. Everything below happens in this latent space; the decoder maps any latent back
# to pixels.

# %%
common.section("1. The encoder: image -> continuous latent f")
with torch.no_grad():
    f = vae.encode_latent(images)  # (B, Cvae, h, w) = quant_conv(encoder(img))
print(f"f = quant_conv(encoder(image)): {tuple(f.shape)}  (B, Cvae, h, w)")
print("Everything below happens in this latent space. The decoder maps any latent back to pixels.")

# %% [markdown]
# ## 2. Algorithm 1 (encode), one scale at a time
#
# Paper Algorithm 1, with the official details (docs/official_model.md#interpolation-modes):
#
#     f_rest = f, f_hat = 0
#     for k = 1..K:
#         z_k = area_down(f_rest, pn_k)              # what is still unexplained, seen at scale k's resolution
#         r_k = argmin_v ||z_k - e_v||²              # nearest code per position: the k-th token map
#         h_k = Φ_k(bicubic_up(embedding(r_k), h))   # its contribution, brought back to the full latent size
#         f_hat += h_k ;  f_rest -= h_k               # the next scale only has to encode what is left
#
# Each line of the loop below is one line of the algorithm, using the quantizer's own small pieces. Then the
# library's Algorithm 1 (`vae.quantize.encode`) must give exactly the same tokens.

# %%
common.section("2. Algorithm 1 (encode), one scale at a time")
f_rest = f.clone()  # (B, Cvae, h, w)
f_hat = torch.zeros_like(f)  # (B, Cvae, h, w)
tokens, residual_share = [], []
print(f"{'k':>2} {'pn':>3} {'tokens':>6}  {'distinct codes':>14}  {'||f - f_hat|| / ||f||':>22}")
with torch.no_grad():
    for k, pn in enumerate(patch_nums):
        z = quantizer.area_down(f_rest, pn)  # (B, Cvae, pn, pn) area = average pooling (line 5)
        r = quantizer.nearest_code(z)  # (B, pn*pn) token ids, row-major (line 6)
        h = quantizer.quant_resi(quantizer.upsampled_embedding(r, k, size), k)  # (B, Cvae, h, w) (line 7)
        f_hat = f_hat + h
        f_rest = f_rest - h  # (line 8)
        share = (f_rest.flatten(1).norm(dim=1) / f.flatten(1).norm(dim=1)).mean().item()
        tokens.append(r)
        residual_share.append(share)
        print(f"{k + 1:>2} {pn:>3} {pn * pn:>6}  {r.unique().numel():>14}  {share:>22.3f}")
print(f"||f - f̂|| / ||f|| went from {residual_share[0]:.3f} after scale 1 to {residual_share[-1]:.3f} after "
      f"scale {K}.")
print("In a trained tokenizer it shrinks with every scale: each one explains part of what the coarser ones left")
print("behind, and what remains after the last (full-resolution) scale is the quantization error.")
common.note_standin(source, "(A barely trained stand-in tokenizer has not learned that yet: its residual may even "
                    "grow.)")

with torch.no_grad():
    library_tokens, f_hats_encode = quantizer.encode(f)  # K × (B, pn²), K × (B, Cvae, h, w)
same = all(torch.equal(a, b) for a, b in zip(tokens, library_tokens))
print(f"same tokens as vae.quantize.encode (the library's Algorithm 1): {same}")
assert same, "the hand-written Algorithm 1 disagrees with the library"

# %% [markdown]
# Two figures: every scale's token map, one row per image (token ids are arbitrary labels, so a qualitative colour
# map; the ids are written into the small maps), and the residual left after each scale.

# %%
figure, axes = plt.subplots(len(images), K + 1, figsize=(1.6 * (K + 1), 1.7 * len(images)))
for row in range(len(images)):
    axes[row, 0].imshow(to_numpy_image(images[row]))
    axes[row, 0].set_title(names[row], fontsize=8)
    for k, pn in enumerate(patch_nums):
        ax = axes[row, k + 1]
        token_map = tokens[k][row].view(pn, pn).numpy()  # (pn, pn)
        ax.imshow(token_map % 20, cmap="tab20", vmin=0, vmax=19)
        if pn <= 4:  # small maps: write the ids in the cells
            for (y, x), value in np.ndenumerate(token_map):
                ax.text(x, y, str(value), ha="center", va="center", fontsize=6)
        if row == 0:
            ax.set_title(f"scale {k + 1}: {pn}×{pn}", fontsize=8)
common.save_figure(figure, args.out_dir, "01_token_maps.png", no_ticks=axes.flat,
                   title="Algorithm 1: one token map per scale (colour = token id mod 20)")

figure, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(range(0, K + 1), [1.0] + residual_share, "o-")  # before any scale, f̂ = 0 and the residual is all of f
ax.set_xticks(range(0, K + 1), ["none"] + [f"{k + 1}\n{pn}×{pn}" for k, pn in enumerate(patch_nums)])
ax.set_xlabel("after scale k")
ax.set_ylabel("||f - f̂|| / ||f||")
ax.set_ylim(0, max(1.05, max(residual_share) * 1.05))
ax.set_title("The residual shrinks scale by scale", fontsize=10)
ax.grid(alpha=0.3)
common.save_figure(figure, args.out_dir, "01_residual.png")

# %% [markdown]
# ## 3. Φ: the convolutions that repair the upsampling blur, and which scale uses which
#
# Upsampling a 2×2 token map to h×w with bicubic interpolation gives a smooth blob. Φ is a 3×3 convolution mixed
# with the identity, Φ(h) = (1 - r)·h + r·conv(h), r = 0.5, applied AFTER upsampling (official `quant.py`, `Phi`).
# The released VAE has 4 Φs for 10 scales (`share_quant_resi=4`): scale k uses the Φ whose tick in
# `linspace(1/12, 11/12, 4)` is nearest to k / (K - 1). The table printed below checks that rule in float64 numpy
# (as the official code) against float32 torch.

# %%
common.section("3. Φ: the convolutions that repair the upsampling blur, and which scale uses which")
num_phis = len(quantizer.quant_resi.qresi_ls)
print(f"this tokenizer: {num_phis} Φ convolution(s), ratio r = {quantizer.quant_resi.qresi_ls[0].residual_ratio}")
print(f"{'scale':>5} {'pn':>3} {'k/(K-1)':>8} {'Φ index':>8} {'||Φ(h) - h|| / ||h||':>22}")
with torch.no_grad():
    for k, pn in enumerate(patch_nums):
        up = quantizer.upsampled_embedding(tokens[k], k, size)  # (B, Cvae, h, w)
        change = ((quantizer.quant_resi(up, k) - up).norm() / up.norm()).item()
        print(f"{k + 1:>5} {pn:>3} {k / max(K - 1, 1):>8.3f} {quantizer.quant_resi.table[k]:>8} {change:>22.3f}")
official = phi_index_per_scale(10, 4)  # float64 numpy, as the official code
ticks32 = torch.linspace(1 / 12, 11 / 12, 4)  # the same rule in float32 torch
float32_table = [int((ticks32 - torch.tensor(k / 9)).abs().argmin()) for k in range(10)]
print(f"the released VAE (10 scales, 4 Φs): {official}")
print(f"the same rule in float32 torch:     {float32_table}")
print("The 3rd and 8th scales sit exactly half-way between two ticks; only the official float64 rounding decides")
print("them, so minvar copies that arithmetic (docs/official_model.md). A wrong table garbles the released VAE.")

# %% [markdown]
# ## 4. Algorithm 2 (decode) and the Algorithm 1 → 2 round trip
#
# Algorithm 2 needs only the tokens: f̂ = Σ_k Φ_k(bicubic_up(embedding(r_k))). It is the SAME sum Algorithm 1 built
# while encoding, so tokens → f̂ must give back Algorithm 1's f̂ after every scale, up to float32 rounding.

# %%
common.section("4. Algorithm 2 (decode) and the Algorithm 1 -> 2 round trip")
with torch.no_grad():
    f_hats_decode = quantizer.decode(tokens, every_scale=True)  # K × (B, Cvae, h, w)
round_trip = max((a - b).abs().max().item() for a, b in zip(f_hats_encode, f_hats_decode))
print(f"Algorithm 1 -> 2 round trip: max |f̂(encode) - f̂(decode tokens)| over all scales = {round_trip:.2e}")
assert round_trip < 1e-4, "Algorithm 2 does not rebuild Algorithm 1's f̂"
print("OK: the tokens alone carry everything; the decoder then maps f̂ to pixels.")

# %% [markdown]
# ## 5. The reconstruction pyramid: the image decoded from scales 1..k
#
# This is what the VAR transformer sees while generating: after predicting scale k, the running f̂ decodes to a
# picture that is coarse at first and gains detail with every scale (paper Figure 1 / Figure 4).

# %%
common.section("5. The reconstruction pyramid: the image decoded from scales 1..k")
with torch.no_grad():
    pyramid = [vae.fhat_to_img(f_hat_k) for f_hat_k in f_hats_decode]  # K × (B, 3, H, W) in [-1, 1]
print(f"{'scales':>7}  {'PSNR (dB) vs the input':>22}")
for k, reconstruction in enumerate(pyramid):
    print(f"{'1..' + str(k + 1):>7}  {psnr(reconstruction, images)[1]:>22.2f}")
figure, axes = plt.subplots(len(images), K + 1, figsize=(1.6 * (K + 1), 1.7 * len(images)))
for row in range(len(images)):
    axes[row, 0].imshow(to_numpy_image(images[row]))
    axes[row, 0].set_title("input" if row == 0 else "", fontsize=8)
    for k in range(K):
        axes[row, k + 1].imshow(to_numpy_image(pyramid[k][row]))
        if row == 0:
            axes[row, k + 1].set_title(f"scales 1..{k + 1}", fontsize=8)
common.save_figure(figure, args.out_dir, "01_reconstruction_pyramid.png", no_ticks=axes.flat,
                   title="Reconstruction pyramid: decoder(f̂ after scale k)")
common.note_standin(source, "NOTE: this is a stand-in tokenizer trained for a few steps, so even scales 1..K look "
                    "blurry; with the quickstart tokenizer the last column is close to the input.")
print("\nNext: tutorial 02 shows how the transformer predicts these token maps, one scale at a time.")
