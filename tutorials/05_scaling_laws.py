"""Tutorial 5: a scaling law in miniature: held-out loss vs model size and vs training compute.

    python tutorials/05_scaling_laws.py          # about 10 minutes on 2 busy CPU cores (see tutorials/README.md)
    python tutorials/05_scaling_laws.py --fast   # seconds: the same pipeline with tiny settings

The VAR paper's central empirical claim (its "power-law scaling laws" experiments, Figure 5 and the compute figure
after it): trained the same way, bigger VAR transformers reach a lower test loss, and the loss falls as a power law,
L = a·X^b, in the number of parameters X = N and in the training compute X = C, a straight line on log-log axes
(the paper reports linear correlation coefficients near -0.998 between log L and log X, up to 2B parameters).

Here, the same experiment fits on a laptop:
  1. tokenize a fixed set of built-in images ONCE with the tokenizer (Algorithm 1), so every model sees the same tokens;
  2. build a ladder of VAR sizes with the paper's single knob, depth d (width = 32·d here, 64·d in the paper,
     heads = d);
  3. train every size for the same number of steps on the same batches, evaluating the held-out loss along the way;
  4. fit L = a·N^b to the final losses, and L = a·C^b to the compute-efficient frontier (C ≈ 6·N·tokens),
     with numpy.polyfit on the logs, and print the exponent b and R².
Outputs (in --out-dir): scaling.png and scaling.json (every number, and the elapsed time).

Be honest about what small models on a small dataset can show: the loss has an irreducible part (the entropy of the
tokens: many token maps are plausible for one class), so the curve bends towards a floor as models get good, and a
pure power law fits less well; the tutorial also fits L = L∞ + a·N^b to show that. Every size gets the same short
training and one untuned learning rate, where a real study tunes both. Treat the exponent as a property of THIS
setup, not of VAR at ImageNet scale.

Shape legend: B batch, n images, L = Σ pn² tokens per image, Cvae code dimension, V codebook size. N (parameters) and
C (training FLOPs) are the scaling variables.
"""
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

# The full and fast settings. The full ones were sized for ~10 minutes on 2 shared CPU cores (tutorials/README.md).
FULL = dict(depths="1,2,3,4,5", width_per_depth=32, steps=120, batch_size=32, train_images=4096, held_out_images=128)
FAST = dict(depths="1,2,3,4,5", width_per_depth=16, steps=4, batch_size=4, train_images=32, held_out_images=16)


def extra_flags(parser):
    # Flags left out keep the mode's value (FULL or FAST above), so they have no argparse default of their own.
    unset = argparse.SUPPRESS
    parser.add_argument("--depths", default=unset, help=f"comma-separated depths of the ladder (full mode "
                        f"{FULL['depths']}, --fast {FAST['depths']})")
    parser.add_argument("--width-per-depth", type=int, default=unset, help=f"width = this × depth (full mode "
                        f"{FULL['width_per_depth']}, --fast {FAST['width_per_depth']}; the paper uses 64)")
    parser.add_argument("--steps", type=int, default=unset, help=f"training steps of every size (full mode "
                        f"{FULL['steps']}, --fast {FAST['steps']})")
    parser.add_argument("--batch-size", type=int, default=unset, help=f"images per step (full mode "
                        f"{FULL['batch_size']}, --fast {FAST['batch_size']})")
    parser.add_argument("--train-images", type=int, default=unset, help=f"size of the fixed training set "
                        f"(full mode {FULL['train_images']}, --fast {FAST['train_images']})")
    parser.add_argument("--held-out-images", type=int, default=unset, help=f"held-out images for the loss "
                        f"(full mode {FULL['held_out_images']}, --fast {FAST['held_out_images']})")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak AdamW learning rate, the same "
                        "for every size")
    parser.add_argument("--evaluations", type=int, default=5, help="held-out evaluations per run, at "
                        "log-spaced steps (for the compute frontier)")


args = common.parse_args(__doc__.split("\n")[0], extra_flags)
settings = FAST if args.fast else FULL
for name, value in settings.items():  # a flag given on the command line wins over the mode's setting
    if not hasattr(args, name):
        setattr(args, name, value)
started = time.time()

# ------------------------------------------------------------------------------------------------------------------
common.section("1. A fixed set of tokens, computed once")
# ------------------------------------------------------------------------------------------------------------------
# The official trainer tokenizes on the fly; here every model must see exactly the same data, and tokenizing once
# saves the tokenizer's cost five times over. We keep what a VAR training step needs: the targets (all L token ids),
# the teacher-forcing inputs (cumulative f̂ downsampled to each next scale, tutorial 02) and the labels.
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
entropy_bound = math.log(vae.config.vocab_size)
print(f"a model that knows nothing scores ln V = {entropy_bound:.3f} nats per token")

# ------------------------------------------------------------------------------------------------------------------
common.section("2. The ladder of model sizes")
# ------------------------------------------------------------------------------------------------------------------
# One knob, as in the paper: depth d sets everything (width = w·d, heads = d, so every head has w dimensions).
# The rest is the quickstart's "tiny" VAR (no drop path, label dropout 0.1).
depths = [int(d) for d in args.depths.split(",")]


