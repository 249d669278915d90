# %% [markdown]
# # Tutorial 2: next-scale prediction: the block-causal mask, the input sequence, the KV cache and guidance
#
#     python tutorials/02_next_scale_prediction.py          # uses runs/var/checkpoint.pt if the quickstart made it
#     python tutorials/02_next_scale_prediction.py --fast   # seconds; trains a tiny stand-in if needed
#
# Opened as a notebook (Jupyter with jupytext, VS Code, PyCharm) it runs cell by cell, with its flags taken from the
# environment variable `MINVAR_TUTORIAL_ARGS`, e.g. `"--fast"` (tutorials/README.md).
#
# A GPT predicts token i+1 from tokens 1..i. VAR (paper Sections 3.1-3.2, Figure 4) predicts the whole token map of
# scale k from the class and ALL of scales 1..k-1, in one step: the unit of autoregression is a scale, not a token.
#
# What you will see (figures go to `--out-dir`):
#
# 1. the block-causal attention mask → `02_block_causal_mask.png`
# 2. the input sequence: start token, then the cumulative f̂ downsampled to each next scale
#    → `02_sequence_layout.png`
# 3. teacher forcing (training: one pass, masked) vs the KV cache (sampling: K passes); same logits
# 4. classifier-free guidance with the official linear ramp t = cfg·k/(K-1)
#    → `02_cfg_schedule.png`, `02_cfg_samples.png`
#
# Shape legend: B batch, K number of scales, k scale index, pn side of scale k's map, l = pn², L = Σ pn², C width,
# Cvae code dimension, V codebook size.

# %%
import numpy as np
import torch
import torch.nn.functional as F

import common  # flags, threads, and the trained models (tutorials/common.py)
import matplotlib.pyplot as plt

from minvar import generate
from minvar.sampling import make_generator, sample_scales
from minvar.io.data import HELD_OUT_SEED_OFFSET, ShapesDataset
from minvar.var import block_causal_mask

args = common.parse_args("Tutorial 2: next-scale prediction: the block-causal mask, the input sequence, the KV "
                         "cache and guidance.")

# %% [markdown]
# ## 0. A trained tokenizer and transformer
#
# The quickstart's pair if it exists, otherwise a stand-in (tutorials/README.md).

# %%
common.section("0. A trained tokenizer and transformer")
vae, var, class_names, source = common.get_models(args)
patch_nums, K, L = var.patch_nums, var.num_scales, var.L
print(f"VAR: depth {var.config.depth}, width C = {var.config.width}, {var.config.num_heads} heads, "
      f"{sum(p.numel() for p in var.parameters()):,} parameters, {var.num_classes} classes (+1 null class)")
print(f"scales {patch_nums}: L = {L} tokens; (begin, end) of each scale in the sequence: {var.begin_ends}")

# %% [markdown]
# ## 1. The block-causal mask
#
# Row = the query token, column = the key token it may attend to. A token sees every token of its OWN scale (they
# are predicted together, so there is no order among them) and every token of the coarser scales; nothing finer.
# The model adds this as an attention bias: 0 where allowed, -inf where not (official var.py:105-112). Printed for
# a small schedule, then drawn for it and for this model's.

# %%
common.section("1. The block-causal mask")
small = (1, 2, 3)
small_mask = block_causal_mask(small)[0, 0]  # (14, 14)
print(f"for the schedule {small} (L = {sum(p * p for p in small)}), '#' = may attend, '.' = masked:")
for row in (small_mask == 0).int().tolist():
    print("    " + " ".join("#" if allowed else "." for allowed in row))
mask = var.attn_bias_for_masking[0, 0]  # (L, L), the buffer the model really uses
assert torch.equal(mask, block_causal_mask(patch_nums)[0, 0])
visible = (mask == 0).float().mean().item()
raster = (L + 1) / (2 * L)  # share of a lower-triangular (token-by-token causal) mask
print(f"this model: a {L}×{L} mask, {visible:.1%} of the pairs visible (a token-by-token causal mask: {raster:.1%})")

