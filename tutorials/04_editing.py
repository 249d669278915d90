# %% [markdown]
# # Tutorial 4: zero-shot editing with a class-conditional VAR: in-painting, out-painting, class-conditional editing
#
#     python tutorials/04_editing.py            # uses runs/var/checkpoint.pt if the quickstart made it
#     python tutorials/04_editing.py --fast     # seconds; trains a tiny stand-in if needed
#
# Opened as a notebook (Jupyter with jupytext, VS Code, PyCharm) it runs cell by cell, with its flags taken from the
# environment variable `MINVAR_TUTORIAL_ARGS`, e.g. `"--fast"` (tutorials/README.md).
#
# VAR was never trained to edit. Still, it can (paper Section 5, Figure 8 and the official
# `demo_zero_shot_edit.ipynb`): generate scale by scale as usual, but after sampling each scale, overwrite the tokens
# in the region to KEEP with the source image's own tokens (Algorithm 1 of the source) before they enter f̂. Every
# later scale is then conditioned on the known content around (or inside) the region it regenerates, so the new
# content has to fit in.
#
# - in-painting: keep everything outside a box, regenerate inside it (null class: "anything that fits")
# - out-painting: keep the inside of a box, regenerate the outside
# - class-conditional editing: in-painting, but with a class label: regenerate the box as that class
#
# Figures (in `--out-dir`): `04_keep_masks.png` (which tokens are forced, per scale), `04_editing.png` (source, mask,
# results).
#
# Shape legend: B batch, K number of scales, pn side of scale k's map, h = w last scale side, H = W image side.

# %%
import torch
import torch.nn.functional as F

import common  # flags, threads, and the trained models (tutorials/common.py)
import matplotlib.pyplot as plt

from minvar import box_keep_mask, edit
from minvar.io.data import HELD_OUT_SEED_OFFSET, ShapesDataset
from minvar.sampling import scale_keep_mask


def extra_flags(parser):
    parser.add_argument("--box", default="0.25,0.25,0.75,0.75", help="edit box y0,x0,y1,x1 as image fractions")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance of class-conditional editing "
                        "(the official edit demo uses 3)")


args = common.parse_args("Tutorial 4: zero-shot editing with a class-conditional VAR: in-painting, out-painting, "
                         "class-conditional editing.", extra_flags)

# %% [markdown]
# ## 0. A trained model and a source image
#
# The source is a held-out image of the built-in dataset, in [-1, 1]: the tokenizer's range, which `edit()` expects.
# Everything an edit keeps goes through the tokenizer, so the kept part looks like the reconstruction, not the input.

# %%
common.section("0. A trained model and a source image")
vae, var, class_names, source = common.get_models(args)
patch_nums, size = var.patch_nums, var.patch_nums[-1]
image_size = vae.config.image_size
dataset = ShapesDataset(32, image_size, seed=args.seed + HELD_OUT_SEED_OFFSET)
image, label = dataset[0]  # (3, H, W) in [-1, 1]: the tokenizer's range, which edit() expects
image = image[None]  # (1, 3, H, W)
new_class = class_names.index("blue square") if "blue square" in class_names else (label + 1) % var.num_classes
print(f"source: a '{class_names[label]}', {tuple(image.shape)}; class-conditional edit target: "
      f"'{class_names[new_class]}'")
with torch.no_grad():
    source_tokens = vae.img_to_idx(image)  # K × (1, pn²): what will be kept (Algorithm 1)
    reconstruction = vae.idx_to_img(source_tokens)  # (1, 3, H, W): the best any edit can keep of the source
print("Everything an edit keeps goes through the tokenizer, so the kept part looks like the reconstruction, not the "
      "input.")

# %% [markdown]
# ## 1. The keep-mask, at every scale
#
# A mask is given once, at the last scale's token grid (h×w). Each scale k uses it bilinearly resized to pn_k×pn_k
# and thresholded at 0.5 (official demo). Scales of at most 3 tokens (the 1×1 map) are always kept entirely: the
# global colour/layout token of the source anchors every edit.

# %%
common.section("1. The keep-mask, at every scale")
box = tuple(float(v) for v in args.box.split(","))
masks = {"in-painting": box_keep_mask(size, box, "inpaint"),  # (h, w): 1 = keep the source's token
         "out-painting": box_keep_mask(size, box, "outpaint")}
print(f"box (y0, x0, y1, x1) = {box} of the image; keep-masks at the {size}×{size} token grid "
      f"(K = keep, . = regenerate):")
