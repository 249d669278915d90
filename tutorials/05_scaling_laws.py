# %% [markdown]
# # Tutorial 5: a scaling law in miniature
#
# Held-out loss against model size, with seeds, and the fit L = E + A·N^-α with its irreducible term E and a
# confidence interval on α. This file is a script and a notebook at once: run it with
# `python tutorials/05_scaling_laws.py`, or open it in Jupyter (jupytext), VS Code or PyCharm, where every `# %%`
# line starts a cell.
#
#     python tutorials/05_scaling_laws.py --threads 1   # 43 min on one thread at load 10-17 (docs/results.md)
#     python tutorials/05_scaling_laws.py --fast        # seconds: the same pipeline with tiny settings
#
# The VAR paper's central empirical claim (its "power-law scaling laws" experiments, Figure 5 and the compute figure
# after it): trained the same way, bigger VAR transformers reach a lower test loss, and the loss falls as a power law
# in the number of parameters N and in the training compute C, a straight line on log-log axes. The paper fits
# L = (β·X)^-α without an irreducible term: L_last = (2.0·N)^-0.23 and L_avg = (2.5·N)^-0.20 over 18M-2B parameters,
# linear correlation near -0.998 (its Figure 5), and L_avg = (1.5·10⁻⁵·C_min)^-0.16 against compute.
#
# Here, the same experiment fits on a laptop:
#   1. tokenize a fixed set of built-in images ONCE with the tokenizer (Algorithm 1), so every model sees the same tokens;
#   2. build a ladder of VAR sizes with the paper's single knob, depth d (width = 16·d here, 64·d in the paper,
#      heads = d);
#   3. train every size with several seeds for the same steps on the same tokens, evaluating the held-out loss along
#      the way;
#   4. fit L = E + A·N^-α (E: the loss no model size removes: the entropy of the tokens given the class), report α
#      with a bootstrap confidence interval over seeds, beside the pure power law L = a·N^b and the compute frontier;
# Outputs (in --out-dir): scaling.png and scaling.json (every number, and the elapsed time).
#
# Be honest about what small models on a small dataset can show: many token maps are plausible for one class, so the
# loss has a floor E that the smallest models are far from and the biggest approach; a pure power law then bends, and
# its exponent depends on which sizes were trained. The exponent α of the reducible part is the comparable number.
# One learning rate serves every size, where a real study tunes it per size. Treat α as a property of THIS setup.
#
# Shape legend: B batch, n images, L = Σ pn² tokens per image, Cvae code dimension, V codebook size. N (parameters) and
# C (training FLOPs) are the scaling variables.
#

# %%
import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import common  # flags, threads, and the trained tokenizer (tutorials/common.py)
import matplotlib.pyplot as plt

from minvar.io.data import HELD_OUT_SEED_OFFSET, ShapesDataset
from minvar.training.schedule import lr_wd_at, set_lr_wd
from minvar.var import VAR, VARConfig

# The full and fast settings. The full ones took 43 minutes of wall clock on one thread of a 2-core Intel Xeon that
# other jobs kept at a load average of 10-17, so roughly a quarter of a core (docs/results.md).
FULL = dict(depths="1,2,3,4,5", width_per_depth=16, steps=400, batch_size=16, train_images=4096, held_out_images=256,
            seeds=3)
FAST = dict(depths="1,2,3,4,5", width_per_depth=16, steps=4, batch_size=4, train_images=32, held_out_images=16,
            seeds=2)
# The paper's exponents of L = (β·N)^-α against parameters (Figure 5), and Kaplan et al.'s for language models.
PAPER_EXPONENTS = {"VAR paper, last-scale loss vs N": 0.23, "VAR paper, mean loss vs N": 0.20,
                   "Kaplan et al. 2020, language models vs N": 0.076}