figure, axes = plt.subplots(1, 2, figsize=(10, 4.8))
for ax, schedule, matrix in ((axes[0], small, small_mask), (axes[1], patch_nums, mask)):
    ax.imshow((matrix == 0).float().numpy(), cmap="Blues", vmin=0, vmax=1.3, interpolation="nearest")
    ends = np.cumsum([pn * pn for pn in schedule])
    for end in ends[:-1]:  # scale boundaries
        ax.axhline(end - 0.5, color="black", lw=0.6)
        ax.axvline(end - 0.5, color="black", lw=0.6)
    ax.set_title(f"patch_nums {tuple(schedule)}, L = {ends[-1]}", fontsize=9)
    ax.set_xlabel("key position (attended to)")
    ax.set_ylabel("query position")
common.save_figure(figure, args.out_dir, "02_block_causal_mask.png",
                   title="Block-causal mask: blue = may attend (own scale and all coarser scales)")

# %% [markdown]
# ## 2. The input sequence (teacher forcing)
#
# Training feeds the transformer the ground truth of every scale at once:
#
# - position 0 (scale 1): the class embedding + `pos_start`, the "start token" (there is nothing to look at yet)
# - scale k ≥ 2: `word_embed(area_down(f̂_{<k}, pn_k))`: the running reconstruction from scales 1..k-1,
#   area-downsampled to scale k's size. NOT the previous tokens (docs/official_model.md).
# - every position: + a scale ("level") embedding + an absolute position embedding
#
# The logits at scale k's positions predict scale k's tokens: input and target line up, no shift as in a GPT. The
# table below rebuilds each scale's input from the tokens (Algorithm 2, then area-downsampling) and compares.

# %%
common.section("2. The input sequence (teacher forcing)")
dataset = ShapesDataset(32, vae.config.image_size, seed=args.seed + HELD_OUT_SEED_OFFSET)
picked = [0, 7]  # red circle, green triangle
images = torch.stack([dataset[i][0] for i in picked])  # (B, 3, H, W)
label_B = torch.tensor([dataset[i][1] for i in picked])  # (B,)
with torch.no_grad():
    idx = vae.img_to_idx(images)  # K × (B, pn²): the targets, Algorithm 1
    x_BLCv = vae.idx_to_var_input(idx)  # (B, L-1, Cvae): the inputs of scales 2..K
target_BL = torch.cat(idx, dim=1)  # (B, L)
print(f"targets: {tuple(target_BL.shape)} token ids; inputs: {tuple(x_BLCv.shape)} = (B, L - 1, Cvae) vectors "
      f"+ 1 start token")
print(f"{'scale':>5} {'pn':>3} {'positions':>11}  input at these positions")
with torch.no_grad():
    for k, pn in enumerate(patch_nums):
        begin, end = var.begin_ends[k]
        if k == 0:
            print(f"{k + 1:>5} {pn:>3} {f'[{begin}, {end})':>11}  start token: class embedding + pos_start")
            continue
        f_hat_before = vae.quantize.decode(idx[:k])  # (B, Cvae, h, w) f̂ of scales 1..k-1 (Algorithm 2)
        expected = vae.quantize.area_down(f_hat_before, pn).flatten(2).transpose(1, 2)  # (B, pn², Cvae)
        error = (x_BLCv[:, begin - 1:end - 1] - expected).abs().max().item()
        print(f"{k + 1:>5} {pn:>3} {f'[{begin}, {end})':>11}  area_down(f̂ of scales 1..{k}, {pn}×{pn})"
              f"   (check: max |Δ| = {error:.1e})")
print("Why f̂ and not the previous tokens? Because at sampling time the model will see exactly this: the image so far.")