for name, keep in masks.items():
    print(f"  {name}:")
    for row in keep.int().tolist():
        print("      " + " ".join("K" if kept else "." for kept in row))
figure, axes = plt.subplots(2, len(patch_nums), figsize=(1.5 * len(patch_nums), 3.4))
for row, (name, keep) in enumerate(masks.items()):
    for k, pn in enumerate(patch_nums):
        kept = scale_keep_mask(keep[None], pn).view(pn, pn)  # (pn, pn) in {0, 1}
        axes[row, k].imshow(kept.numpy(), cmap="gray", vmin=0, vmax=1)
        axes[row, k].set_title(f"{name}\n{pn}×{pn}" if k == 0 else f"{pn}×{pn}", fontsize=7)
common.save_figure(figure, args.out_dir, "04_keep_masks.png", no_ticks=axes.flat, title_size=9,
                   title="Tokens forced to the source's at each scale (white = keep, black = regenerate)")

# %% [markdown]
# ## 2. Editing
#
# `edit()` runs the same KV-cached loop as `generate()` (tutorial 02). `label=None` means the null class:
# in/out-painting with no class preference (guidance is then a no-op: both halves of the CFG batch are
# unconditional). A class id regenerates the region as that class. After each edit, the promise of editing is
# checked: wherever the mask says keep, the result is made of the source's tokens, at every scale.

# %%
common.section("2. Editing")
num_samples = 3 if args.fast else 6
jobs = [("in-painting", masks["in-painting"], None, 1.0),
        ("out-painting", masks["out-painting"], None, 1.0),
        (f"edit to '{class_names[new_class]}'", masks["in-painting"], new_class, args.cfg)]
results = []
for name, keep, edit_label, cfg in jobs:
    edited, tokens = edit(var, vae, image.expand(num_samples, -1, -1, -1), keep, label=edit_label, cfg=cfg,
                          seed=args.seed, return_tokens=True)  # (N, 3, H, W) in [0, 1], K × (N, pn²)
    # Check the promise of editing: wherever the mask says keep, the result is made of the source's tokens.
    kept_ok = True
    for k, pn in enumerate(patch_nums):
        forced = scale_keep_mask(keep[None], pn)[0, :, 0].bool()  # (pn²,) positions forced to the source
        kept_ok &= torch.equal(tokens[k][:, forced], source_tokens[k].expand(num_samples, -1)[:, forced])
    changed = (tokens[-1] != source_tokens[-1]).float().mean().item()
    print(f"{name:<28} kept tokens equal the source's at every scale: {kept_ok};  "
          f"{changed:.0%} of the last scale's tokens differ from the source")
    assert kept_ok
    results.append((name, keep, edited))

# %% [markdown]
# The results, one row per kind of edit: the input, what its tokens decode to, the kept region (the part to
# regenerate in grey), then the samples.

# %%
figure, axes = plt.subplots(len(results), num_samples + 3, figsize=(1.4 * (num_samples + 3), 1.6 * len(results)))
input_picture = image[0].add(1).div(2).clamp(0, 1)  # (3, H, W) in [0, 1]
source_picture = reconstruction[0].add(1).div(2).clamp(0, 1)  # (3, H, W): what the tokens of the source decode to
for row, (name, keep, edited) in enumerate(results):
    keep_pixels = F.interpolate(keep[None, None], size=image_size, mode="nearest")[0]  # (1, H, W)
    shown = source_picture * keep_pixels + 0.5 * (1 - keep_pixels)  # the region to regenerate in grey
    for column, picture in enumerate([input_picture, source_picture, shown] + list(edited)):
        axes[row, column].imshow(picture.permute(1, 2, 0).numpy())
    axes[row, 0].set_ylabel(name, fontsize=7)
    if row == 0:
        for column, title in enumerate(["input", "its tokens, decoded", "kept (grey: new)"] +
                                       [f"result {i + 1}" for i in range(num_samples)]):
            axes[row, column].set_title(title, fontsize=7)
common.save_figure(figure, args.out_dir, "04_editing.png", no_ticks=axes.flat, title_size=9,
                   title="Zero-shot editing with VAR (no training for editing)")
common.note_standin(source, "NOTE: a stand-in model trained for a few steps: the regenerated regions are not meant "
                    "to look right yet.")
print("\nThe same from the command line: python sample.py --edit photo.png --box 0.25,0.25,0.75,0.75 --mode inpaint")
