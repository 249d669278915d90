"""Tutorial 7: the paper's ablation table on a CPU: raster-scan AR against VAR, one switch at a time.

    python tutorials/07_ablations.py --threads 2   # 9 minutes on 2 CPU cores, 20-30 on one shared thread (README)
    python tutorials/07_ablations.py --fast   # seconds: the same pipeline with tiny settings
    python tutorials/07_ablations.py --data-path /data/my_images   # any folder, one sub-folder per class
    python tutorials/07_ablations.py --ar-tokenizer derived  # AR on VAR's own tokenizer, last scale only (~5 min
                                                             # after a full run: the VAR models are reused)

The VAR paper's case for next-scale prediction is one table, its ablation study (ImageNet 256×256, FID):

    row  description                 params  model    AdaLN  top-k  CFG  cost   FID
    1    AR (raster-scan next-token)  227M   AR       no     no     no   1      18.65
    2    AR to VAR                    207M   VAR-d16  no     no     no   0.013   5.22
    3    + AdaLN                      310M   VAR-d16  yes    no     no   0.016   4.95
    4    + top-k                      310M   VAR-d16  yes    600    no   0.016   4.64
    5    + CFG                        310M   VAR-d16  yes    600    2.0  0.022   3.60
    6    + attention normalization    310M   VAR-d16  yes    600    2.0  0.022   3.30
    7    + scale up                   2.0B   VAR-d30  yes    600    2.0  0.052   1.73

Here every row is trained on the same data with the same counted training compute (FLOPs of a forward and backward
pass, minvar.evaluation.flops), then sampled with its settings and measured:
  1. two tokenizers with the same training budget: the multi-scale one VAR needs, and a ONE-scale one (the same
     VQVAE with patch_nums=(n,)) for the raster-scan AR, so both models see the same resolution and codebook size;
  2. five trained models: AR (row 1), VAR without AdaLN and without attention normalization (row 2), VAR with AdaLN
     (rows 3-5: top-k and CFG are sampling settings of the same weights), the default VAR (row 6) and a bigger VAR
     (row 7);
  3. sampling cost: wall time per image at a fixed batch (the rows interleaved, median of repeats) and counted FLOPs;
  4. quality: the share of samples the judge (minvar.evaluation.judge) assigns to their class, Fréchet distance and k=3
     precision/recall in the judge's feature space (as evaluate.py);
  5. the table with the paper's values beside it, a figure, and 07_ablations.json.
The cost argument itself (n² steps and O(n⁶) for AR against K steps and O(n⁴) for VAR as the token map grows) is
measured by bench/bench_cost.py.

What a half-hour CPU run can and cannot show: 32px images have an 8×8 token map, so the AR model takes 64 steps and
VAR 6, far fewer than at 256px (256 against 10); the models are ~1M parameters trained for minutes. The table's
directions are the claim to test, not its numbers.

Shape legend: B batch, n side of the last token map, T = n² (AR tokens), L = Σ pn² (VAR tokens), Cvae code dim.
"""
import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import common  # flags, threads, figures (tutorials/common.py)
import matplotlib.pyplot as plt

from minvar.ar import AR, ARConfig, generate_ar, sample_tokens
from minvar.io.checkpoint import load_ar, save_ar
from minvar.io.checkpoint import load_tokenizer, load_var, read_file, save_checkpoint, strict_load
from minvar.io.data import build_dataset, save_image_grid
from minvar.evaluation.flops import count_flops
from minvar.evaluation.judge import evaluate_accuracy, judge_predict, train_judge
from minvar.evaluation.metrics import frechet_distance_from_features, precision_recall, psnr
from minvar.sampling import generate, sample_scales
from minvar.training.data_order import step_generator
from minvar.training.schedule import lr_wd_at, set_lr_wd
from minvar.var import VAR, VARConfig
from minvar.vqvae import VQVAE, VQVAEConfig