# %% [markdown]
# Figure: what the model is given at each scale (the input map, decoded to pixels) and what it must predict, above
# the layout of the L positions of the sequence.

# %%
figure = plt.figure(figsize=(1.7 * K, 4.6))
grid = figure.add_gridspec(3, K, height_ratios=[1, 1, 0.35])
pictures = []  # the axes that show pictures, without ticks
with torch.no_grad():
    for k, pn in enumerate(patch_nums):
        ax_in, ax_out = figure.add_subplot(grid[0, k]), figure.add_subplot(grid[1, k])
        if k == 0:
            ax_in.text(0.5, 0.5, f"start token\n'{class_names[label_B[0]]}'", ha="center", va="center", fontsize=8)
            ax_in.set_facecolor("#eeeeee")
        else:
            begin, end = var.begin_ends[k]
            input_map = x_BLCv[:1, begin - 1:end - 1].transpose(1, 2).reshape(1, -1, pn, pn)  # (1, Cvae, pn, pn)
            full = F.interpolate(input_map, size=patch_nums[-1], mode="nearest")  # (1, Cvae, h, w): show its pixels
            ax_in.imshow(vae.fhat_to_img(full)[0].add(1).div(2).permute(1, 2, 0).numpy())
        ax_in.set_title(f"scale {k + 1} input", fontsize=8)
        ax_out.imshow(idx[k][0].view(pn, pn).numpy() % 20, cmap="tab20", vmin=0, vmax=19)
        ax_out.set_title(f"target {pn}×{pn} tokens", fontsize=8)
        pictures += [ax_in, ax_out]
    ax_bar = figure.add_subplot(grid[2, :])
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, K))
    for k, (begin, end) in enumerate(var.begin_ends):
        ax_bar.barh(0, end - begin, left=begin, color=colours[k], edgecolor="white")
        ax_bar.text((begin + end) / 2, 0, str(k + 1), ha="center", va="center", color="white", fontsize=7)
    ax_bar.set_xlim(0, L)
    ax_bar.set_yticks([])
    ax_bar.set_xlabel(f"position in the sequence of L = {L} tokens (coloured by scale)")
common.save_figure(figure, args.out_dir, "02_sequence_layout.png", no_ticks=pictures, title_size=9,
                   title="Teacher forcing: the input of scale k is f̂ of scales 1..k-1 at pn_k×pn_k (decoded here to "
                         "pixels)")

# %% [markdown]
# ## 3. Teacher forcing vs the KV cache: two ways to compute the same logits
#
# - Training: ONE forward pass over all L positions with the block-causal mask (`var.forward`).
# - Sampling: K passes, one per scale. Pass k embeds only scale k's l = pn² inputs; the keys and values of the
#   coarser scales come from a cache that every block grows in place. No mask is needed: the cache holds exactly
#   what the mask would allow.
#
# Fed the same ground-truth inputs, both must give the same logits: that is what makes training (teacher forcing)
# and sampling the same model.

# %%
common.section("3. Teacher forcing vs the KV cache: two ways to compute the same logits")
var.eval()  # no label dropout, no drop path
with torch.no_grad():
    logits_teacher = var(label_B, x_BLCv)  # (B, L, V)
    cond_BD = var.class_emb(label_B)  # (B, C): the class vector, start token AND AdaLN condition
    kv_caches = [dict() for _ in var.blocks]
    x_BlC = var.embed_start(cond_BD)  # (B, 1, C) scale 1's only input
    pieces = []
    for k in range(K):
        pieces.append(var.forward_scale(x_BlC, cond_BD, kv_caches))  # (B, l, V)
        if k < K - 1:
            begin, end = var.begin_ends[k + 1]
            x_BlC = var.embed_scale_input(k + 1, x_BLCv[:, begin - 1:end - 1])  # (B, l_next, C)
    logits_cached = torch.cat(pieces, dim=1)  # (B, L, V)
