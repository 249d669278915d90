"""Benchmark train_var.py's step with and without the token cache (minvar/training/token_cache.py).

What is timed: the whole training step of the quickstart as train_var.py runs it, data included.
    on the fly  read B images (built-in shapes drawn with PIL, or --data-path files: decode, resize, random crop),
                encode them with the tokenizer (Algorithm 1),
                build the teacher-forcing input, forward + backward + AdamW step of the VAR
    cache       read B items of the token cache (uint16 → int64), split them into scales, build the
                teacher-forcing input, the same VAR step
The two variants are interleaved (on the fly, cache, cache, on the fly, ...), `--repeats` blocks of `--steps`
steps each, so that a shared machine's changing load hits both alike; the table gives the median and the range of
steps/s over the blocks. `--clock process` counts this process's CPU time instead of the wall clock: with one
thread on a machine shared with other jobs it leaves out the time spent waiting for a core. The one-time cost of building the cache is timed too (images encoded per second).
Weights are random (the tiny presets): the cost of the arithmetic does not depend on them.

    python bench/bench_token_cache.py --threads 1          # the quickstart's shapes: batch 16, tiny VAR and VQVAE
    python bench/bench_token_cache.py --data-path /tmp/digits --threads 1   # an image folder (32 px)
    python bench/bench_token_cache.py --quick              # seconds; what tests/test_bench.py runs

Shape legend: B batch, L = Σ pn² tokens over the K scales, Cvae codebook dim.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from minvar import VAR, VQVAE, VARConfig
from minvar.io.data import build_dataset
from minvar.training.token_cache import TokenDataset, encode_dataset
from minvar.var import VAR_PRESETS
from minvar.vqvae import VQVAE_PRESETS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (the quickstart's)")
    parser.add_argument("--num-images", type=int, default=2000, help="images in the built-in dataset and the cache")
    parser.add_argument("--data-path", default=None, help="an image folder instead of the built-in shapes")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per variant, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--clock", default="wall", choices=["wall", "process"], help="wall-clock time, or this "
                        "process's CPU time (steadier on a shared machine, with one thread)")
    parser.add_argument("--quick", action="store_true", help="a few steps, to check that it runs")
    parser.add_argument("--json", default=None, help="also write the rows and the machine here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.num_images, args.steps, args.repeats, args.batch_size = 32, 2, 2, 4
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = VQVAE(VQVAE_PRESETS["tiny"]).eval()
    dataset = build_dataset(args.data_path, vae.config.image_size, train=True, num_images=args.num_images)
    args.num_images = len(dataset)
    config = VARConfig(**{**vars(VAR_PRESETS["tiny"]), "num_classes": dataset.num_classes,
                          "vocab_size": vae.quantize.vocab_size, "code_dim": vae.quantize.code_dim,
                          "patch_nums": tuple(vae.patch_nums)})
    var = VAR(config).train()
    optimizer = torch.optim.AdamW(var.parameter_groups(0.05), lr=1e-4, betas=(0.9, 0.95))
    scale_lengths = [pn * pn for pn in vae.patch_nums]

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    start = clock()
    tokens = TokenDataset(encode_dataset(vae, dataset, hflip=False, progress=False))
    build_seconds = clock() - start

    def step(indices, cached: bool) -> None:
        """One train_var.py step on the items `indices`, reading tokens from the cache or encoding images."""
        source = tokens if cached else dataset
        items = [source[i] for i in indices]
        labels = torch.tensor([label for _, label in items])  # (B,)
        with torch.no_grad():
            if cached:
                target_BL = torch.stack([t for t, _ in items])  # (B, L)
                idx = list(target_BL.split(scale_lengths, dim=1))  # K (B, pn²)
            else:
                idx = vae.img_to_idx(torch.stack([image for image, _ in items]))  # K (B, pn²)
                target_BL = torch.cat(idx, dim=1)  # (B, L)
            x_BLCv = vae.idx_to_var_input(idx)  # (B, L-1, Cvae)
        logits_BLV = var(labels, x_BLCv)  # (B, L, V)
        loss = F.cross_entropy(logits_BLV.flatten(0, 1), target_BL.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rates = {"on the fly": [], "cache": []}
    order = torch.randperm(args.num_images).tolist()
    position = 0
    step(order[:args.batch_size], cached=True)  # warm-up, untimed
    step(order[:args.batch_size], cached=False)
    for repeat in range(args.repeats):
        variants = ["on the fly", "cache"] if repeat % 2 == 0 else ["cache", "on the fly"]
        for name in variants:
            start = clock()
            for _ in range(args.steps):
                indices = [order[(position + i) % args.num_images] for i in range(args.batch_size)]
                position += args.batch_size
                step(indices, cached=name == "cache")
            rates[name].append(args.steps / (clock() - start))

    cpu = platform.processor() or platform.machine()
    print(f"# {args.data_path or 'built-in shapes'}, {cpu}, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch_size}, {args.clock} clock, "
          f"{args.repeats} interleaved blocks of {args.steps} steps")
    print(f"{'variant':<12}  {'steps/s (median)':>16}  {'range':>15}")
    print(f"{'-' * 12}  {'-' * 16}  {'-' * 15}")
    rows = []
    for name, values in rates.items():
        median = statistics.median(values)
        rows.append({"variant": name, "steps_per_s": median, "min": min(values), "max": max(values)})
        print(f"{name:<12}  {median:>16.2f}  {min(values):>7.2f}-{max(values):<7.2f}")
    speedup = rows[1]["steps_per_s"] / rows[0]["steps_per_s"]
    print(f"speed-up {speedup:.2f}x; building the cache: {args.num_images / build_seconds:.0f} images/s "
          f"({build_seconds:.1f} s for {args.num_images})")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"rows": rows, "speedup": speedup, "cache_images_per_s": args.num_images / build_seconds,
                       "machine": platform.platform(), "processor": cpu, "args": vars(args)}, file, indent=1)


if __name__ == "__main__":
    main()
