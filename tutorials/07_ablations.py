# %% [markdown]
# # Tutorial 7: the paper's ablation table (Table 3) on a CPU, with seeds
#
# Raster-scan AR against VAR, one switch at a time, trained at the paper's protocol (the same number of steps for
# every row) and, as a second question, at equal training FLOPs. This file is a script and a notebook at once: run
# it with `python tutorials/07_ablations.py`, or open it in Jupyter (jupytext), VS Code or PyCharm, where every
# `# %%` line starts a cell.
#
#     python tutorials/07_ablations.py --threads 1   # ~80 min on one thread of a 2-core machine at load 10-17
#                                                    # (docs/results.md); an idle core needs far less
#     python tutorials/07_ablations.py --fast        # seconds: the same pipeline with tiny settings (the tests)
#     python tutorials/07_ablations.py --data-path /data/my_images   # any folder, one sub-folder per class
#     python tutorials/07_ablations.py --ar-tokenizer derived  # AR on VAR's own tokenizer, last scale only
#
# The VAR paper's case for next-scale prediction is one table, its ablation study (Table 3, ImageNet 256×256, FID):
#
#     row  description                 params  model    AdaLN  top-k  CFG  cost   FID
#     1    AR (raster-scan next-token)  227M   AR       no     no     no   1      18.65   (quoted from MaskGIT)
#     2    AR to VAR                    207M   VAR-d16  no     no     no   0.013   5.22
#     3    + AdaLN                      310M   VAR-d16  yes    no     no   0.016   4.95
#     4    + top-k                      310M   VAR-d16  yes    600    no   0.016   4.64
#     5    + CFG                        310M   VAR-d16  yes    600    2.0  0.022   3.60
#     6    + attention normalization    310M   VAR-d16  yes    600    2.0  0.022   3.30
#     7    + scale up                   2.0B   VAR-d30  yes    600    2.0  0.052   1.73
#
# The paper's row 1 is not a model the authors trained: its FID (18.65) is quoted from MaskGIT's raster-scan VQGAN
# baseline. Row 2 replaces that method with VAR "and keeps other settings unchanged": the VAR rows train for
# comparable epochs, so VAR spends about 2.7× the AR's compute per image (680 tokens against 256). Here:
#   1. per seed, two tokenizers with the same training: the multi-scale one VAR needs, and a ONE-scale one (the same
#      VQVAE with patch_nums=(n,)) for the raster-scan AR (the same resolution and codebook size); their codebook use
#      and reconstruction distance;
#   2. the same tokens for every model of a seed, computed once;
#   3. five models: AR (row 1), VAR without AdaLN and attention normalization (row 2: the same plain GPT-2 block,
#      attention temperature 1/√head_dim and every setting of the AR; only the prediction order and the tokenizer
#      differ), VAR with AdaLN (rows 3-5: top-k and CFG are sampling settings of the same weights), the default VAR
#      (row 6) and a bigger VAR (row 7); each model's learning rate chosen by one short sweep;
#   4. training at the paper's protocol (every row the same steps: the main table) and at equal counted training
#      FLOPs (the second table), for every seed; every trained model is cached under a hash of everything that made it;
#   5. per row: final training loss, held-out loss, and the held-out cross-entropy per scale with the true label and
#      with the null label (how much the class tells each scale);
#   6. sampling cost: sequential steps, counted FLOPs and wall time per image (bench/bench_cost.py measures the cost
#      at batch 1 and 16 and at 16×16 token maps);
#   7. quality over 50 samples per class and seed: the judge's share of samples in their class (chance is 1/classes:
#      6.7% for the 15 shapes) and the Fréchet distance in the judge's features, mean ± spread over seeds;
#   8. both tables beside the paper's, which differences are larger than the seed spread, a figure and
#      07_ablations.json.
#
# What a CPU run can and cannot show: 32px images give an 8×8 token map, so the AR takes 64 steps and VAR 6 (at
# 256px: 256 against 10); the models are ~1M parameters trained for minutes. The directions are the claim to test.
#
# Shape legend: B batch, n side of the last token map, T = n² (AR tokens), L = Σ pn² (VAR tokens), K scales,
# Cvae code dim, V codebook size.
#

# %%
import argparse
import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import common  # flags, threads, figures, the cache keys (tutorials/common.py)
import matplotlib.pyplot as plt

from minvar.ar import AR, ARConfig, generate_ar, sample_tokens
from minvar.evaluation.flops import count_flops
from minvar.evaluation.judge import evaluate_accuracy, judge_predict, train_judge
from minvar.evaluation.metrics import codebook_usage, frechet_distance_from_features, precision_recall, psnr
from minvar.io.checkpoint import load_ar, load_tokenizer, load_var, read_file, save_ar, save_checkpoint, strict_load
from minvar.io.data import build_dataset, dataset_fingerprint, save_image_grid
from minvar.sampling import generate, sample_scales
from minvar.training.token_cache import tokenizer_fingerprint
from minvar.training.data_order import step_generator
from minvar.training.schedule import lr_wd_at, set_lr_wd
from minvar.var import VAR, VARConfig
from minvar.vqvae import VQVAE, VQVAEConfig

# Full and fast settings. The full ones took about 80 minutes on one thread of a 2-core Intel Xeon (Emerald Rapids
# class) that other jobs kept at a load average of 10-17 (docs/results.md); --fast runs in seconds.
# steps: every row's training steps (the paper's protocol); the equal-FLOPs table gives every model the counted
# training FLOPs of `steps` steps of the row-6 VAR. sweep_steps: the short runs that choose each model's learning rate.
FULL = dict(seeds=3, tokenizer_steps=300, train_images=4096, held_out_images=512, steps=150, sweep_steps=40,
            batch_size=16, depth=4, width=128, heads=2, big_depth=6, big_width=192, big_heads=3, judge_steps=400,
            per_class=50, num_real=750, timing_batch=16, timing_repeats=3)