def extra_flags(parser):
    # Flags left out keep the mode's value (FULL or FAST above), so they have no argparse default of their own.
    unset = argparse.SUPPRESS
    for name, kind, help_text in [
            ("depths", str, "comma-separated depths of the ladder"),
            ("width_per_depth", int, "width = this × depth (the paper uses 64)"),
            ("steps", int, "training steps of every size and seed"),
            ("batch_size", int, "images per step"),
            ("train_images", int, "size of the fixed training set"),
            ("held_out_images", int, "held-out images for the loss"),
            ("seeds", int, "seeds per size (initialisation, batch order, label dropout; --seed is the first)")]:
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=unset,
                            help=f"{help_text} (full mode {FULL[name]}, --fast {FAST[name]})")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak AdamW learning rate, the same "
                        "for every size")
    parser.add_argument("--evaluations", type=int, default=5, help="held-out evaluations per run, at "
                        "log-spaced steps (for the compute frontier)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the seeds for the "
                        "confidence interval of α")


args = common.parse_args("Tutorial 5: a scaling law in miniature", extra_flags)
settings = FAST if args.fast else FULL
for name, value in settings.items():  # a flag given on the command line wins over the mode's setting
    if not hasattr(args, name):
        setattr(args, name, value)
started = time.time()
seeds = [args.seed + i for i in range(args.seeds)]

# %% [markdown]
# ## 1. A fixed set of tokens, computed once
#
# The official trainer tokenizes on the fly; here every model must see exactly the same data, and tokenizing once
# saves the tokenizer's cost for every size and seed. We keep what a VAR training step needs: the targets (all L
# token ids), the teacher-forcing inputs (cumulative f̂ downsampled to each next scale, tutorial 02) and the labels.

# %%
common.section("1. A fixed set of tokens, computed once")
vae, tokenizer_source = common.get_tokenizer(args)
tokenize_started = time.time()


@torch.no_grad()
def tokenize(dataset, count):
    """(labels (n,), inputs (n, L-1, Cvae), targets (n, L)) of the first `count` images of `dataset`."""
    labels, inputs, targets = [], [], []
    for start in range(0, count, 256):
        items = [dataset[i] for i in range(start, min(start + 256, count))]
        idx = vae.img_to_idx(torch.stack([image for image, _ in items]))  # K × (n, pn²), Algorithm 1
        labels.append(torch.tensor([label for _, label in items]))
        inputs.append(vae.idx_to_var_input(idx))  # (n, L-1, Cvae)
        targets.append(torch.cat(idx, dim=1))  # (n, L)
    return torch.cat(labels), torch.cat(inputs), torch.cat(targets)


image_size = vae.config.image_size
train_set = ShapesDataset(args.train_images, image_size, seed=args.seed)
train = tokenize(train_set, args.train_images)
held_out = tokenize(ShapesDataset(args.held_out_images, image_size, seed=args.seed + HELD_OUT_SEED_OFFSET),
                    args.held_out_images)
tokenize_seconds = time.time() - tokenize_started
L = train[2].shape[1]
num_classes = train_set.num_classes
print(f"{args.train_images} training and {args.held_out_images} held-out images -> {L} tokens each "
      f"({args.train_images * L:,} training tokens), in {tokenize_seconds:.1f} s")
print(f"a model that knows nothing scores ln V = {math.log(vae.config.vocab_size):.3f} nats per token")

# %% [markdown]
# ## 2. The ladder of model sizes
#
# One knob, as in the paper: depth d sets everything (width = w·d, heads = d, so every head has w dimensions).
# The rest is the quickstart's "tiny" VAR (no drop path, label dropout 0.1). NOTE (differs from the paper): w = 16
# instead of 64, so that five sizes and three seeds train long enough on one CPU thread; the embeddings and the
# output head are a large share of the smallest models.

# %%
common.section("2. The ladder of model sizes")
depths = [int(d) for d in args.depths.split(",")]


def make_config(depth: int) -> VARConfig:
    return VARConfig(depth=depth, width=args.width_per_depth * depth, num_heads=depth, num_classes=num_classes,
                     vocab_size=vae.config.vocab_size, code_dim=vae.config.code_dim,
                     patch_nums=tuple(vae.patch_nums), drop_path_rate=0.0, init_adaln_gamma=1e-3)