difference = (logits_teacher - logits_cached).abs().max().item()
print(f"teacher forcing logits {tuple(logits_teacher.shape)}, KV-cached logits {tuple(logits_cached.shape)}")
print(f"teacher-forcing vs KV-cache max abs logit difference: {difference:.3e}")
print("(float32 rounding only: the two paths add the same numbers in a different order)")
cached_keys = kv_caches[0]["k"].shape  # (B, H, L, hd)
scores_masked = L * L  # teacher forcing computes every query-key score, then masks the future ones
scores_cached = sum((end - begin) * end for begin, end in var.begin_ends)  # each scale vs itself + the cache
print(f"after the last scale every block caches keys of shape {tuple(cached_keys)} (B, heads, L, head dim)")
print(f"attention scores per head: {scores_masked:,} with the mask, {scores_cached:,} with the cache "
      f"({scores_cached / scores_masked:.0%}); and sampling needs only K = {K} sequential steps, not L = {L}")
loss = F.cross_entropy(logits_teacher.flatten(0, 1), target_BL.flatten()).item()
print(f"this model's teacher-forced loss on these two images: {loss:.3f} nats per token (uniform guess: "
      f"ln V = {np.log(var.config.vocab_size):.3f})")

# %% [markdown]
# ## 4. Classifier-free guidance with a linear ramp over the scales
#
# Training drops the label 10% of the time (it becomes the null class, id `num_classes`), so the same network also
# models p(tokens) without a class. At sampling time each scale mixes the two predictions (official
# `models/var.py`):
#
#     logits = (1 + t)·logits(class) - t·logits(null),   t = cfg · k / (K - 1)
#
# The 1×1 scale (k = 0) is unguided, so the global layout stays diverse; the finest scale gets the full strength.
# The paper's FID setting is cfg = 1.5 (with top-k 900, top-p 0.96); the official demo uses cfg = 4.
#
# Guidance sharpens the predicted distributions: the second table is the mean entropy per scale of the
# teacher-forced predictions, at three strengths.

# %%
common.section("4. Classifier-free guidance with a linear ramp over the scales")
print(f"{'scale':>5} {'pn':>3} " + " ".join(f"{'t (cfg=' + str(c) + ')':>12}" for c in (1.5, 4.0)))
for k, pn in enumerate(patch_nums):
    print(f"{k + 1:>5} {pn:>3} " + " ".join(f"{c * k / (K - 1):>12.2f}" for c in (1.5, 4.0)))

with torch.no_grad():
    logits_null = var(torch.full_like(label_B, var.num_classes), x_BLCv)  # (B, L, V) the unconditional half
print(f"\nmean entropy (nats) of the predicted token distribution, per scale, on the two images above:")
print(f"{'scale':>5} " + " ".join(f"{'cfg=' + str(c):>9}" for c in (0.0, 1.5, 4.0)))
for k, (begin, end) in enumerate(var.begin_ends):
    row = []
    for c in (0.0, 1.5, 4.0):
        t = c * k / (K - 1)
        guided = (1 + t) * logits_teacher[:, begin:end] - t * logits_null[:, begin:end]  # (B, l, V)
        row.append(torch.distributions.Categorical(logits=guided).entropy().mean().item())
    print(f"{k + 1:>5} " + " ".join(f"{value:>9.3f}" for value in row))
print("t = 0 at scale 1, so its prediction cannot change; at finer scales guidance usually sharpens the prediction")
print("(lower entropy) towards what makes the class likely, at the price of diversity.")

# %% [markdown]
# The schedule of t over the scales, for this model and for the official 256px one; then its effect on samples:
# the same seeds at three guidance strengths.

# %%
figure, ax = plt.subplots(figsize=(5.5, 3.4))
for schedule_k, style in ((K, "-"), (10, "--")):
    for c, colour in ((1.5, "tab:blue"), (4.0, "tab:orange")):
        ks = np.arange(schedule_k)
        ax.plot(ks + 1, c * ks / (schedule_k - 1), style, marker="o", ms=3, color=colour,
                label=f"cfg={c}, K={schedule_k}" + (" (this model)" if schedule_k == K else " (official 256px)"))