# Full and fast settings. The full ones took 8.7 minutes with --threads 2 on a 2-core AMD EPYC, 19.5 with one
# thread on the same machine busy with other jobs (README, "Ablations").
# budget_steps: every model gets the training FLOPs of this many steps of the default VAR (row 6).
FULL = dict(tokenizer_steps=600, train_images=8192, budget_steps=400, batch_size=16, depth=4, width=128, heads=2,
            big_depth=6, big_width=192, big_heads=3, judge_steps=400, per_class=16, num_real=750, timing_batch=16,
            timing_repeats=3)
FAST = dict(tokenizer_steps=3, train_images=64, budget_steps=3, batch_size=4, depth=1, width=32, heads=1,
            big_depth=2, big_width=48, big_heads=1, judge_steps=3, per_class=1, num_real=16, timing_batch=2,
            timing_repeats=1)
# The paper's rows (ImageNet 256×256): params, relative cost and FID, for the printed table and the figure.
PAPER = {1: ("227M", 1.0, 18.65), 2: ("207M", 0.013, 5.22), 3: ("310M", 0.016, 4.95), 4: ("310M", 0.016, 4.64),
         5: ("310M", 0.022, 3.60), 6: ("310M", 0.022, 3.30), 7: ("2.0B", 0.052, 1.73)}


def extra_flags(parser):
    unset = argparse.SUPPRESS  # flags left out keep the mode's value (FULL or FAST above)
    for name, help_text in [("tokenizer_steps", "training steps of each tokenizer"),
                            ("train_images", "images tokenized once and shared by every model"),
                            ("budget_steps", "training compute of every model, in steps of the row-6 VAR"),
                            ("batch_size", "images per training step"),
                            ("depth", "depth of the rows 1-6 models"), ("width", "their width"),
                            ("heads", "their attention heads"), ("big_depth", "depth of the row-7 VAR"),
                            ("big_width", "its width"), ("big_heads", "its heads"),
                            ("judge_steps", "training steps of the judge classifier"),
                            ("per_class", "samples per class and row"), ("num_real", "real images per reference set"),
                            ("timing_batch", "batch of the wall-time measurement"),
                            ("timing_repeats", "timed generations per row (interleaved; the median is kept)")]:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=unset,
                            help=f"{help_text} (full mode {FULL[name]}, --fast {FAST[name]})")
    parser.add_argument("--data-path", default=None, help="image folder (one sub-folder per class); absent: the "
                        "built-in shapes dataset")
    parser.add_argument("--image-size", type=int, default=32, help="image side (the tiny tokenizer: an n = side/4 "
                        "token map)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak AdamW learning rate of every model "
                        "(train_var.py's tiny recipe)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k of rows 4-7; 0: the paper's 600 of 4096 codes "
                        "scaled to this codebook")
    parser.add_argument("--cfg", type=float, default=2.0, help="guidance of rows 5-7 (the paper's 2.0)")
    parser.add_argument("--ar-tokenizer", choices=["trained", "derived"], default="trained", help="the AR model's "
                        "tokenizer: its own one-scale one, or the multi-scale one quantizing only its last scale (the "
                        "same encoder, decoder and codebook as VAR's: a comparison of the two orders alone)")


args = common.parse_args(__doc__.split("\n")[0], extra_flags)
for name, value in (FAST if args.fast else FULL).items():
    if not hasattr(args, name):
        setattr(args, name, value)
started = time.time()
work_dir = os.path.join(args.out_dir, "07_ablations_fast" if args.fast else "07_ablations")
os.makedirs(work_dir, exist_ok=True)

# ------------------------------------------------------------------------------------------------------------------
common.section("1. Two tokenizers with the same budget: multi-scale for VAR, one-scale for AR")
# ------------------------------------------------------------------------------------------------------------------
# VAR's tokenizer quantizes the residual at K scales (1×1 ... n×n); a raster-scan model needs ONE n×n token map.
# The honest comparison gives the AR model its own tokenizer, trained the same way and as long (train_tokenizer.py
# with --patch-nums n): the same encoder, decoder and codebook size, only the schedule differs. A tokenizer trained
# once with a finished run folder is reused.
import train_tokenizer  # noqa: E402 (the repository root is on the path through `common`)