params = {d: sum(p.numel() for p in VAR(make_config(d)).parameters()) for d in depths}
print(f"{'depth':>5} {'width':>6} {'heads':>5} {'parameters':>12}")
for d in depths:
    print(f"{d:>5} {args.width_per_depth * d:>6} {d:>5} {params[d]:>12,}")

# %% [markdown]
# ## 3. Train every size with every seed on the same tokens
#
# Same steps, same learning-rate schedule (the official "lin0": warmup, then linear decay to 10%) and AdamW settings
# as train_var.py. A seed sets the initialisation, the batch order and the label dropout, the same for every size:
# the spread over seeds is what separates a real difference between sizes from noise.

# %%
common.section("3. Train every size with every seed on the same tokens")
steps, batch_size = args.steps, args.batch_size
epochs = math.ceil(steps * batch_size / args.train_images)
evaluation_steps = sorted({max(1, round(steps / 2 ** i)) for i in range(args.evaluations)})
print(f"{steps} steps × {batch_size} images = {steps * batch_size * L:,} tokens per model "
      f"({steps * batch_size / args.train_images:.2f} epochs), seeds {seeds}; held-out loss after steps "
      f"{evaluation_steps}")


@torch.no_grad()
def held_out_loss(var):
    """Mean cross-entropy (nats/token) over all held-out tokens and over the last scale's, and token accuracy."""
    var.eval()
    labels, inputs, targets = held_out
    last_begin = var.begin_ends[-1][0]
    total = last = correct = 0.0
    for start in range(0, len(labels), 128):
        logits = var(labels[start:start + 128], inputs[start:start + 128])  # (n, L, V)
        target = targets[start:start + 128]  # (n, L)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
        total += loss.sum().item()
        last += loss[:, last_begin:].sum().item()
        correct += (logits.argmax(-1) == target).sum().item()
    var.train()
    count = targets.numel()
    return total / count, last / (len(labels) * (L - last_begin)), correct / count