def make_config(depth: int) -> VARConfig:
    return VARConfig(depth=depth, width=args.width_per_depth * depth, num_heads=depth, num_classes=num_classes,
                     vocab_size=vae.config.vocab_size, code_dim=vae.config.code_dim,
                     patch_nums=tuple(vae.patch_nums), drop_path_rate=0.0, init_adaln_gamma=1e-3)


params = {d: sum(p.numel() for p in VAR(make_config(d)).parameters()) for d in depths}
print(f"{'depth':>5} {'width':>6} {'heads':>5} {'parameters':>12}")
for d in depths:
    print(f"{d:>5} {args.width_per_depth * d:>6} {d:>5} {params[d]:>12,}")
print("(parameters include the embeddings and the output head, which dominate the smallest model)")

# ------------------------------------------------------------------------------------------------------------------
common.section("3. Train every size on the same tokens")
# ------------------------------------------------------------------------------------------------------------------
# Same steps, same batches in the same order (one shuffled order, reused), same learning-rate schedule (the official
# "lin0": warmup, then linear decay to 10%) and AdamW settings as train_var.py. One untuned learning rate for all
# sizes is a simplification: a real scaling study tunes it per size.
steps, batch_size = args.steps, args.batch_size
order_generator = torch.Generator().manual_seed(args.seed)
epochs = math.ceil(steps * batch_size / args.train_images)
order = torch.cat([torch.randperm(args.train_images, generator=order_generator) for _ in range(epochs)])
drop_mask = torch.rand(steps, batch_size, generator=order_generator) < 0.1  # label dropout, the same for all sizes
evaluation_steps = sorted({max(1, round(steps / 2 ** i)) for i in range(args.evaluations)})
print(f"{steps} steps × {batch_size} images = {steps * batch_size * L:,} tokens per model "
      f"({steps * batch_size / args.train_images:.2f} epochs); held-out loss after steps {evaluation_steps}")


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