side = args.image_size // 4  # the tiny tokenizer downsamples 4×
multi_scale = tuple(p for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if p < side) + (side,)


def tokenizer(name: str, patch_nums) -> VQVAE:
    folder = os.path.join(work_dir, f"tokenizer_{name}")
    path = os.path.join(folder, "checkpoint.pt")
    if not os.path.isfile(path):
        print(f"training the {name} tokenizer, scales {patch_nums}: {args.tokenizer_steps} steps of 16 images")
        flags = ["--out-dir", folder, "--device", "cpu", "--steps", str(args.tokenizer_steps), "--image-size",
                 str(args.image_size), "--patch-nums", ",".join(map(str, patch_nums)), "--seed", str(args.seed),
                 "--warmup-steps", str(min(50, max(args.tokenizer_steps // 10, 1))), "--log-every", "100"]
        train_tokenizer.main(flags + (["--data-path", args.data_path] if args.data_path else []) +
                             (["--batch-size", "4"] if args.fast else []))
    else:
        print(f"reusing the {name} tokenizer {path}")
    return load_tokenizer(path)


tokenizer_started = time.time()
vae_multi = tokenizer("multi_scale", multi_scale)
vae_one = tokenizer("one_scale", (side,))
tokenizer_seconds = time.time() - tokenizer_started

# The other way to get a one-scale tokenizer: take the multi-scale one and quantize only at the last scale. Its
# codebook was trained on residuals that shrink scale by scale, so it should fit a whole latent less well; compare.
derived_config = VQVAEConfig(**{**asdict(vae_multi.config), "patch_nums": (side,)})
vae_derived = VQVAE(derived_config)
weights = dict(vae_multi.state_dict())
weights["quantize.ema_vocab_hit_SV"] = vae_derived.quantize.ema_vocab_hit_SV  # usage statistics: one row per scale
strict_load(vae_derived, weights, "derived one-scale VQVAE")
vae_derived.eval()
vae_one_trained = vae_one
if args.ar_tokenizer == "derived":
    vae_one = vae_derived  # the AR model's tokenizer from here on
suffix = "" if args.ar_tokenizer == "trained" else "_derived_ar_tokenizer"  # output names of this variant

held_out_set = build_dataset(args.data_path, args.image_size, train=False, num_images=2 * args.num_real,
                             seed=args.seed)
real = torch.stack([held_out_set[i][0] for i in range(min(2 * args.num_real, len(held_out_set)))])
real_labels = torch.tensor([held_out_set[i][1] for i in range(len(real))])
with torch.no_grad():
    reconstructions = {name: vae.idx_to_img(vae.img_to_idx(real[:256]))
                       for name, vae in [("multi-scale (VAR)", vae_multi), ("one-scale, trained", vae_one_trained),
                                         ("one-scale, derived from multi-scale", vae_derived)]}
tokenizer_psnr = {name: psnr(images, real[:len(images)])[1] for name, images in reconstructions.items()}
for name, value in tokenizer_psnr.items():
    print(f"held-out PSNR, {name:<38} {value:6.2f} dB")

# ------------------------------------------------------------------------------------------------------------------
common.section("2. The same tokens for every model, computed once")
# ------------------------------------------------------------------------------------------------------------------
train_set = build_dataset(args.data_path, args.image_size, train=True, num_images=max(args.train_images, 20_000),
                          seed=args.seed)
num_classes, class_names = train_set.num_classes, train_set.class_names
count = min(args.train_images, len(train_set))


@torch.no_grad()
def tokenize():
    """labels (N,), VAR teacher-forcing inputs (N, L-1, Cvae) and targets (N, L), AR tokens (N, T)."""
    labels, var_inputs, var_targets, ar_tokens = [], [], [], []
    for start in tqdm(range(0, count, 256), desc="tokenize", dynamic_ncols=True):
        items = [train_set[i] for i in range(start, min(start + 256, count))]
        images = torch.stack([image for image, _ in items])  # (b, 3, H, W)
        labels.append(torch.tensor([label for _, label in items]))
        idx = vae_multi.img_to_idx(images)  # K × (b, pn²)
        var_inputs.append(vae_multi.idx_to_var_input(idx))  # (b, L-1, Cvae)
        var_targets.append(torch.cat(idx, dim=1))  # (b, L)
        ar_tokens.append(vae_one.img_to_idx(images)[0])  # (b, T): one scale, row-major = raster order
    return torch.cat(labels), torch.cat(var_inputs), torch.cat(var_targets), torch.cat(ar_tokens)


labels_N, var_inputs_N, var_targets_N, ar_tokens_N = tokenize()
print(f"{count} images -> {var_targets_N.shape[1]} VAR tokens ({len(multi_scale)} scales) and "
      f"{ar_tokens_N.shape[1]} AR tokens ({side}×{side}) each")

# ------------------------------------------------------------------------------------------------------------------
common.section("3. The five models, and the same training compute for each")
# ------------------------------------------------------------------------------------------------------------------
# The same knobs (depth, width, heads, FFN ratio) for AR and VAR. Switching AdaLN off removes the 6·C² per block
# that turn the class into scales and shifts, so row 2 has fewer parameters than row 3, as in the paper
# (207M against 310M). Attention normalization adds one temperature per head.
vocab, code_dim = vae_multi.config.vocab_size, vae_multi.config.code_dim
top_k = args.top_k or max(1, round(600 / 4096 * vocab))  # the paper's top-k, as a share of the codebook


def var_config(depth, width, heads, **switches) -> VARConfig:
    return VARConfig(depth=depth, width=width, num_heads=heads, mlp_ratio=2.0, num_classes=num_classes,
                     vocab_size=vocab, code_dim=code_dim, patch_nums=multi_scale, drop_path_rate=0.0,
                     init_adaln_gamma=1e-3, **switches)


small = (args.depth, args.width, args.heads)
configs = {  # model name -> config; rows 3-5 share "adaln"
    "ar": ARConfig(depth=args.depth, width=args.width, num_heads=args.heads, mlp_ratio=2.0, num_classes=num_classes,
                   vocab_size=vocab, grid_size=side),
    "ar_to_var": var_config(*small, adaln=False, attn_l2_norm=False),
    "adaln": var_config(*small, adaln=True, attn_l2_norm=False),
    "attn_norm": var_config(*small),  # the defaults: AdaLN and attention normalization, as the released models
    "big": var_config(args.big_depth, args.big_width, args.big_heads),
}
ROWS = [  # row, description, model, sampling settings
    (1, "AR (raster-scan next-token)", "ar", dict(top_k=0, cfg=0.0)),
    (2, "AR to VAR (no AdaLN)", "ar_to_var", dict(top_k=0, cfg=0.0)),
    (3, "+ AdaLN", "adaln", dict(top_k=0, cfg=0.0)),
    (4, "+ top-k", "adaln", dict(top_k=top_k, cfg=0.0)),
    (5, "+ CFG", "adaln", dict(top_k=top_k, cfg=args.cfg)),
    (6, "+ attention normalization", "attn_norm", dict(top_k=top_k, cfg=args.cfg)),
    (7, "+ scale up", "big", dict(top_k=top_k, cfg=args.cfg)),
]


def build(name):
    torch.manual_seed(args.seed)
    return AR(configs[name]) if name == "ar" else VAR(configs[name])


def batch_of(name, indices):
    """What a model's forward takes, and its targets, for some training images."""
    if name == "ar":
        return (labels_N[indices], ar_tokens_N[indices]), ar_tokens_N[indices]
    return (labels_N[indices], var_inputs_N[indices]), var_targets_N[indices]


def training_step(model, name, indices, drop_mask_B):
    """One teacher-forced forward and backward; returns the loss and the logits."""
    inputs, target = batch_of(name, indices)
    logits = model(*inputs, drop_mask_B)  # (B, T or L, V)
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    loss.backward()
    return loss, logits, target


# Training FLOPs per step, counted on one real step of each model (forward + backward; the optimizer is not counted).
example = torch.arange(args.batch_size)
no_drop = torch.zeros(args.batch_size, dtype=torch.bool)
flops_per_step = {name: count_flops(training_step, build(name), name, example, no_drop) for name in configs}
budget = args.budget_steps * flops_per_step["attn_norm"]
steps = {name: max(1, round(budget / flops)) for name, flops in flops_per_step.items()}
params = {name: sum(p.numel() for p in build(name).parameters()) for name in configs}
print(f"every model trains with {budget:.3g} FLOPs ({args.budget_steps} steps of the row-6 VAR at batch "
      f"{args.batch_size}); top-k of rows 4-7: {top_k} of {vocab} codes")
print(f"{'model':<10} {'parameters':>11} {'FLOPs/step':>11} {'steps':>6}")
for name in configs:
    print(f"{name:<10} {params[name]:>11,} {flops_per_step[name]:>11.3g} {steps[name]:>6}")


def reuse(name, path):
    """A model this tutorial trained before with the same config and steps (to re-run sampling and metrics only)."""
    if not os.path.isfile(path):
        return None
    data = read_file(path)
    if data.get("config") != asdict(build(name).config) or data.get("step") != steps[name]:
        return None
    model = load_ar(data) if name == "ar" else load_var(data)
    print(f"{name}: reusing {path} ({steps[name]} steps, trained in {data.get('train_seconds', float('nan')):.0f} s)")
    return model, dict(steps=steps[name], seconds=data.get("train_seconds", float("nan")),
                       final_loss=data.get("final_loss", float("nan")))


def train(name):
    """AdamW with train_var.py's settings (betas 0.9/0.95, wd 0.05, lin0 schedule, clip 2, label dropout 0.1)."""
    path = os.path.join(work_dir, f"{name}{suffix if name == 'ar' else ''}.pt")
    reused = reuse(name, path)
    if reused is not None:
        return reused
    model = build(name).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(0.05), lr=args.learning_rate, betas=(0.9, 0.95))
    order_generator = torch.Generator().manual_seed(args.seed)  # the same image order for every model
    total = steps[name]
    epochs = math.ceil(total * args.batch_size / count)
    order = torch.cat([torch.randperm(count, generator=order_generator) for _ in range(epochs)])
    run_started, losses = time.time(), []
    bar = tqdm(range(total), desc=f"{name} ({params[name]:,} params)", dynamic_ncols=True)
    for step in bar:
        set_lr_wd(optimizer, *lr_wd_at(step, total, args.learning_rate, warmup_steps=max(total // 50, 1)))
        indices = order[step * args.batch_size:(step + 1) * args.batch_size]
        drop_B = torch.rand(len(indices), generator=step_generator(args.seed, step, "cpu")) < 0.1
        optimizer.zero_grad(set_to_none=True)
        loss, logits, target = training_step(model, name, indices, drop_B)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.time() - run_started
    final = float(np.mean(losses[-max(1, total // 20):]))  # mean of the last 5% of the steps
    if name == "ar":
        save_ar(path, model, total, class_names, train_seconds=seconds, final_loss=final)
    else:
        save_checkpoint(path, "minvar-var", model, model.config, total, class_names, train_seconds=seconds,
                        final_loss=final)
    print(f"{name}: {total} steps in {seconds:.0f} s, final training loss {final:.3f} nats per token -> {path}")
    return model.eval(), dict(steps=total, seconds=seconds, final_loss=final)


models, training = {}, {}
for name in configs:
    models[name], training[name] = train(name)

# ------------------------------------------------------------------------------------------------------------------
common.section("4. Sampling cost: wall time per image at a fixed batch, and counted FLOPs")
# ------------------------------------------------------------------------------------------------------------------
# The AR model needs one transformer call per token (n² = 64 here), with a KV cache; VAR one per scale (6 here).
# Timed is the generation of the tokens (the paper's cost is the transformer's); the tokenizer's decoder, the same
# network for both, is timed once apart. The rows are timed in turns (row 1, 2, ..., 7, then again), so that the
# load of a shared machine falls on all of them alike; the median is kept.
# Row 1 is also timed WITHOUT its KV cache (every step recomputes the whole prefix): that is the model behind the
# paper's O(n⁶) count (§3.1), and the same tokens (tests/test_ar.py).
UNCACHED = ("1, no KV cache", "AR without KV cache", "ar", dict(top_k=0, cfg=0.0, use_cache=False))
TIMED = ROWS + [UNCACHED]


def sample(row_settings, model_name, labels, seed):
    if model_name == "ar":
        return generate_ar(models["ar"], vae_one, labels, seed=seed, **row_settings)
    return generate(models[model_name], vae_multi, labels, seed=seed, **row_settings)




def generate_tokens(settings, model_name, labels):
    """Token generation alone (the transformer and the sampling), without the decoder: what the cost compares."""
    label_B = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(args.seed)
    if model_name == "ar":
        return sample_tokens(models["ar"], label_B, generator=generator, **settings)
    return sample_scales(models[model_name], vae_multi, label_B, generator=generator, **settings)


timing_labels = [i % num_classes for i in range(args.timing_batch)]
times = {row: [] for row, *_ in TIMED}
for repeat in range(args.timing_repeats + 1):  # the first round warms up (allocations, lazy init) and is dropped
    for row, _, model_name, settings in TIMED:
        begin = time.perf_counter()
        generate_tokens(settings, model_name, timing_labels)
        if repeat > 0:
            times[row].append((time.perf_counter() - begin) / args.timing_batch)
seconds_per_image = {row: float(np.median(values)) for row, values in times.items()}
# Counted FLOPs of one image's tokens. The decoder (the same network in both tokenizers) comes on top of every row.
flops_per_image = {row: count_flops(generate_tokens, settings, model_name, [0])
                   for row, _, model_name, settings in TIMED}
f_hat = torch.zeros(args.timing_batch, code_dim, side, side)
with torch.no_grad():
    begin = time.perf_counter()
    vae_multi.fhat_to_img(f_hat)
    decoder_seconds = (time.perf_counter() - begin) / args.timing_batch
decoder_flops = count_flops(vae_multi.fhat_to_img, f_hat[:1])
print(f"the decoder adds {decoder_seconds * 1e3:.2f} ms and {decoder_flops:.3g} FLOPs per image to every row "
      f"(not in the numbers below)")
for row, description, *_ in TIMED:
    spread = f"{min(times[row]) * 1e3:.1f}-{max(times[row]) * 1e3:.1f}"
    print(f"row {row:<14} {description:<30} {seconds_per_image[row] * 1e3:7.2f} ms per image (range {spread}), "
          f"{flops_per_image[row]:.3g} FLOPs per image")

# ------------------------------------------------------------------------------------------------------------------
common.section("5. Quality: the judge, Fréchet distance, precision and recall")
# ------------------------------------------------------------------------------------------------------------------
# As evaluate.py: a small classifier trained on real images scores whether a sample shows its class; its
# penultimate features are the space of the Fréchet distance (lower is better) and of k=3 precision/recall.
judge = train_judge(train_set, steps=args.judge_steps, seed=args.seed)
half = len(real) // 2
features_real_a, features_real_b = judge_predict(judge, real[:half])[1], judge_predict(judge, real[half:])[1]
floor = frechet_distance_from_features(features_real_a, features_real_b)
print(f"judge accuracy on real held-out images {evaluate_accuracy(judge, real[:half], real_labels[:half]):.3f}; "
      f"Fréchet distance real vs real {floor:.2f} (the floor)")
for name, images in reconstructions.items():
    print(f"judge accuracy on {name} reconstructions: "
          f"{evaluate_accuracy(judge, images, real_labels[:len(images)]):.3f}")

sample_labels = [c for c in range(num_classes) for _ in range(args.per_class)]
results, grids = [], []
for row, description, model_name, settings in ROWS:
    images = torch.cat([sample(settings, model_name, sample_labels[i:i + 256], seed=args.seed + i)
                        for i in range(0, len(sample_labels), 256)]) * 2 - 1  # (N, 3, H, W) in [-1, 1]
    probs, features = judge_predict(judge, images)
    precision, recall = precision_recall(features_real_a, features, k=3)
    results.append(dict(
        row=row, description=description, model=model_name, params=params[model_name],
        seconds_per_image=seconds_per_image[row], relative_cost=seconds_per_image[row] / seconds_per_image[1],
        relative_cost_vs_uncached_ar=seconds_per_image[row] / seconds_per_image[UNCACHED[0]],
        relative_flops_vs_uncached_ar=flops_per_image[row] / flops_per_image[UNCACHED[0]],
        flops_per_image=flops_per_image[row], relative_flops=flops_per_image[row] / flops_per_image[1],
        frechet_distance=frechet_distance_from_features(features_real_a, features),
        judge_accuracy=(probs.argmax(-1) == torch.tensor(sample_labels)).float().mean().item(),
        precision=precision, recall=recall, top_k=settings["top_k"], cfg=settings["cfg"],
        adaln=model_name not in ("ar", "ar_to_var"), attention_normalization=model_name in ("attn_norm", "big"),
        train_steps=training[model_name]["steps"], train_seconds=training[model_name]["seconds"],
        final_training_loss=training[model_name]["final_loss"],
        paper_params=PAPER[row][0], paper_relative_cost=PAPER[row][1], paper_fid=PAPER[row][2]))
    grids.append(images[[c * args.per_class for c in range(min(num_classes, 16))]])  # one sample per class
for result in results:
    result["delta_frechet_to_row_1"] = result["frechet_distance"] - results[0]["frechet_distance"]
    result["delta_judge_accuracy_to_row_1"] = result["judge_accuracy"] - results[0]["judge_accuracy"]

# ------------------------------------------------------------------------------------------------------------------
common.section("6. The table, beside the paper's")
# ------------------------------------------------------------------------------------------------------------------
# cost: wall time relative to row 1 (AR with its KV cache); no-KV: relative to AR without the cache; FLOPs: counted
# transformer FLOPs relative to row 1; FD: Fréchet distance to real images in judge features (lower is better);
# ΔFD: minus row 1's; P / R: k=3 precision / recall; judge: share of samples recognised as their class.
print(f"{'row':<4}{'description':<30}{'params':>10}{'ms/img':>8}{'cost':>7}{'no-KV':>7}{'FLOPs':>7}{'FD':>8}{'ΔFD':>8}"
      f"{'P':>6}{'R':>6}{'judge':>7} | {'paper':>6}{'cost':>7}{'FID':>7}")
for r in results:
    print(f"{r['row']:<4}{r['description']:<30}{r['params']:>10,}{r['seconds_per_image'] * 1e3:>8.2f}"
          f"{r['relative_cost']:>7.3f}{r['relative_cost_vs_uncached_ar']:>7.3f}{r['relative_flops']:>7.3f}"
          f"{r['frechet_distance']:>8.1f}"
          f"{r['delta_frechet_to_row_1']:>+8.1f}{r['precision']:>6.2f}{r['recall']:>6.2f}{r['judge_accuracy']:>7.3f}"
          f" | {r['paper_params']:>6}{r['paper_relative_cost']:>7.3f}{r['paper_fid']:>7.2f}")
ar_row, var_rows = results[0], results[1:]
speedup = ar_row["seconds_per_image"] / results[5]["seconds_per_image"]
print(f"AR-to-VAR sampling speed-up at about equal parameters (row 1 / row 2 time): "
      f"{ar_row['seconds_per_image'] / results[1]['seconds_per_image']:.1f}× with the KV cache, "
      f"{1 / results[1]['relative_cost_vs_uncached_ar']:.1f}× against AR without it "
      f"(FLOPs: {1 / results[1]['relative_flops']:.2f}× and {1 / results[1]['relative_flops_vs_uncached_ar']:.1f}×); "
      f"row 1 / row 6: {speedup:.1f}×")
print(f"VAR (row 2) {'beats' if results[1]['frechet_distance'] < ar_row['frechet_distance'] else 'does NOT beat'} "
      f"AR (row 1) in Fréchet distance: {results[1]['frechet_distance']:.1f} vs {ar_row['frechet_distance']:.1f}; "
      f"rows 2-7 below row 1: {sum(r['frechet_distance'] < ar_row['frechet_distance'] for r in var_rows)} of 6")

figure, axes = plt.subplots(1, 3, figsize=(17, 4.5))
labels = [f"{r['row']}. {r['description']}" for r in results]
y = np.arange(len(results))
axes[0].barh(y - 0.2, [r["frechet_distance"] for r in results], 0.4, label="measured: Fréchet distance (judge)")
twin = axes[0].twiny()
twin.barh(y + 0.2, [r["paper_fid"] for r in results], 0.4, color="tab:orange", label="paper: FID (ImageNet)")
axes[0].set_yticks(y, labels)
axes[0].invert_yaxis()
axes[0].set_xlabel("Fréchet distance, judge features (blue, bottom axis)")
twin.set_xlabel("paper FID (orange, top axis)")
axes[1].barh(y - 0.2, [r["relative_cost"] for r in results], 0.4, label="measured: wall time")
axes[1].barh(y, [r["relative_flops"] for r in results], 0.2, color="tab:gray", label="measured: FLOPs")
axes[1].barh(y + 0.2, [r["paper_relative_cost"] for r in results], 0.4, color="tab:orange", label="paper")
axes[1].set_xscale("log")
axes[1].set_yticks(y, [])
axes[1].invert_yaxis()
axes[1].set_xlabel("sampling cost relative to row 1 (log)")
axes[1].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
axes[2].barh(y, [r["judge_accuracy"] for r in results], 0.5)
axes[2].set_yticks(y, [])
axes[2].invert_yaxis()
axes[2].set_xlim(0, 1)
axes[2].set_xlabel("share of samples the judge assigns to their class")
figure.suptitle(f"VAR's ablation table on {args.image_size}px {'shapes' if not args.data_path else 'images'}: "
                f"{count} training images, equal training FLOPs per model", y=1.08)
common.save_figure(figure, args.out_dir, f"07_ablations{suffix}.png")
save_image_grid(torch.cat(grids), os.path.join(args.out_dir, f"07_ablation_samples{suffix}.png"), nrow=len(grids[0]))
print(f"[figure] {os.path.join(args.out_dir, f'07_ablation_samples{suffix}.png')} (one line per row, one sample per "
      f"class)")

report = dict(rows=results, real_vs_real_frechet_distance=floor, tokenizer_psnr=tokenizer_psnr,
              tokenizer_seconds=tokenizer_seconds, training_flops_per_model=budget, top_k=top_k,
              decoder_flops_per_image=decoder_flops, decoder_seconds_per_image=decoder_seconds,
              ar_without_kv_cache=dict(seconds_per_image=seconds_per_image[UNCACHED[0]],
                                       flops_per_image=flops_per_image[UNCACHED[0]]),
              elapsed_seconds=time.time() - started, threads=torch.get_num_threads(),
              cpu=platform.processor() or platform.machine(), settings={k: v for k, v in vars(args).items()})
with open(os.path.join(args.out_dir, f"07_ablations{suffix}.json"), "w") as file:
    json.dump(report, file, indent=1)
print(f"[json] {os.path.join(args.out_dir, f'07_ablations{suffix}.json')}; {report['elapsed_seconds']:.0f} s in all")