def train_one(depth: int, seed: int) -> dict:
    """Train one size with one seed; returns its held-out curve (evaluations at `evaluation_steps`)."""
    order_generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(args.train_images, generator=order_generator) for _ in range(epochs)])
    drop_mask = torch.rand(steps, batch_size, generator=order_generator) < 0.1  # label dropout
    torch.manual_seed(seed)
    var = VAR(make_config(depth))
    optimizer = torch.optim.AdamW(var.parameter_groups(0.05), lr=args.learning_rate, betas=(0.9, 0.95))
    curve, run_started = [], time.time()
    var.train()
    for step in tqdm(range(steps), desc=f"depth {depth} seed {seed}", dynamic_ncols=True, leave=False):
        set_lr_wd(optimizer, *lr_wd_at(step, steps, args.learning_rate, warmup_steps=max(steps // 50, 1)))
        batch = order[step * batch_size:(step + 1) * batch_size]
        logits = var(train[0][batch], train[1][batch], drop_mask[step])  # (B, L, V)
        loss = F.cross_entropy(logits.flatten(0, 1), train[2][batch].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        optimizer.step()
        if step + 1 in evaluation_steps:
            tokens = (step + 1) * batch_size * L
            mean_loss, last_loss, accuracy = held_out_loss(var)
            curve.append(dict(step=step + 1, tokens=tokens, flops=6.0 * params[depth] * tokens, loss=mean_loss,
                              last_scale_loss=last_loss, accuracy=accuracy))
    return dict(curve=curve, seconds=time.time() - run_started)


results = []
for depth in depths:
    runs = [train_one(depth, seed) for seed in seeds]
    finals = [run["curve"][-1] for run in runs]
    losses = [final["loss"] for final in finals]
    mean_curve = [dict(step=points[0]["step"], tokens=points[0]["tokens"], flops=points[0]["flops"],
                       loss=float(np.mean([p["loss"] for p in points])))
                  for points in zip(*[run["curve"] for run in runs])]
    results.append(dict(depth=depth, width=args.width_per_depth * depth, heads=depth, params=params[depth],
                        final_losses=losses, final_loss=float(np.mean(losses)), final_loss_std=float(np.std(losses)),
                        final_last_scale_loss=float(np.mean([f["last_scale_loss"] for f in finals])),
                        final_accuracy=float(np.mean([f["accuracy"] for f in finals])), flops=finals[0]["flops"],
                        seconds=sum(run["seconds"] for run in runs), curve=mean_curve))
    print(f"depth {depth}: held-out loss {results[-1]['final_loss']:.4f} ± {results[-1]['final_loss_std']:.4f} over "
          f"{len(seeds)} seeds (last scale {results[-1]['final_last_scale_loss']:.4f}, accuracy "
          f"{results[-1]['final_accuracy']:.3f}) in {results[-1]['seconds']:.1f} s")
separated = [bool(bigger["final_loss"] + bigger["final_loss_std"] < smaller["final_loss"] - smaller["final_loss_std"])
             for smaller, bigger in zip(results, results[1:])]
print(f"each size below the next smaller one by more than both seed spreads: {separated}")

# %% [markdown]
# ## 4. Fitting the scaling laws
#
# **With the irreducible term.** L = E + A·N^-α: for a fixed E, log(L − E) = log A − α·log N is a straight line,
# fitted by least squares; E itself is the value on a fine grid below the lowest loss that leaves the smallest squared
# error in L (not in log L, which would let the point nearest E decide alone). **Confidence interval.** The fit is
# repeated on bootstrap resamples of the seeds (for each size, its seeds drawn with replacement and averaged); the
# 2.5th and 97.5th percentiles of α over the resamples are its 95% interval. With three seeds the interval is coarse:
# it says how far α moves under the noise measured here, not under every source of noise.
#
# **Without it.** The pure power law L = a·N^b (numpy.polyfit on the logs), as the paper fits; and the compute
# frontier, each compute budget's best model, L = a·C^b.

# %%
common.section("4. Fitting the scaling laws")


def fit_power_law(x, y):
    """Least-squares fit of log y = log a + b·log x. Returns a, b (the exponent), R² and r (on the logs)."""
    log_x, log_y = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    b, log_a = np.polyfit(log_x, log_y, 1)
    residual = log_y - (log_a + b * log_x)
    r2 = 1 - (residual ** 2).sum() / max(((log_y - log_y.mean()) ** 2).sum(), 1e-300)
    return dict(a=float(np.exp(log_a)), exponent=float(b), r2=float(r2),
                r=float(np.corrcoef(log_x, log_y)[0, 1]))


def fit_with_irreducible(n, y, candidates=400):
    """L = E + A·N^-α: for each E on a grid in [0, 0.999·min L), the log-log line for A and α; keep the E with the
    smallest squared error in L. Returns E, A, α and R² (in L). The grid's lines are fitted all at once: the least
    squares slope is cov(log N, log(L − E)) / var(log N) for every row E of the grid."""
    n, y = np.asarray(n, dtype=np.float64), np.asarray(y, dtype=np.float64)
    floors = np.linspace(0.0, 0.999 * y.min(), candidates)  # (G,)
    log_n = np.log(n) - np.log(n).mean()  # (S,) centred
    log_y = np.log(y[None, :] - floors[:, None])  # (G, S)
    slopes = (log_y * log_n).sum(axis=1) / (log_n ** 2).sum()  # (G,)
    log_a = log_y.mean(axis=1) - slopes * np.log(n).mean()  # (G,)
    errors = ((floors[:, None] + np.exp(log_a)[:, None] * n[None, :] ** slopes[:, None] - y[None, :]) ** 2).sum(1)
    best = int(np.argmin(errors))
    r2 = 1 - errors[best] / max(float(((y - y.mean()) ** 2).sum()), 1e-300)
    return dict(E=float(floors[best]), A=float(np.exp(log_a[best])), alpha=float(-slopes[best]), r2=float(r2))


sizes = [r["params"] for r in results]
final_losses = [r["final_loss"] for r in results]
fit_params = fit_power_law(sizes, final_losses)
fit_params_last = fit_power_law(sizes, [r["final_last_scale_loss"] for r in results])
fit_irreducible = fit_with_irreducible(sizes, final_losses)
resample_generator = np.random.default_rng(args.seed)
per_seed = np.array([r["final_losses"] for r in results])  # (sizes, seeds)
bootstrap = []
for _ in range(args.bootstrap):
    picks = resample_generator.integers(0, len(seeds), size=per_seed.shape)  # (sizes, seeds), with replacement
    bootstrap.append(fit_with_irreducible(sizes, np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)))
alpha_interval = [float(np.percentile([b["alpha"] for b in bootstrap], q)) for q in (2.5, 97.5)]
floor_interval = [float(np.percentile([b["E"] for b in bootstrap], q)) for q in (2.5, 97.5)]
fit_irreducible.update(alpha_interval_95=alpha_interval, E_interval_95=floor_interval, bootstrap=args.bootstrap)

# Compute: every evaluation of every size (mean over seeds) is a point (C, L). The compute-efficient frontier keeps
# the points that beat every cheaper point: for each compute budget, the best model size. Evaluations in the first
# tenth of a run are left out: there the loss is still on its initial plateau, a transient no power law describes.
points = sorted((c["flops"], c["loss"]) for r in results for c in r["curve"] if c["step"] >= steps / 10)
frontier, best_so_far = [], float("inf")
for flops, loss in points:
    if loss < best_so_far:
        frontier.append((flops, loss))
        best_so_far = loss
fit_compute = fit_power_law([c for c, _ in frontier], [l for _, l in frontier]) if len(frontier) >= 2 else \
    dict(a=float("nan"), exponent=float("nan"), r2=float("nan"), r=float("nan"))
print(f"with the irreducible term:   L = {fit_irreducible['E']:.3f} + {fit_irreducible['A']:.3f}·N^-"
      f"{fit_irreducible['alpha']:.3f}   α 95% interval [{alpha_interval[0]:.3f}, {alpha_interval[1]:.3f}], "
      f"E in [{floor_interval[0]:.3f}, {floor_interval[1]:.3f}] ({args.bootstrap} bootstrap resamples of the seeds)")
print(f"pure power law:              L = {fit_params['a']:.3f}·N^{fit_params['exponent']:.4f}   "
      f"R² = {fit_params['r2']:.4f}, r = {fit_params['r']:.4f}")
print(f"last-scale loss, pure:       L = {fit_params_last['a']:.3f}·N^{fit_params_last['exponent']:.4f}   "
      f"R² = {fit_params_last['r2']:.4f}")
print(f"frontier loss vs compute:    L = {fit_compute['a']:.3f}·C^{fit_compute['exponent']:.4f}   "
      f"R² = {fit_compute['r2']:.4f}, {len(frontier)} frontier points of {len(points)}")
print("beside the pure-power-law exponents of the papers (no irreducible term, so not the same quantity as α):")
for source, exponent in PAPER_EXPONENTS.items():
    print(f"    {source:<45} α = {exponent}")
print(f"SCALING_EXPONENT_PARAMS={fit_params['exponent']:.6f} R2={fit_params['r2']:.6f}")

# %% [markdown]
# ## 5. Figure and numbers

# %%
common.section("5. Figure and numbers")
figure, axes = plt.subplots(1, 2, figsize=(11, 4))
grid_n = np.geomspace(min(sizes), max(sizes), 50)
axes[0].errorbar(sizes, final_losses, yerr=[r["final_loss_std"] for r in results], fmt="o", color="tab:blue",
                 label=f"held-out loss (mean ± std, {len(seeds)} seeds)")
axes[0].plot(grid_n, fit_irreducible["E"] + fit_irreducible["A"] * grid_n ** -fit_irreducible["alpha"], "-",
             color="tab:red", label=f"L = {fit_irreducible['E']:.2f} + {fit_irreducible['A']:.2f}·N^-"
                                    f"{fit_irreducible['alpha']:.2f} (α ∈ [{alpha_interval[0]:.2f}, "
                                    f"{alpha_interval[1]:.2f}])")
axes[0].plot(grid_n, fit_params["a"] * grid_n ** fit_params["exponent"], "--", color="gray",
             label=f"L = {fit_params['a']:.2f}·N^{fit_params['exponent']:.3f} (pure)")
axes[0].axhline(fit_irreducible["E"], color="tab:red", ls=":", lw=1)
axes[0].set_xscale("log")
axes[0].set_yscale("log")
axes[0].xaxis.set_minor_formatter(plt.NullFormatter())  # decade labels only: minor ones overlap on a short range
axes[0].yaxis.set_minor_formatter(plt.FormatStrFormatter("%.2f"))  # the losses span less than a decade
for r in results:
    axes[0].annotate(f"d{r['depth']}", (r["params"], r["final_loss"]), fontsize=7, xytext=(3, 3),
                     textcoords="offset points")
axes[0].set_xlabel("parameters N")
axes[0].set_ylabel("held-out cross-entropy (nats/token)")
axes[0].set_title(f"loss vs model size ({steps} steps each)", fontsize=9)
colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(results)))
for colour, r in zip(colours, results):
    axes[1].loglog([c["flops"] for c in r["curve"]], [c["loss"] for c in r["curve"]], "o-", ms=3, color=colour,
                   label=f"d{r['depth']} ({r['params'] / 1e6:.2f}M)")
if len(frontier) >= 2:
    grid_c = np.geomspace(frontier[0][0], frontier[-1][0], 50)
    axes[1].loglog(*zip(*frontier), "o", mfc="none", mec="black", ms=8, label="compute-efficient frontier")
    axes[1].loglog(grid_c, fit_compute["a"] * grid_c ** fit_compute["exponent"], "--", color="black",
                   label=f"fit: L ∝ C^{fit_compute['exponent']:.3f} (R²={fit_compute['r2']:.3f})")
axes[1].set_xlabel("training compute C ≈ 6·N·tokens (FLOPs)")
axes[1].set_title("loss vs compute: each size's held-out curve (mean over seeds)", fontsize=9)
for ax in axes:
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
common.save_figure(figure, args.out_dir, "scaling.png")

elapsed = time.time() - started
report = dict(fast=args.fast, tokenizer=tokenizer_source, elapsed_seconds=elapsed, tokenize_seconds=tokenize_seconds,
              threads=torch.get_num_threads(),
              settings=dict(depths=depths, width_per_depth=args.width_per_depth, steps=steps, batch_size=batch_size,
                            train_images=args.train_images, held_out_images=args.held_out_images, seeds=seeds,
                            learning_rate=args.learning_rate, tokens_per_image=L, evaluation_steps=evaluation_steps),
              sizes=results, sizes_separated=separated, fit_irreducible=fit_irreducible, fit_params=fit_params,
              fit_params_last_scale=fit_params_last, fit_compute=dict(fit_compute, frontier=frontier),
              paper_exponents=PAPER_EXPONENTS)
path = f"{args.out_dir}/scaling.json"
with open(path, "w") as file:
    json.dump(report, file, indent=1)
print(f"[numbers] {path}")
print(f"elapsed: {elapsed:.1f} s ({tokenize_seconds:.1f} s tokenizing, "
      f"{sum(r['seconds'] for r in results):.1f} s training and evaluating)")
if "standin" in tokenizer_source:
    print("NOTE: the tokens come from a small stand-in tokenizer (150 steps in full mode); the quickstart's tokenizer")
    print("(python train_tokenizer.py) has more to learn from, and the curve would shift.")