results = []
for depth in depths:
    torch.manual_seed(args.seed)
    var = VAR(make_config(depth))
    optimizer = torch.optim.AdamW(var.parameter_groups(0.05), lr=args.learning_rate, betas=(0.9, 0.95))
    curve, run_started = [], time.time()
    var.train()
    for step in tqdm(range(steps), desc=f"depth {depth} ({params[depth]:,} params)", dynamic_ncols=True):
        lr, wd = lr_wd_at(step, steps, args.learning_rate, warmup_steps=max(steps // 50, 1))
        set_lr_wd(optimizer, lr, wd)
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
    final = curve[-1]
    results.append(dict(depth=depth, width=args.width_per_depth * depth, heads=depth, params=params[depth],
                        final_loss=final["loss"], final_last_scale_loss=final["last_scale_loss"],
                        final_accuracy=final["accuracy"], flops=final["flops"], seconds=time.time() - run_started,
                        curve=curve))
    print(f"depth {depth}: held-out loss {final['loss']:.4f} (last scale {final['last_scale_loss']:.4f}, "
          f"accuracy {final['accuracy']:.3f}) in {time.time() - run_started:.1f} s")

# ------------------------------------------------------------------------------------------------------------------
common.section("4. Fitting the power laws")
# ------------------------------------------------------------------------------------------------------------------
# A power law L = a·X^b is a straight line in log-log space: log L = log a + b·log X. Fit it by least squares on the
# logs (numpy.polyfit, degree 1); R² and the correlation coefficient r say how straight the line is.


def fit_power_law(x, y):
    """Least-squares fit of log y = log a + b·log x. Returns a, b (the exponent), R² and r (on the logs)."""
    log_x, log_y = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    b, log_a = np.polyfit(log_x, log_y, 1)
    residual = log_y - (log_a + b * log_x)
    r2 = 1 - (residual ** 2).sum() / max(((log_y - log_y.mean()) ** 2).sum(), 1e-300)
    return dict(a=float(np.exp(log_a)), exponent=float(b), r2=float(r2),
                r=float(np.corrcoef(log_x, log_y)[0, 1]))


def fit_with_floor(x, y, candidates=400):
    """L = L∞ + a·x^b: the power law only for the reducible part; L∞ by a grid search for the best R².

    The grid stops at 95% of the lowest loss: closer, log(L - L∞) of that one point dives to -∞ and it alone would
    decide the fit.
    """
    best = None
    for floor in np.linspace(0, 0.95 * min(y), candidates):
        fit = fit_power_law(x, np.asarray(y) - floor)
        if best is None or fit["r2"] > best["r2"]:
            best = dict(fit, floor=float(floor))
    return best


sizes = [r["params"] for r in results]
final_losses = [r["final_loss"] for r in results]
fit_params = fit_power_law(sizes, final_losses)
fit_params_last = fit_power_law(sizes, [r["final_last_scale_loss"] for r in results])
fit_floor = fit_with_floor(sizes, final_losses)
# Compute: every evaluation of every run is a point (C, L). The compute-efficient frontier keeps the points that
# beat every cheaper point: for each compute budget, the best model size. The paper's compute law is fitted there.
# Evaluations in the first tenth of a run are left out: there the loss is still on its initial plateau (warmup,
# learning which tokens are frequent), a transient that no power law describes.
points = sorted((c["flops"], c["loss"]) for r in results for c in r["curve"] if c["step"] >= steps / 10)
frontier, best_so_far = [], float("inf")
for flops, loss in points:
    if loss < best_so_far:
        frontier.append((flops, loss))
        best_so_far = loss
fit_compute = fit_power_law([c for c, _ in frontier], [l for _, l in frontier]) if len(frontier) >= 2 else \
    dict(a=float("nan"), exponent=float("nan"), r2=float("nan"), r=float("nan"))
print(f"loss vs parameters:          L = {fit_params['a']:.3f}·N^{fit_params['exponent']:.4f}   "
      f"R² = {fit_params['r2']:.4f}, r = {fit_params['r']:.4f}")
print(f"last-scale loss vs params:   L = {fit_params_last['a']:.3f}·N^{fit_params_last['exponent']:.4f}   "
      f"R² = {fit_params_last['r2']:.4f}")
print(f"with an irreducible floor:   L = {fit_floor['floor']:.3f} + {fit_floor['a']:.3f}·N^{fit_floor['exponent']:.4f}"
      f"   R² = {fit_floor['r2']:.4f} (on log(L - L∞))")
print(f"frontier loss vs compute:    L = {fit_compute['a']:.3f}·C^{fit_compute['exponent']:.4f}   "
      f"R² = {fit_compute['r2']:.4f}, {len(frontier)} frontier points of {len(points)}")
print(f"SCALING_EXPONENT_PARAMS={fit_params['exponent']:.6f} R2={fit_params['r2']:.6f}")
if fit_params["exponent"] >= 0:
    print("The loss did not fall with size here: the runs are too short (or the lr too far off) for size to help.")
elif fit_floor["r2"] > fit_params["r2"] + 0.02 and fit_floor["floor"] > 0.05 * min(final_losses):
    print("The floor fits clearly better (it has one more parameter, so it always fits a little better): the biggest")
    print("models approach the irreducible loss of these tokens and the pure power law bends. Expected for tiny data;")
    print("the paper's models are far from their floor.")
elif fit_params["r2"] >= 0.95:
    print("A pure power law describes these sizes well (R² close to 1); a floor does not help much yet.")
else:
    print(f"The points scatter around the line (R² = {fit_params['r2']:.2f}): too few steps or held-out images for a")
    print("clean law. Take this exponent with a grain of salt.")

# ------------------------------------------------------------------------------------------------------------------
common.section("5. Figure and numbers")
# ------------------------------------------------------------------------------------------------------------------
figure, axes = plt.subplots(1, 2, figsize=(11, 4))
grid_n = np.geomspace(min(sizes), max(sizes), 50)
axes[0].loglog(sizes, final_losses, "o", color="tab:blue", label="held-out loss (all scales)")
axes[0].loglog(grid_n, fit_params["a"] * grid_n ** fit_params["exponent"], "--", color="tab:blue",
               label=f"L = {fit_params['a']:.2f}·N^{fit_params['exponent']:.3f} (R²={fit_params['r2']:.3f})")
axes[0].loglog(grid_n, fit_floor["floor"] + fit_floor["a"] * grid_n ** fit_floor["exponent"], ":", color="gray",
               label=f"with floor L∞={fit_floor['floor']:.2f}")
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
axes[1].set_title("loss vs compute: each run's held-out curve", fontsize=9)
for ax in axes:
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
common.save_figure(figure, args.out_dir, "scaling.png")

elapsed = time.time() - started
report = dict(fast=args.fast, tokenizer=tokenizer_source, elapsed_seconds=elapsed, tokenize_seconds=tokenize_seconds,
              threads=torch.get_num_threads(),
              settings=dict(depths=depths, width_per_depth=args.width_per_depth, steps=steps, batch_size=batch_size,
                            train_images=args.train_images, held_out_images=args.held_out_images,
                            learning_rate=args.learning_rate, tokens_per_image=L, evaluation_steps=evaluation_steps),
              sizes=results, fit_params=fit_params, fit_params_last_scale=fit_params_last,
              fit_params_with_floor=fit_floor, fit_compute=dict(fit_compute, frontier=frontier))
path = f"{args.out_dir}/scaling.json"
with open(path, "w") as file:
    json.dump(report, file, indent=1)
print(f"[numbers] {path}")
print(f"elapsed: {elapsed:.1f} s ({tokenize_seconds:.1f} s tokenizing, "
      f"{sum(r['seconds'] for r in results):.1f} s training and evaluating)")
if "standin" in tokenizer_source:
    print("NOTE: the tokens come from a barely trained stand-in tokenizer, so these numbers say little about VAR;")
    print("run the quickstart first (python train_tokenizer.py) for a meaningful curve.")