FAST = dict(seeds=2, tokenizer_steps=3, train_images=64, held_out_images=32, steps=6, sweep_steps=2, batch_size=4,
            depth=1, width=32, heads=1, big_depth=2, big_width=48, big_heads=1, judge_steps=3, per_class=2,
            num_real=32, timing_batch=2, timing_repeats=1)
# The paper's rows (ImageNet 256×256): params, relative cost and FID, for the printed table and the figure.
PAPER = {1: ("227M", 1.0, 18.65), 2: ("207M", 0.013, 5.22), 3: ("310M", 0.016, 4.95), 4: ("310M", 0.016, 4.64),
         5: ("310M", 0.022, 3.60), 6: ("310M", 0.022, 3.30), 7: ("2.0B", 0.052, 1.73)}
PROTOCOLS = ("equal_steps", "equal_flops")  # the paper's protocol first: the main table


def extra_flags(parser):
    unset = argparse.SUPPRESS  # flags left out keep the mode's value (FULL or FAST above)
    for name, help_text in [("seeds", "seeds per row (tokenizers, models, data order and samples; --seed is the "
                                      "first)"),
                            ("tokenizer_steps", "training steps of each tokenizer"),
                            ("train_images", "images tokenized once per seed and shared by every model"),
                            ("held_out_images", "held-out images of the loss and per-scale cross-entropy"),
                            ("steps", "training steps of every row (equal-steps table); the equal-FLOPs table gives "
                                      "every model the FLOPs of this many row-6 steps"),
                            ("sweep_steps", "steps of each learning-rate sweep run"),
                            ("batch_size", "images per training step"),
                            ("depth", "depth of the rows 1-6 models"), ("width", "their width"),
                            ("heads", "their attention heads"), ("big_depth", "depth of the row-7 VAR"),
                            ("big_width", "its width"), ("big_heads", "its heads"),
                            ("judge_steps", "training steps of the judge classifier"),
                            ("per_class", "samples per class, row and seed"),
                            ("num_real", "real images per reference set"),
                            ("timing_batch", "batch of the wall-time measurement"),
                            ("timing_repeats", "timed generations per row (interleaved; the median is kept)")]:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=unset,
                            help=f"{help_text} (full mode {FULL[name]}, --fast {FAST[name]})")
    parser.add_argument("--data-path", default=None, help="image folder (one sub-folder per class); absent: the "
                        "built-in shapes dataset")
    parser.add_argument("--image-size", type=int, default=32, help="image side (the tiny tokenizer: an n = side/4 "
                        "token map)")
    parser.add_argument("--learning-rates", default="1e-3,3e-3,1e-2", help="the sweep: each model trains "
                        "--sweep-steps steps with each of these peak AdamW rates (first seed) and keeps the one with "
                        "the lowest held-out loss; one value skips the sweep")
    parser.add_argument("--top-k", type=int, default=0, help="top-k of rows 4-7; 0: the paper's 600 of 4096 codes "
                        "scaled to this codebook")
    parser.add_argument("--cfg", type=float, default=2.0, help="guidance of rows 5-7 (the paper's 2.0)")
    parser.add_argument("--ar-tokenizer", choices=["trained", "derived"], default="trained", help="the AR model's "
                        "tokenizer: its own one-scale one, or the multi-scale one quantizing only its last scale (the "
                        "same encoder, decoder and codebook as VAR's: a comparison of the two orders alone)")


args = common.parse_args("Tutorial 7: the paper's ablation table on a CPU, with seeds", extra_flags)
for name, value in (FAST if args.fast else FULL).items():
    if not hasattr(args, name):
        setattr(args, name, value)
started = time.time()
work_dir = os.path.join(args.out_dir, "07_ablations_fast" if args.fast else "07_ablations")
cache_dir = os.path.join(work_dir, "cache")  # every tokenizer and model, named by a hash of its settings
seeds = [args.seed + i for i in range(args.seeds)]
learning_rates = [float(value) for value in args.learning_rates.split(",")]
suffix = "" if args.ar_tokenizer == "trained" else "_derived_ar_tokenizer"  # output names of this variant

# %% [markdown]
# ## 1. Two tokenizers per seed: multi-scale for VAR, one-scale for AR
#
# VAR's tokenizer quantizes the residual at K scales (1×1 ... n×n); a raster-scan model needs ONE n×n token map.
# The honest comparison gives the AR model its own tokenizer, trained the same way and as long (train_tokenizer.py
# with `--patch-nums n`): the same encoder, decoder and codebook size, only the schedule differs. Each seed trains
# its own pair (the spread over seeds includes the tokenizers'); the rows of one seed share them. A tokenizer is
# reused only if a finished run with exactly the same flags (seed, steps, schedule, data) is in the cache.
#
# Two numbers say how good a tokenizer is: how much of its codebook it uses on held-out images (usage: the share of
# the V codes that occur; perplexity: the effective number of codes), and how far its reconstructions are from the
# images (PSNR, and the Fréchet distance in the judge's features, section 7).

# %%
common.section("1. Two tokenizers per seed: multi-scale for VAR, one-scale for AR")
import train_tokenizer  # noqa: E402 (the repository root is on the path through `common`)

side = args.image_size // 4  # the tiny tokenizer downsamples 4×
multi_scale = tuple(p for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if p < side) + (side,)
train_set = build_dataset(args.data_path, args.image_size, train=True, num_images=max(args.train_images, 20_000),
                          seed=args.seed)
held_out_set = build_dataset(args.data_path, args.image_size, train=False,
                             num_images=max(2 * args.num_real, args.held_out_images), seed=args.seed)
data_fingerprint = dict(train=dataset_fingerprint(train_set), held_out=dataset_fingerprint(held_out_set))
num_classes, class_names = train_set.num_classes, train_set.class_names
count = min(args.train_images, len(train_set))


