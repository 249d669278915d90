# %% [markdown]
# # Tutorial 3: training both stages of VAR on the built-in shapes dataset, and reading the loss curves
#
#     python tutorials/03_training.py           # the quickstart itself: runs/tokenizer and runs/var (long on a CPU)
#     python tutorials/03_training.py --fast    # a few dozen steps in total, into <out-dir>/standin_fast/
#
# Opened as a notebook (Jupyter with jupytext, VS Code, PyCharm) it runs cell by cell, with its flags taken from the
# environment variable `MINVAR_TUTORIAL_ARGS`, e.g. `"--fast"` (tutorials/README.md).
#
# VAR is trained in two independent stages (paper Section 3.2 and Section 4):
#
# - stage 1, the tokenizer (`train_tokenizer.py`): a multi-scale VQ-VAE learns to turn images into K token maps and
#   back;
# - stage 2, the transformer (`train_var.py`): with the tokenizer FROZEN, VAR learns to predict each scale's tokens
#   from the class and the coarser scales (cross-entropy).
#
# Both scripts have a `main(argv)`, so this tutorial calls them exactly as the command line would, then plots what
# they logged in their run folders' `log.txt`.
#
# Full mode runs the quickstart, i.e. both scripts with their defaults (see their `--help`), into `--runs-dir`, where
# every other tutorial looks for the checkpoints. If those checkpoints already exist it only plots their logs (delete
# the folders to train again). Fast mode trains a few steps of each, to show the mechanics and the start of the
# curves.
#
# Figures (in `--out-dir`): `03_loss_curves.png`, `03_final_grids.png`.

# %%
import math
import os

import numpy as np
from PIL import Image

import common  # flags, threads, stand-in recipe (tutorials/common.py)
import matplotlib.pyplot as plt
import train_tokenizer
import train_var
from minvar.io.checkpoint import load_tokenizer

args = common.parse_args("Tutorial 3: training both stages of VAR on the built-in shapes dataset, and reading the "
                         "loss curves.")

# %% [markdown]
# ## 1. Where the two runs go
#
# Fast mode: a stand-in run that the other tutorials reuse when there is no quickstart run. Full mode: the
# quickstart's own folders in `--runs-dir`.

# %%
common.section("1. Where the two runs go")
if args.fast:
    folder = common.standin_folder(args)
    tokenizer_dir, var_dir = os.path.join(folder, "tokenizer"), os.path.join(folder, "var")
    steps = common.STANDIN_RECIPES["fast"]
    print(f"fast mode: {steps[0]} tokenizer steps and {steps[1]} VAR steps of {steps[2]} images, into {folder}")
    print("(the other tutorials reuse this stand-in when there is no quickstart run)")
else:
    tokenizer_dir, var_dir = os.path.join(args.runs_dir, "tokenizer"), os.path.join(args.runs_dir, "var")
    print(f"full mode: the quickstart, `python train_tokenizer.py && python train_var.py`, into {args.runs_dir}")

# %% [markdown]
# ## 2. Stage 1: the multi-scale tokenizer (`train_tokenizer.py`)
#
# Each step: encode a batch, quantize it residually at every scale (Algorithm 1), decode, and minimise
#
# - pixel loss(x̂, x): the reconstruction should look like the input ("rec" in the log: MSE by default,
#   `--l1-weight` adds VQGAN's L1; see `train_tokenizer.py` for why MSE on small models)
# - plus the mean over scales of ‖f̂_k − sg(f)‖² + β·‖sg(f̂_k) − f‖² (β = 0.25): codes move to the encoder outputs,
#   and the encoder commits to its codes (sg = stop-gradient, official quant.py:95-97)
#
# The argmin of the codebook lookup has no gradient, so the decoder's gradient is copied straight through to the
# encoder (f̂ = f + sg(f̂ − f)). Codes that no scale picks for a while are restarted on the residuals that scale
# quantizes ("dead codes"). The paper's VQGAN recipe also has perceptual and GAN losses: `--perceptual-weights` and
# `--disc-start` turn them on; the CPU default leaves them off.
#
# NOTE (not in the official repo): the official release has no tokenizer training code; this is minvar's.

# %%
common.section("2. Stage 1: the multi-scale tokenizer (train_tokenizer.py)")
if args.fast:
    common.train_standin(folder, fast=True, which=("tokenizer",), fresh=True)
elif os.path.isfile(os.path.join(tokenizer_dir, "checkpoint.pt")):
    print(f"{tokenizer_dir}/checkpoint.pt exists: plotting its log (delete the folder to train again)")
else:
    train_tokenizer.main(["--out-dir", tokenizer_dir])

# %% [markdown]
# ## 3. Stage 2: the next-scale transformer (`train_var.py`)
#
# Each step: tokenize the batch with the frozen tokenizer (on the fly, fp32), build the teacher-forcing input
# (tutorial 02), run ONE block-causal forward over all L positions and minimise the cross-entropy of all L tokens,
# every token weighted the same (official trainer). 10% of the labels are replaced by the null class ("label
# dropout") so that the same network learns the unconditional model that classifier-free guidance needs.
#
# Optimiser as the official recipe: AdamW, betas (0.9, 0.95), weight decay 0.05 (not on biases, norms, embeddings
# of positions), gradient clip 2.0, peak lr = base lr × batch / 256, warmup then linear decay to 10% ("lin0").

# %%
common.section("3. Stage 2: the next-scale transformer (train_var.py)")
if args.fast:
    common.train_standin(folder, fast=True, which=("var",), fresh=True)
elif os.path.isfile(os.path.join(var_dir, "checkpoint.pt")):
    print(f"{var_dir}/checkpoint.pt exists: plotting its log (delete the folder to train again)")