ax.set_xlabel("scale (1 = the 1×1 map)")
ax.set_ylabel("guidance t at that scale")
ax.set_title("CFG schedule t = cfg·k/(K-1): logits = (1+t)·cond − t·uncond", fontsize=9)
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
common.save_figure(figure, args.out_dir, "02_cfg_schedule.png")

classes = [0, 6, 12] if args.fast else list(range(0, min(var.num_classes, 15), 3))
per_class = 2 if args.fast else 4
strengths = (0.0, 1.5, 4.0)
labels = [c for c in classes for _ in range(per_class)]
figure, axes = plt.subplots(len(strengths), 1, figsize=(0.9 * len(labels), 1.3 * len(strengths)))
for ax, strength in zip(axes, strengths):
    samples = generate(var, vae, labels, cfg=strength, seed=args.seed)  # (N, 3, H, W) in [0, 1]
    ax.imshow(torch.cat(list(samples), dim=2).permute(1, 2, 0).numpy())  # one row of N images
    ax.set_title(f"cfg = {strength}", fontsize=8)
    ax.set_xticks([(i + 0.5) * samples.shape[-1] for i in range(0, len(labels), per_class)],
                  [class_names[c] for c in classes], fontsize=7)
    ax.set_yticks([])
common.save_figure(figure, args.out_dir, "02_cfg_samples.png", title="Same seed, three guidance strengths",
                   title_size=9)

# %% [markdown]
# ## 5. Coarse to fine: what each scale adds
#
# One generation is K transformer calls, and after each the sampled tokens are added into the running f̂. Decoding
# f̂ after every scale shows the image the model has committed to so far: the coarse scales set the background and a
# rough blob (the 1×1 scale is unguided, so it need not show the class yet), the middle ones the colour and the
# outline of the shape, and the finest ones sharpen its edges. The README's picture is this figure, made from the
# quickstart's models (`--runs-dir` pointing at them).

# %%
common.section("5. Coarse to fine: what each scale adds")
rows = classes  # one row per class of the guidance figure
generator = make_generator(args.seed, "cpu")
with torch.no_grad():
    _, _, f_hats = sample_scales(var, vae, torch.tensor(rows), cfg=3.0, top_k=0, top_p=0.8, generator=generator)
    stages = [vae.fhat_to_img(f_hat).add(1).mul(0.5) for f_hat in f_hats]  # K × (B, 3, H, W) in [0, 1]
figure, axes = plt.subplots(len(rows), K, figsize=(1.1 * K, 1.15 * len(rows)), squeeze=False)
for k, images in enumerate(stages):
    for row, image in enumerate(images):
        axes[row, k].imshow(image.permute(1, 2, 0).numpy())
    pn = var.patch_nums[k]
    axes[0, k].set_title(f"+{pn}×{pn}" if k else "1×1", fontsize=8)
for row, c in enumerate(rows):
    axes[row, 0].set_ylabel(class_names[c], fontsize=7)
common.save_figure(figure, args.out_dir, "02_coarse_to_fine.png", no_ticks=axes.flat,
                   title="Decoded f̂ after each scale: the image is committed to coarse to fine", title_size=9)
same = torch.equal(stages[-1], generate(var, vae, rows, cfg=3.0, top_k=0, top_p=0.8, seed=args.seed))
print(f"Each column adds one scale's tokens to f̂; the last column is the finished sample (the same image as "
      f"generate() with this seed: {same}).")
common.note_standin(source, "NOTE: a stand-in model trained for a few steps: its samples are not meant to look like "
                    "anything yet.")
print("\nNext: tutorial 03 trains both stages; tutorial 04 uses this sampling loop for zero-shot editing.")