def tokenizer(name: str, patch_nums, seed: int) -> VQVAE:
    """The tokenizer `name` of one seed: trained with train_tokenizer.py, or reused from the cache."""
    flags = ["--device", "cpu", "--steps", str(args.tokenizer_steps), "--image-size", str(args.image_size),
             "--patch-nums", ",".join(map(str, patch_nums)), "--seed", str(seed),
             "--warmup-steps", str(min(50, max(args.tokenizer_steps // 10, 1))), "--log-every", "100"]
    flags += (["--data-path", args.data_path] if args.data_path else []) + (["--batch-size", "4"] if args.fast else [])
    settings = dict(kind="tokenizer", name=name, flags=flags, data=data_fingerprint["train"])
    path, reusable = common.cached(cache_dir, settings)
    if reusable:
        print(f"seed {seed}: reusing the {name} tokenizer {path}")
    else:
        print(f"seed {seed}: training the {name} tokenizer, scales {patch_nums}: {args.tokenizer_steps} steps")
        run_folder = os.path.splitext(path)[0] + "_run"
        shutil.rmtree(run_folder, ignore_errors=True)  # a killed run's log would mix into the new one
        train_tokenizer.main(["--out-dir", run_folder] + flags)
        shutil.copyfile(os.path.join(run_folder, "checkpoint.pt"), path)
        common.mark_cached(path, settings)
    return load_tokenizer(path)


def derived_one_scale(vae_multi: VQVAE) -> VQVAE:
    """The multi-scale tokenizer quantizing only at its last scale (the same weights and codebook)."""
    vae = VQVAE(VQVAEConfig(**{**asdict(vae_multi.config), "patch_nums": (side,)}))
    weights = dict(vae_multi.state_dict())
    weights["quantize.ema_vocab_hit_SV"] = vae.quantize.ema_vocab_hit_SV  # usage statistics: one row per scale
    strict_load(vae, weights, "derived one-scale VQVAE")
    return vae.eval()


real = torch.stack([held_out_set[i][0] for i in range(2 * args.num_real)])  # (2·num_real, 3, H, W) in [-1, 1]
real_labels = torch.tensor([held_out_set[i][1] for i in range(len(real))])
tokenizers, tokenizer_report = {}, {}
tokenizer_started = time.time()
for seed in seeds:
    vae_multi = tokenizer("multi_scale", multi_scale, seed)
    vae_one = tokenizer("one_scale", (side,), seed) if args.ar_tokenizer == "trained" else derived_one_scale(vae_multi)
    tokenizers[seed] = dict(multi=vae_multi, one=vae_one)
    with torch.no_grad():
        for name, vae in (("multi_scale", vae_multi), ("one_scale", vae_one)):
            indices = vae.img_to_idx(real[:args.num_real])  # K × (num_real, pn²): as many as a row's samples
            usage = codebook_usage(indices, vae.config.vocab_size)
            images = vae.idx_to_img(indices)  # (b, 3, H, W) in [-1, 1]
            tokenizer_report.setdefault(name, []).append(dict(
                seed=seed, psnr=psnr(images, real[:len(images)])[1], usage=usage["usage_all_scales"],
                perplexity=usage["perplexity_all_scales"], usage_last_scale=usage["usage"][-1],
                reconstructions=images, fingerprint=tokenizer_fingerprint(vae)))
tokenizer_seconds = time.time() - tokenizer_started
for name, entries in tokenizer_report.items():
    print(f"{name:<12} held-out PSNR {np.mean([e['psnr'] for e in entries]):6.2f} ± "
          f"{np.std([e['psnr'] for e in entries]):.2f} dB; codebook usage "
          f"{np.mean([e['usage'] for e in entries]):.3f} (perplexity {np.mean([e['perplexity'] for e in entries]):.0f}"
          f" of {tokenizers[seeds[0]]['multi'].config.vocab_size} codes), over seeds {seeds}")

# %% [markdown]
# ## 2. The same tokens for every model of a seed, computed once
#
# Teacher forcing needs, per image, the label, VAR's inputs (the cumulative f̂ downsampled to each next scale,
# tutorial 02) and targets (all L token ids), and the AR's n² token ids in raster order. The held-out images get the
# same, for the held-out loss and the per-scale cross-entropy.

# %%
common.section("2. The same tokens for every model of a seed, computed once")


@torch.no_grad()
def tokenize(dataset, number: int, vae_multi: VQVAE, vae_one: VQVAE) -> dict:
    """labels (N,), VAR inputs (N, L-1, Cvae) and targets (N, L), AR tokens (N, T) of the first `number` images."""
    labels, var_inputs, var_targets, ar_tokens = [], [], [], []
    for start in tqdm(range(0, number, 256), desc="tokenize", dynamic_ncols=True, leave=False):
        items = [dataset[i] for i in range(start, min(start + 256, number))]
        images = torch.stack([image for image, _ in items])  # (b, 3, H, W)
        labels.append(torch.tensor([label for _, label in items]))
        idx = vae_multi.img_to_idx(images)  # K × (b, pn²)
        var_inputs.append(vae_multi.idx_to_var_input(idx))  # (b, L-1, Cvae)
        var_targets.append(torch.cat(idx, dim=1))  # (b, L)
        ar_tokens.append(vae_one.img_to_idx(images)[0])  # (b, T): one scale, row-major = raster order
    return dict(labels=torch.cat(labels), var_inputs=torch.cat(var_inputs), var_targets=torch.cat(var_targets),
                ar_tokens=torch.cat(ar_tokens))


tokens = {seed: dict(train=tokenize(train_set, count, pair["multi"], pair["one"]),
                     held_out=tokenize(held_out_set, args.held_out_images, pair["multi"], pair["one"]))
          for seed, pair in tokenizers.items()}
first = tokens[seeds[0]]["train"]
print(f"{count} training and {args.held_out_images} held-out images per seed -> {first['var_targets'].shape[1]} VAR "
      f"tokens ({len(multi_scale)} scales) and {first['ar_tokens'].shape[1]} AR tokens ({side}×{side}) each")

# %% [markdown]
# ## 3. The five models, their learning rates, and the two protocols
#
# The same knobs (depth, width, heads, FFN ratio) for AR and VAR. Rows 1 and 2 are both plain pre-LN GPT-2 blocks
# with attention temperature 1/√head_dim (`VARConfig.attn_scale_mul=1.0`; the official VAR code uses 0.25/√head_dim,
# which stays the default for parity) and the same initialisation, label dropout and optimizer: only the order of
# prediction and the tokenizer differ. Switching AdaLN on adds the 6·C² per block that turn the class into scales
# and shifts (row 2 has fewer parameters than row 3, as in the paper: 207M against 310M); attention normalization
# adds one temperature per head.
#
# **Learning rates.** One rate for every row would favour the row it was tuned for. Each model trains
# `--sweep-steps` steps with every rate of `--learning-rates` (first seed, the same data and schedule as the real
# runs), and keeps the rate with the lowest held-out loss. The sweep is short, so it leans to larger rates.
#
# **Protocols.** *Equal steps* (the paper's, the main table): every row trains `--steps` steps of the same batches,
# so a VAR row spends more compute per image than the AR row (L = 130 tokens against T = 64 here; 680 against 256
# in the paper). *Equal FLOPs* (the second table): every model gets the counted training FLOPs of `--steps` steps of
# the row-6 VAR, so the cheaper AR takes more steps and the big VAR fewer.

# %%
common.section("3. The five models, their learning rates, and the two protocols")
vocab, code_dim = tokenizers[seeds[0]]["multi"].config.vocab_size, tokenizers[seeds[0]]["multi"].config.code_dim
top_k = args.top_k or max(1, round(600 / 4096 * vocab))  # the paper's top-k, as a share of the codebook


def var_config(depth, width, heads, **switches) -> VARConfig:
    return VARConfig(depth=depth, width=width, num_heads=heads, mlp_ratio=2.0, num_classes=num_classes,
                     vocab_size=vocab, code_dim=code_dim, patch_nums=multi_scale, drop_path_rate=0.0,
                     init_adaln_gamma=1e-3, **switches)


small = (args.depth, args.width, args.heads)
configs = {  # model name -> config; rows 3-5 share "adaln"
    "ar": ARConfig(depth=args.depth, width=args.width, num_heads=args.heads, mlp_ratio=2.0, num_classes=num_classes,
                   vocab_size=vocab, grid_size=side),
    "ar_to_var": var_config(*small, adaln=False, attn_l2_norm=False, attn_scale_mul=1.0),  # the AR's 1/√hd
    "adaln": var_config(*small, adaln=True, attn_l2_norm=False),  # the official 0.25/√hd from here on
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
TRAINING = dict(optimizer="AdamW", betas=(0.9, 0.95), weight_decay=0.05, schedule="lin0 (minvar.training.schedule.lr_wd_at)",
                warmup="steps // 50", grad_clip=2.0, label_dropout=0.1, batch_size=args.batch_size)


def build(name: str, seed: int):
    torch.manual_seed(seed)
    return AR(configs[name]) if name == "ar" else VAR(configs[name])


def batch_of(name: str, data: dict, indices):
    """What a model's forward takes, and its targets, for some images of a tokenized set."""
    if name == "ar":
        return (data["labels"][indices], data["ar_tokens"][indices]), data["ar_tokens"][indices]
    return (data["labels"][indices], data["var_inputs"][indices]), data["var_targets"][indices]


def training_step(model, name: str, data: dict, indices, drop_mask_B):
    """One teacher-forced forward and backward; returns the loss."""
    inputs, target = batch_of(name, data, indices)
    logits = model(*inputs, drop_mask_B)  # (B, T or L, V)
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    loss.backward()
    return loss


# Training FLOPs per step, counted on one real step of each model (forward + backward; the optimizer is not counted).
example = torch.arange(args.batch_size)
no_drop = torch.zeros(args.batch_size, dtype=torch.bool)
flops_per_step = {name: count_flops(training_step, build(name, args.seed), name, first, example, no_drop)
                  for name in configs}
budget = args.steps * flops_per_step["attn_norm"]
steps = dict(equal_steps={name: args.steps for name in configs},
             equal_flops={name: max(1, round(budget / flops)) for name, flops in flops_per_step.items()})
params = {name: sum(p.numel() for p in build(name, args.seed).parameters()) for name in configs}
print(f"{'model':<10} {'parameters':>11} {'FLOPs/step':>11} {'equal steps':>12} {'equal FLOPs':>12}")
for name in configs:
    print(f"{name:<10} {params[name]:>11,} {flops_per_step[name]:>11.3g} {steps['equal_steps'][name]:>12} "
          f"{steps['equal_flops'][name]:>12}")


@torch.no_grad()
def held_out_losses(model, name: str, data: dict) -> dict:
    """Held-out cross-entropy (nats/token) with the true label, and per scale with the true and the null label.

    The gap null − true at a scale is how much knowing the class lowers the loss of that scale's tokens: the class
    information the model uses there. The AR has one scale (its n×n map); VAR has K.
    """
    model.eval()
    scales = [(0, model.T)] if name == "ar" else model.begin_ends  # (begin, end) of each scale
    totals = {"true": torch.zeros(len(scales)), "null": torch.zeros(len(scales))}
    for start in range(0, len(data["labels"]), 128):
        indices = torch.arange(start, min(start + 128, len(data["labels"])))
        (labels, inputs), target = batch_of(name, data, indices)
        for which, label_B in (("true", labels), ("null", torch.full_like(labels, num_classes))):
            logits = model(label_B, inputs)  # (b, T or L, V)
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
            totals[which] += torch.stack([loss[:, begin:end].sum() for begin, end in scales])  # (K,)
    sizes = torch.tensor([(end - begin) * len(data["labels"]) for begin, end in scales], dtype=torch.float)
    true, null = (totals["true"] / sizes).tolist(), (totals["null"] / sizes).tolist()
    return dict(loss=float(totals["true"].sum() / sizes.sum()), loss_null=float(totals["null"].sum() / sizes.sum()),
                per_scale_true=true, per_scale_null=null,
                class_information=float((totals["null"] - totals["true"]).sum() / sizes.sum()),
                class_information_per_scale=[n - t for n, t in zip(null, true)])


def train(name: str, seed: int, total: int, learning_rate: float):
    """AdamW with train_var.py's settings (TRAINING above); reused from the cache when everything matches."""
    data = tokens[seed]["train"]
    pair = tokenizers[seed]
    settings = dict(kind="model", model=name, config=asdict(configs[name]), steps=total, learning_rate=learning_rate,
                    seed=seed, training=TRAINING, train_images=count, data=data_fingerprint,
                    tokenizer=tokenizer_fingerprint(pair["one"] if name == "ar" else pair["multi"]))
    path, reusable = common.cached(cache_dir, settings)
    if reusable:
        saved = read_file(path)
        model = load_ar(saved) if name == "ar" else load_var(saved)
        return model, dict(seconds=saved["train_seconds"], final_loss=saved["final_loss"], path=path)
    model = build(name, seed).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(TRAINING["weight_decay"]), lr=learning_rate,
                                  betas=TRAINING["betas"])
    order_generator = torch.Generator().manual_seed(seed)  # the same image order for every model of a seed
    order = torch.cat([torch.randperm(count, generator=order_generator)
                       for _ in range(math.ceil(total * args.batch_size / count))])
    run_started, losses = time.time(), []
    bar = tqdm(range(total), desc=f"seed {seed} {name} lr {learning_rate:g}", dynamic_ncols=True, leave=False)
    for step in bar:
        set_lr_wd(optimizer, *lr_wd_at(step, total, learning_rate, warmup_steps=max(total // 50, 1)))
        indices = order[step * args.batch_size:(step + 1) * args.batch_size]
        drop_B = torch.rand(len(indices), generator=step_generator(seed, step, "cpu")) < TRAINING["label_dropout"]
        optimizer.zero_grad(set_to_none=True)
        loss = training_step(model, name, data, indices, drop_B)
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAINING["grad_clip"])
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.time() - run_started
    final = float(np.mean(losses[-max(1, total // 20):]))  # mean of the last 5% of the steps
    extra = dict(train_seconds=seconds, final_loss=final, settings=json.dumps(settings, default=str))
    if name == "ar":
        save_ar(path, model, total, class_names, **extra)
    else:
        save_checkpoint(path, "minvar-var", model, model.config, total, class_names, **extra)
    common.mark_cached(path, settings)
    return model.eval(), dict(seconds=seconds, final_loss=final, path=path)


sweep = {}
if len(learning_rates) > 1:
    for name in configs:
        results_by_rate = {rate: held_out_losses(train(name, seeds[0], args.sweep_steps, rate)[0], name,
                                                 tokens[seeds[0]]["held_out"])["loss"] for rate in learning_rates}
        sweep[name] = dict(losses=results_by_rate, chosen=min(results_by_rate, key=results_by_rate.get))
        print(f"{name:<10} held-out loss after {args.sweep_steps} steps: "
              + ", ".join(f"lr {rate:g}: {loss:.3f}" for rate, loss in results_by_rate.items())
              + f"  -> {sweep[name]['chosen']:g}")
learning_rate = {name: sweep[name]["chosen"] if sweep else learning_rates[0] for name in configs}

# %% [markdown]
# ## 4. Train every model, every seed, both protocols
#
# Row 6's model trains the same steps in both protocols (it defines the FLOPs budget), so the cache trains it once.

# %%
common.section("4. Train every model, every seed, both protocols")
models, training = {}, {}
jobs = [(protocol, name, seed) for seed in seeds for protocol in PROTOCOLS for name in configs]
for protocol, name, seed in tqdm(jobs, desc="models", dynamic_ncols=True):
    models[protocol, name, seed], training[protocol, name, seed] = train(
        name, seed, steps[protocol][name], learning_rate[name])
    summary = held_out_losses(models[protocol, name, seed], name, tokens[seed]["held_out"])
    training[protocol, name, seed].update(summary)
    tqdm.write(f"{protocol:<12} seed {seed} {name:<10} {steps[protocol][name]:>5} steps: training loss "
               f"{training[protocol, name, seed]['final_loss']:.3f}, held-out {summary['loss']:.3f}, class information "
               f"{summary['class_information']:.4f} nats/token")

# %% [markdown]
# ## 5. How much each model uses the class, scale by scale
#
# The held-out cross-entropy of every scale with the true label against the null label (the unconditional model
# that label dropout trained). Without AdaLN the class reaches the tokens only through the start token; with AdaLN it
# scales and shifts every block and the head.

# %%
common.section("5. How much each model uses the class, scale by scale (equal steps, mean over seeds)")
print(f"{'model':<10} " + " ".join(f"{f'{pn}×{pn}':>8}" for pn in multi_scale) + "   (null − true, nats/token)")
for name in configs:
    per_scale = np.mean([training["equal_steps", name, seed]["class_information_per_scale"] for seed in seeds], 0)
    cells = [f"{value:>8.4f}" for value in per_scale]
    if name == "ar":
        cells = [f"{'':>8}"] * (len(multi_scale) - 1) + cells  # the AR's one map is the last scale's size
    print(f"{name:<10} " + " ".join(cells))

# %% [markdown]
# ## 6. Sampling cost: sequential steps, counted FLOPs and wall time per image
#
# The AR model needs one transformer call per token (n² = 64 here), with a KV cache; VAR one per scale (6 here).
# Timed is the generation of the tokens (the paper's cost is the transformer's); the decoder, the same network for
# both, is left out. The rows are timed in turns (row 1, 2, ..., 7, then again) so that the load of a shared machine
# falls on all alike; the median is kept. Row 1 is also timed WITHOUT its KV cache (every step recomputes the whole
# prefix): the model behind the paper's O(n⁶) count (§3.1). Cost does not depend on training: the first seed's
# equal-steps models are timed. bench/bench_cost.py makes the full cost table (batch 1 and 16, 8×8 and 16×16).

# %%
common.section("6. Sampling cost: sequential steps, counted FLOPs and wall time per image")
UNCACHED = ("1, no KV cache", "AR without KV cache", "ar", dict(top_k=0, cfg=0.0, use_cache=False))
TIMED = ROWS + [UNCACHED]


def generate_tokens(settings, model_name, labels, seed=args.seed):
    """Token generation alone (the transformer and the sampling), without the decoder: what the cost compares."""
    model = models["equal_steps", model_name, seeds[0]]
    label_B = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    if model_name == "ar":
        return sample_tokens(model, label_B, generator=generator, **settings)
    return sample_scales(model, tokenizers[seeds[0]]["multi"], label_B, generator=generator, **settings)


timing_labels = [i % num_classes for i in range(args.timing_batch)]
times = {row: [] for row, *_ in TIMED}
for repeat in range(args.timing_repeats + 1):  # the first round warms up (allocations, lazy init) and is dropped
    for row, _, model_name, settings in TIMED:
        begin = time.perf_counter()
        generate_tokens(settings, model_name, timing_labels)
        if repeat > 0:
            times[row].append((time.perf_counter() - begin) / args.timing_batch)
seconds_per_image = {row: float(np.median(values)) for row, values in times.items()}
flops_per_image = {row: count_flops(generate_tokens, settings, model_name, [0]) for row, _, model_name, settings in TIMED}
sequential_steps = {row: side * side if model_name == "ar" else len(multi_scale) for row, _, model_name, _ in TIMED}
for row, description, *_ in TIMED:
    print(f"row {row:<14} {description:<30} {sequential_steps[row]:>4} steps, {seconds_per_image[row] * 1e3:7.2f} ms "
          f"per image at batch {args.timing_batch}, {flops_per_image[row]:.3g} FLOPs per image")

# %% [markdown]
# ## 7. Quality: the judge and the Fréchet distance, 50 samples per class and seed
#
# As evaluate.py: a small classifier trained on real images scores whether a sample shows its class (chance: one
# in the number of classes); its penultimate features are the space of the Fréchet distance (lower is better) and of
# k=3 precision/recall. The judge is the instrument, so one judge (the first seed's) measures every row and seed.
# Every row draws the same number of samples (`--per-class` per class), so the Fréchet distances compare at the same
# N. The tokenizers' reconstructions of the held-out images are measured the same way: no row can be closer to the
# data than its tokenizer lets it. They are reconstructions of the first reference set's images, compared with the
# second set (other images), at the same N as a row's samples.

# %%
common.section("7. Quality: the judge and the Fréchet distance")
judge = train_judge(train_set, steps=args.judge_steps, seed=args.seed)
half = len(real) // 2
features_real_a, features_real_b = judge_predict(judge, real[:half])[1], judge_predict(judge, real[half:])[1]
floor = frechet_distance_from_features(features_real_a, features_real_b)
chance = 1 / num_classes
print(f"judge accuracy on real held-out images {evaluate_accuracy(judge, real[:half], real_labels[:half]):.3f} "
      f"(chance {chance:.3f} with {num_classes} classes); Fréchet distance real vs real {floor:.2f} (the floor, "
      f"{half} against {half} images)")
for name, entries in tokenizer_report.items():
    for entry in entries:
        reconstructions = entry.pop("reconstructions")
        entry["frechet_distance"] = frechet_distance_from_features(features_real_b,
                                                                   judge_predict(judge, reconstructions)[1])
        entry["judge_accuracy"] = evaluate_accuracy(judge, reconstructions, real_labels[:len(reconstructions)])
    print(f"{name:<12} reconstructions: Fréchet distance {np.mean([e['frechet_distance'] for e in entries]):.2f} ± "
          f"{np.std([e['frechet_distance'] for e in entries]):.2f}, judged right "
          f"{np.mean([e['judge_accuracy'] for e in entries]):.3f}")


def sample(row_settings, model, model_name, seed, labels, sample_seed):
    if model_name == "ar":
        return generate_ar(model, tokenizers[seed]["one"], labels, seed=sample_seed, **row_settings)
    return generate(model, tokenizers[seed]["multi"], labels, seed=sample_seed, **row_settings)


sample_labels = [c for c in range(num_classes) for _ in range(args.per_class)]
measured, grids = {}, []
by_model = {}  # (checkpoint, row, seed) -> measures: a model both protocols share (row 6's) is sampled once
for protocol, seed in tqdm([(p, s) for p in PROTOCOLS for s in seeds], desc="sampling", dynamic_ncols=True):
    for row, description, model_name, settings in ROWS:
        key = (training[protocol, model_name, seed]["path"], row, seed)
        if key not in by_model:
            model = models[protocol, model_name, seed]
            images = torch.cat([sample(settings, model, model_name, seed, sample_labels[i:i + 256], seed * 1000 + i)
                                for i in range(0, len(sample_labels), 256)]) * 2 - 1  # (N, 3, H, W) in [-1, 1]
            probs, features = judge_predict(judge, images)
            precision, recall = precision_recall(features_real_a, features, k=3)
            by_model[key] = dict(
                frechet_distance=frechet_distance_from_features(features_real_a, features),
                judge_accuracy=(probs.argmax(-1) == torch.tensor(sample_labels)).float().mean().item(),
                precision=precision, recall=recall)
            if protocol == "equal_steps" and seed == seeds[0]:
                grids.append(images[[c * args.per_class for c in range(min(num_classes, 16))]])  # one per class
        measured[protocol, row, seed] = by_model[key]

# %% [markdown]
# ## 8. Both tables beside the paper's, and which differences the seeds can tell apart
#
# Every number is the mean over seeds, ± the standard deviation over seeds (numpy's, ddof 0). A difference between
# two rows is called *separated* when it is larger than the sum of their two spreads; anything less is inside the
# noise of this many seeds. Much of that spread is shared by the rows of one seed (they share its tokenizers, whose
# quality varies from seed to seed), so each comparison is also made *paired*: the difference of the two rows within
# each seed, its mean ± std over seeds, its t statistic (mean / (std with ddof 1 / √seeds)), and whether every seed
# agrees on its sign.

# %%
common.section("8. Both tables beside the paper's")


def mean_std(values):
    return float(np.mean(values)), float(np.std(values))


rows = []
for protocol in PROTOCOLS:
    for row, description, model_name, settings in ROWS:
        per_seed = [measured[protocol, row, seed] for seed in seeds]
        trained = [training[protocol, model_name, seed] for seed in seeds]
        fd_mean, fd_std = mean_std([m["frechet_distance"] for m in per_seed])
        judge_mean, judge_std = mean_std([m["judge_accuracy"] for m in per_seed])
        rows.append(dict(
            row=row, protocol=protocol, description=description, model=model_name, params=params[model_name],
            steps=steps[protocol][model_name], seeds=len(seeds), seed_list=seeds,
            learning_rate=learning_rate[model_name],
            training_flops=steps[protocol][model_name] * flops_per_step[model_name],
            epochs=steps[protocol][model_name] * args.batch_size / count,
            fd_mean=fd_mean, fd_std=fd_std, judge_mean=judge_mean, judge_std=judge_std,
            fd_per_seed=[m["frechet_distance"] for m in per_seed],
            judge_per_seed=[m["judge_accuracy"] for m in per_seed],
            precision_mean=float(np.mean([m["precision"] for m in per_seed])),
            recall_mean=float(np.mean([m["recall"] for m in per_seed])),
            final_training_loss_mean=float(np.mean([t["final_loss"] for t in trained])),
            held_out_loss_mean=float(np.mean([t["loss"] for t in trained])),
            held_out_loss_std=float(np.std([t["loss"] for t in trained])),
            held_out_loss_null_mean=float(np.mean([t["loss_null"] for t in trained])),
            held_out_loss_per_scale_true=np.mean([t["per_scale_true"] for t in trained], 0).tolist(),
            held_out_loss_per_scale_null=np.mean([t["per_scale_null"] for t in trained], 0).tolist(),
            class_information_mean=float(np.mean([t["class_information"] for t in trained])),
            class_information_std=float(np.std([t["class_information"] for t in trained])),
            class_information_per_scale=np.mean([t["class_information_per_scale"] for t in trained], 0).tolist(),
            train_seconds_mean=float(np.mean([t["seconds"] for t in trained])),
            sequential_steps=sequential_steps[row], seconds_per_image=seconds_per_image[row],
            relative_cost=seconds_per_image[row] / seconds_per_image[1],
            relative_cost_vs_uncached_ar=seconds_per_image[row] / seconds_per_image[UNCACHED[0]],
            flops_per_image=flops_per_image[row], relative_flops=flops_per_image[row] / flops_per_image[1],
            top_k=settings["top_k"], cfg=settings["cfg"], adaln=model_name not in ("ar", "ar_to_var"),
            attention_normalization=model_name in ("attn_norm", "big"),
            paper_params=PAPER[row][0], paper_relative_cost=PAPER[row][1], paper_fid=PAPER[row][2],
            paper_note="quoted from MaskGIT" if row == 1 else ""))
for r in rows:  # each row against the row before it and against row 1, in the same protocol
    table = [other for other in rows if other["protocol"] == r["protocol"]]
    for label, other in (("previous", table[r["row"] - 2] if r["row"] > 1 else None), ("row_1", table[0])):
        if other is None or other is r:
            continue
        r[f"fd_delta_to_{label}"] = r["fd_mean"] - other["fd_mean"]
        r[f"fd_separated_from_{label}"] = bool(abs(r["fd_mean"] - other["fd_mean"]) > r["fd_std"] + other["fd_std"])
        r[f"judge_separated_from_{label}"] = bool(abs(r["judge_mean"] - other["judge_mean"]) >
                                                  r["judge_std"] + other["judge_std"])
        for metric in ("fd", "judge"):  # the same comparison within each seed
            paired = np.array(r[f"{metric}_per_seed"]) - np.array(other[f"{metric}_per_seed"])  # (seeds,)
            spread = paired.std(ddof=1) if len(paired) > 1 else float("nan")
            r[f"{metric}_paired_delta_to_{label}"] = dict(
                mean=float(paired.mean()), std=float(paired.std()), same_sign=bool(np.all(np.sign(paired) ==
                                                                                          np.sign(paired[0]))),
                t=float(paired.mean() / (spread / math.sqrt(len(paired)))) if spread > 0 else float("nan"))


def print_table(protocol: str, title: str) -> None:
    print(f"\n{title}")
    print(f"{'row':<4}{'description':<29}{'params':>10}{'steps':>6}{'lr':>7}{'train':>7}{'held':>7}{'class':>8}"
          f"{'FD':>15}{'judge':>14}{'cost':>7}{'FLOPs':>7} | {'paper':>6}{'cost':>7}{'FID':>7}")
    for r in [r for r in rows if r["protocol"] == protocol]:
        mark = " *" if r.get("fd_separated_from_previous") else "  "
        print(f"{r['row']:<4}{r['description']:<29}{r['params']:>10,}{r['steps']:>6}{r['learning_rate']:>7.0e}"
              f"{r['final_training_loss_mean']:>7.3f}{r['held_out_loss_mean']:>7.3f}{r['class_information_mean']:>8.4f}"
              f"{r['fd_mean']:>9.1f} ±{r['fd_std']:>4.1f}{mark}{r['judge_mean']:>7.3f} ±{r['judge_std']:.3f}"
              f"{r['relative_cost']:>7.3f}{r['relative_flops']:>7.3f} | {r['paper_params']:>6}"
              f"{r['paper_relative_cost']:>7.3f}{r['paper_fid']:>7.2f}{' (MaskGIT)' if r['row'] == 1 else ''}")


print(f"{len(seeds)} seeds {seeds}, {len(sample_labels)} samples per row and seed; train / held: training and "
      f"held-out loss (nats/token); class: held-out loss with the null label minus with the true one; FD: Fréchet "
      f"distance in judge features (floor {floor:.1f}); judge: share judged in their class (chance {chance:.3f}); "
      f"cost: wall time per image relative to row 1; * : FD differs from the row above by more than both spreads")
print_table("equal_steps", "THE PAPER'S PROTOCOL: every row trains the same steps")
print_table("equal_flops", "SECOND QUESTION: every model gets the same counted training FLOPs")
for protocol in PROTOCOLS:
    table = [r for r in rows if r["protocol"] == protocol]
    separated = [f"{r['row']} vs {r['row'] - 1} ({r['fd_delta_to_previous']:+.1f})" for r in table[1:]
                 if r["fd_separated_from_previous"]]
    print(f"{protocol}: Fréchet-distance steps larger than the seed spread: {', '.join(separated) or 'none'}; "
          f"rows with a lower FD than row 1 beyond the spread: "
          f"{[r['row'] for r in table[1:] if r['fd_separated_from_row_1'] and r['fd_delta_to_row_1'] < 0] or 'none'}")
    for r in table[1:]:
        fd, judged = r["fd_paired_delta_to_previous"], r["judge_paired_delta_to_previous"]
        print(f"  row {r['row']} − row {r['row'] - 1}, paired within seeds: FD {fd['mean']:+.1f} ± {fd['std']:.1f} "
              f"(t {fd['t']:+.1f}{', every seed agrees' if fd['same_sign'] else ''}), judged right "
              f"{judged['mean']:+.3f} ± {judged['std']:.3f} (t {judged['t']:+.1f})")
print(f"sequential steps: AR {sequential_steps[1]}, VAR {sequential_steps[2]}; AR-to-VAR wall time (row 2 / row 1) "
      f"{seconds_per_image[2] / seconds_per_image[1]:.3f} with the AR's KV cache, "
      f"{seconds_per_image[2] / seconds_per_image[UNCACHED[0]]:.3f} without it (paper: 0.013, against an AR without "
      f"a cache at 256 steps); FLOPs ratio {flops_per_image[2] / flops_per_image[1]:.2f}")

figure, axes = plt.subplots(1, 3, figsize=(18, 4.8))
labels = [f"{row}. {description}" for row, description, *_ in ROWS]
y = np.arange(len(ROWS))
for offset, protocol, colour in ((-0.2, "equal_steps", "tab:blue"), (0.2, "equal_flops", "tab:gray")):
    table = [r for r in rows if r["protocol"] == protocol]
    axes[0].barh(y + offset, [r["fd_mean"] for r in table], 0.4, xerr=[r["fd_std"] for r in table], color=colour,
                 label=protocol.replace("_", " "))
    axes[1].barh(y + offset, [r["judge_mean"] for r in table], 0.4, xerr=[r["judge_std"] for r in table],
                 color=colour)
axes[0].axvline(floor, color="black", ls=":", label="real vs real (floor)")
axes[0].set_xlabel(f"Fréchet distance, judge features (mean ± std over {len(seeds)} seeds)")
axes[0].legend(fontsize=8)
axes[1].axvline(chance, color="black", ls=":", label=f"chance (1/{num_classes})")
axes[1].set_xlim(0, 1)
axes[1].set_xlabel("share of samples judged in their class")
axes[1].legend(fontsize=8)
for axis in axes[:2]:
    axis.set_yticks(y, labels if axis is axes[0] else [])
    axis.invert_yaxis()
for name in configs:
    info = rows[[r["model"] for r in rows].index(name)]["class_information_per_scale"]
    axes[2].plot(multi_scale[-len(info):], info, "o-", label=name)
axes[2].set_xlabel("token-map side of the scale")
axes[2].set_ylabel("held-out loss, null − true label (nats/token)")
axes[2].set_title("how much each model uses the class (equal steps)", fontsize=9)
axes[2].legend(fontsize=8)
figure.suptitle(f"VAR's ablation table on {args.image_size}px {'shapes' if not args.data_path else 'images'}: "
                f"{count} training images, {len(seeds)} seeds", y=1.02)
common.save_figure(figure, args.out_dir, f"07_ablations{suffix}.png")
save_image_grid(torch.cat(grids), os.path.join(args.out_dir, f"07_ablation_samples{suffix}.png"), nrow=len(grids[0]))
print(f"[figure] {os.path.join(args.out_dir, f'07_ablation_samples{suffix}.png')} (one line per row, one sample per "
      f"class; first seed, equal steps)")

report = dict(rows=rows, protocols=list(PROTOCOLS), seeds=seeds, chance=chance, num_classes=num_classes,
              real_vs_real_frechet_distance=floor, tokenizers=tokenizer_report, tokenizer_seconds=tokenizer_seconds,
              learning_rate_sweep={name: dict(losses={f"{k:g}": v for k, v in entry["losses"].items()},
                                              chosen=entry["chosen"]) for name, entry in sweep.items()},
              learning_rates=learning_rate, flops_per_training_step=flops_per_step,
              configs={name: asdict(config) for name, config in configs.items()},
              equal_flops_budget=budget, top_k=top_k, training=TRAINING, sample_count=len(sample_labels),
              per_seed={f"{protocol}/{row}/{seed}": value for (protocol, row, seed), value in measured.items()},
              ar_without_kv_cache=dict(seconds_per_image=seconds_per_image[UNCACHED[0]],
                                       flops_per_image=flops_per_image[UNCACHED[0]]),
              elapsed_seconds=time.time() - started, threads=torch.get_num_threads(),
              cpu=platform.processor() or platform.machine(), settings=vars(args))
with open(os.path.join(args.out_dir, f"07_ablations{suffix}.json"), "w") as file:
    json.dump(report, file, indent=1, default=str)
print(f"[json] {os.path.join(args.out_dir, f'07_ablations{suffix}.json')}; {report['elapsed_seconds']:.0f} s in all")