else:
    train_var.main(["--out-dir", var_dir, "--tokenizer", os.path.join(tokenizer_dir, "checkpoint.pt")])

# %% [markdown]
# ## 4. The loss curves, from the runs' `log.txt`
#
# `common.read_log` turns every "name number" pair of the training lines into a series. The VAR loss can never reach
# 0: many token maps are plausible for one class, so its floor is the entropy of the data's tokens.

# %%
common.section("4. The loss curves, from the runs' log.txt")
tokenizer_log = common.read_log(os.path.join(tokenizer_dir, "log.txt"))  # {name: (steps, values)}
var_log = common.read_log(os.path.join(var_dir, "log.txt"))
pixel = "rec" if "rec" in tokenizer_log else "l1"  # the pixel-loss column (older logs call it l1)
steps_t, total = tokenizer_log["loss"]
_, rec = tokenizer_log[pixel]
_, vq = tokenizer_log["vq"]
steps_psnr, held_out_psnr = tokenizer_log["held-out psnr"]
steps_v, var_loss = var_log["loss"]
_, var_accuracy = var_log["acc"]
vocab_size = load_tokenizer(os.path.join(tokenizer_dir, "checkpoint.pt")).config.vocab_size
print(f"tokenizer: loss {total[0]:.3f} -> {total[-1]:.3f} (pixel {rec[0]:.3f} -> {rec[-1]:.3f}, vq {vq[0]:.3f} -> "
      f"{vq[-1]:.3f}) over {steps_t[-1]} steps; held-out PSNR {held_out_psnr[-1]:.2f} dB at step {steps_psnr[-1]}")
print(f"VAR:       loss {var_loss[0]:.3f} -> {var_loss[-1]:.3f} nats per token over {steps_v[-1]} steps "
      f"(a uniform guess over V = {vocab_size} codes scores ln V = {math.log(vocab_size):.3f}); "
      f"token accuracy {var_accuracy[-1]:.3f}")
print("Reading the VAR curve: the loss can never reach 0. Many token maps are plausible for one class (position, size,")
print("tilt, background of the shape are random), so the floor is the entropy of the data's tokens, not zero.")
print("Token accuracy early on can be high for a silly reason: the model first learns the most common tokens.")

# %% [markdown]
# The curves: the tokenizer's loss and its parts (log scale), its held-out PSNR, and the VAR's cross-entropy against
# the uniform guess ln V, with the token accuracy on a second axis.

# %%
figure, axes = plt.subplots(1, 3, figsize=(14, 3.6))
axes[0].plot(steps_t, total, label="total")
axes[0].plot(steps_t, rec, label=f"pixel ({pixel})")
axes[0].plot(steps_t, vq, label="vq (codebook + β·commitment)")
axes[0].set_title("stage 1: tokenizer training loss", fontsize=9)
axes[0].set_yscale("log")
axes[1].plot(steps_psnr, held_out_psnr, "o-", color="tab:green")
axes[1].set_title("stage 1: held-out reconstruction PSNR (dB)", fontsize=9)
axes[2].plot(steps_v, var_loss, color="tab:red", label="cross-entropy")
axes[2].axhline(math.log(vocab_size), color="gray", ls="--", label=f"ln V = {math.log(vocab_size):.2f} (uniform)")
axes[2].set_title("stage 2: VAR training loss (nats/token)", fontsize=9)
twin = axes[2].twinx()
twin.plot(steps_v, var_accuracy, color="tab:purple", alpha=0.6, label="token accuracy")
twin.set_ylim(0, 1)
twin.set_ylabel("token accuracy", fontsize=8)
for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=7)
lines = axes[2].get_lines() + twin.get_lines()  # one legend for both y axes
axes[2].legend(lines, [line.get_label() for line in lines], fontsize=7, loc="center right")
common.save_figure(figure, args.out_dir, "03_loss_curves.png")

# %% [markdown]
# ## 5. What the runs wrote besides the log
#
# Each run folder holds one self-describing `checkpoint.pt` (model, optimizer, config, step; `--resume` continues it
# exactly), `log.txt`, and image grids: the tokenizer's held-out inputs above their reconstructions, and VAR samples
# (one row per class, cfg 2, from the KV-cached sampler of tutorial 02). The last grid of each is shown below.

# %%
common.section("5. What the runs wrote besides the log")
last_reconstructions = sorted(name for name in os.listdir(tokenizer_dir) if name.startswith("reconstructions_"))[-1]
last_samples = sorted(name for name in os.listdir(var_dir) if name.startswith("samples_"))[-1]
for run_dir in (tokenizer_dir, var_dir):
    print(f"    {run_dir}: {', '.join(sorted(os.listdir(run_dir)))}")
grids = [np.asarray(Image.open(os.path.join(tokenizer_dir, last_reconstructions))),
         np.asarray(Image.open(os.path.join(var_dir, last_samples)))]
ratios = [grid.shape[0] / grid.shape[1] for grid in grids]  # height / width, so both fill the figure's width
figure, axes = plt.subplots(2, 1, figsize=(6, 6 * sum(ratios) + 0.6),
                            gridspec_kw={"height_ratios": ratios, "hspace": 0.12})
axes[0].imshow(grids[0])
axes[0].set_title(f"tokenizer {last_reconstructions}: held-out images (top) and reconstructions (bottom)", fontsize=9)
axes[1].imshow(grids[1])
axes[1].set_title(f"VAR {last_samples}: one row per class", fontsize=9)
for ax in axes:
    ax.axis("off")
common.save_figure(figure, args.out_dir, "03_final_grids.png")
if args.fast:
    print("NOTE: a few dozen steps only trace the first drop of the curves; the quickstart (full mode) goes further.")
print("\nNext: tutorial 04 edits images with the trained VAR; tutorial 05 measures how the loss scales with size.")
