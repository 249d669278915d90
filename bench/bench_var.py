"""Benchmark the VAR transformer: training steps per second and generated images per second.

What is timed (VAR paper Section 3.2; official `train.py` / `trainer.py` and `models/var.py`):
    train     one optimisation step of the next-scale transformer on B images: teacher-forced forward
              `var(labels, x)` on all L = Σ pn² positions, cross-entropy against every scale's tokens, backward,
              AdamW step. The tokenizer is NOT in the timed step: its tokens are precomputed in a real run (and
              here they are random tokens of the right shapes), so this is the transformer's cost alone.
    generate  one `generate()` call for B images with the KV cache (K transformer calls, one per scale, CFG doubles
              the batch to 2B), cfg 1.5, top-k 900, top-p 0.96 (the official FID setting), plus the VQVAE decoder
              unless --no-vae-decode. Weights are random: the cost of the arithmetic does not depend on them.

Each row is warmed up, then timed `--repeats` times; steps/s = 1 / median time of one call (a training step, or one
generate() call of a batch) and images/s = B × steps/s. Training rows also give their MFU: the step's FLOPs counted
from the config (minvar/evaluation/flops.py) / the median time / the device's peak in that dtype (a GPU table; on a CPU a
matrix product measured once per process). fp32 rows run in strict float32 (on CUDA, TF32 stays off
as PyTorch's default; the official trainer turns it on); bf16 rows under torch.autocast(bfloat16), which needs no
grad scaler. NOTE (differs from official VAR): its trainer uses fp16 autocast with a grad scaler (`--fp16=1`); bf16
has the same speed on recent GPUs and is simpler. On CUDA every timing is bracketed by torch.cuda.synchronize and the
peak memory of a row is torch.cuda.max_memory_allocated. On CPUs without native bf16 (no AVX512-BF16/AMX) the bf16
rows are much SLOWER than fp32: the conversions are emulated. Where the CPU has them (e.g. AMD Zen 4 with
AVX512-BF16, Intel Sapphire Rapids with AMX) bf16 matrix products run 2-3× faster than fp32.

    python bench/bench_var.py                              # tiny CPU config, batch 32
    python bench/bench_var.py --depth 16 --batch-size 2    # a real VAR-d16 (310M) with the official-size VQVAE
    python bench/bench_var.py --depth 30 --device cuda --batch-size 16 --json out/d30.json

bench_tokenizer.py imports the timing and table helpers below (`measure`, `print_table`, ...).

Shape legend: B batch, L = Σ pn² tokens over the K scales, Cvae codebook dim, V codebook size.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import statistics
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minvar import VAR, VQVAE, VARConfig, generate
from minvar.evaluation.flops import mfu, peak_flops, var_training_flops
from minvar.sampling import make_generator, sample_scales
from minvar.var import VAR_PRESETS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------------------------
# timing helpers (shared with bench_tokenizer.py)
def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work: CUDA calls return before the kernels finish, so an unsynchronised timer lies."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype_name: str):
    """bf16: autocast the block to bfloat16 (matmuls and convs in bf16, reductions in fp32); fp32: do nothing."""
    if dtype_name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype_name])


def measure(call, device: torch.device, warmup: int, repeats: int, description: str) -> dict:
    """Run `call` warmup + repeats times; return the median seconds of the timed calls and the CUDA peak memory.

    The warmup calls are not timed: they pay for one-off work (kernel selection, allocator growth, the optimizer's
    state on the first step).
    """
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for i in tqdm(range(warmup + repeats), desc=description, leave=False):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"seconds": statistics.median(seconds), "peak_memory_gib": peak}


def row(config: str, params: int, dtype: str, mode: str, batch: int, timing: dict, flops: float = None,
        device: torch.device = None) -> dict:
    """One line of the result table (also what --json writes). With the FLOPs of one call, also its MFU: FLOPs /
    seconds / the device's peak in that dtype (minvar/evaluation/flops.py: a GPU table, or a matmul measured on this CPU)."""
    utilisation = mfu(flops, timing["seconds"], peak_flops(device, dtype)) if flops else None
    return {"config": config, "params_m": params / 1e6, "dtype": dtype, "mode": mode, "batch": batch,
            "steps_per_s": 1 / timing["seconds"], "images_per_s": batch / timing["seconds"],
            "peak_memory_gib": timing["peak_memory_gib"], "mfu": utilisation}


COLUMNS = [("config", "config", "{}"), ("params", "params_m", "{:.1f}M"), ("dtype", "dtype", "{}"),
           ("mode", "mode", "{}"), ("batch", "batch", "{}"), ("steps/s", "steps_per_s", "{:.3g}"),
           ("images/s", "images_per_s", "{:.3g}"), ("peak mem", "peak_memory_gib", "{:.2f} GiB"),
           ("MFU", "mfu", "{:.1%}")]


def print_table(rows: list) -> None:
    """A plain aligned text table, one row per (dtype, mode); '-' where a value does not apply (CPU memory)."""
    cells = [[title for title, _, _ in COLUMNS]]
    for r in rows:
        cells.append(["-" if r[key] is None else fmt.format(r[key]) for _, key, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    for n, line in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo; elsewhere what `platform` knows)."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Where the numbers come from: a benchmark without its machine (and how busy it was) means little."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {os.cpu_count()} cores"
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def comma_list(text: str, allowed) -> list:
    """Parse 'a,b' and check every item against `allowed`, with a clear error."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
    return items


def add_measurement_arguments(parser: argparse.ArgumentParser, modes: list, batch_size: int, batch_help: str) -> None:
    """The flags both benchmarks share: where, in which precisions, what, how long, and where to write."""
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default %(default)s)")
    parser.add_argument("--dtypes", default="fp32,bf16", type=lambda text: comma_list(text, list(DTYPES)),
                        help="comma-separated precisions to time: fp32, bf16 (autocast) (default %(default)s)")
    parser.add_argument("--modes", default=",".join(modes), type=lambda text: comma_list(text, modes),
                        help="comma-separated parts to time, as the docstring describes (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help + " (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported (default "
                                                                "%(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch; 0 keeps torch's default. On a machine shared with other jobs 1 "
                             "is often much faster: busy cores stall the other threads at every parallel op "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default "
                                                             "%(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest possible run (tiny preset, batch 2, 1 warmup, 1 timed repeat, 1 CPU thread "
                             "unless --threads is given), for tests")
    parser.add_argument("--json", default="", help="also write the rows and the environment to this JSON file")


def setup(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """Apply --quick's shared part, check the numbers, set threads and seed; return the device."""
    if args.quick:
        args.batch_size, args.warmup, args.repeats, args.threads = 2, 1, 1, args.threads or 1
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("need --repeats >= 1, --warmup >= 0 and --batch-size >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return torch.device(args.device)


def write_json(path: str, result: dict) -> None:
    """Save the result dict (environment, config, arguments, rows) for plots and comparisons."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        json.dump(result, file, indent=2)
    print(f"# wrote {path}")


def main() -> None:
    # 1. config ------------------------------------------------------------------------------------------------------
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # model
    parser.add_argument("--preset", default="tiny", choices=sorted(VAR_PRESETS),
                        help="named VAR config (minvar.var.VAR_PRESETS); 'tiny' is timed with the tiny tokenizer, the "
                             "others with the official-architecture VQVAE (default %(default)s)")
    parser.add_argument("--depth", type=int, default=0,
                        help="if > 0, time a real VAR-dD instead of --preset: VARConfig(depth=D), i.e. width 64·D, "
                             "D heads, the 256px schedule, V=4096, Cvae=32 (default %(default)s)")
    parser.add_argument("--no-vae-decode", action="store_true",
                        help="time generation without the VQVAE decoder; the quantizer (Φ, f̂) still runs, it is "
                             "part of the sampling loop")
    parser.add_argument("--generate-batch-size", type=int, default=1,
                        help="images per generate() call; CFG runs the transformer on twice as many (default "
                             "%(default)s)")
    add_measurement_arguments(parser, modes=["train", "generate"], batch_size=32,
                              batch_help="images per training step")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.depth, args.generate_batch_size = "tiny", 0, 2
    if args.generate_batch_size < 1:
        parser.error("--generate-batch-size must be >= 1")
    device = setup(parser, args)

    # 2. model: the transformer, and the tokenizer it samples with ---------------------------------------------------
    if args.depth > 0:
        name, var_config = f"d{args.depth}", VARConfig(depth=args.depth)
    else:
        name, var_config = args.preset, VAR_PRESETS[args.preset]
    var = VAR(var_config).to(device)
    cfg = var.config  # resolved: width and heads filled in
    num_params = sum(p.numel() for p in var.parameters())
    vae = None
    if "generate" in args.modes:
        # Random weights of the right architecture. 'tiny' pairs with the tiny tokenizer; every other config with
        # the released VQVAE's architecture (108.9M), at the image size its last scale implies (16× downsampling).
        if name == "tiny":
            vae = VQVAE.from_preset("tiny")
        else:
            vae = VQVAE.from_preset("official", patch_nums=cfg.patch_nums, image_size=16 * cfg.patch_nums[-1])
        vae = vae.to(device).eval()
    print(f"# VAR {name}: depth {cfg.depth}, width {cfg.width}, {cfg.num_heads} heads, L={var.L} tokens over "
          f"{var.num_scales} scales, V={cfg.vocab_size}, Cvae={cfg.code_dim}; {num_params / 1e6:.1f}M parameters")
    if vae is not None:
        decode = "not timed (--no-vae-decode)" if args.no_vae_decode else "timed"
        vae_params = sum(p.numel() for p in vae.parameters())
        print(f"# VQVAE for generation: {vae.config.image_size}px, {vae_params / 1e6:.1f}M parameters, decoder {decode}")
    env = environment(device)
    print(f"# {env['device']} ({env['device_name']}), torch {env['torch']}, CPU threads {env['threads']}, "
          f"load average {env['load_average_1min']}")

    # 3. inputs: random tokens of the right shapes (what vae.img_to_idx + idx_to_var_input would give) -------------
    B = args.batch_size
    labels_B = torch.randint(0, cfg.num_classes, (B,), device=device)
    x_BLCv = torch.randn(B, var.L - 1, cfg.code_dim, device=device)  # (B, L-1, Cvae): f̂ of scales < k, downsampled
    target_BL = torch.randint(0, cfg.vocab_size, (B, var.L), device=device)  # (B, L): every scale's tokens
    generate_labels = torch.arange(args.generate_batch_size, device=device) % cfg.num_classes

    rows = []
    for dtype in args.dtypes:
        # 4. train: forward + backward + AdamW step ------------------------------------------------------------------
        if "train" in args.modes:
            var.train()
            # the official optimiser: fused AdamW, betas (0.9, 0.95), decay 0.05 on matrices only (parameter_groups)
            optimizer = torch.optim.AdamW(var.parameter_groups(weight_decay=0.05), lr=1e-4, betas=(0.9, 0.95),
                                          fused=True)

            def train_step():
                with autocast(device, dtype):
                    logits_BLV = var(labels_B, x_BLCv)  # (B, L, V), fp32 (get_logits casts the head)
                loss = F.cross_entropy(logits_BLV.view(-1, cfg.vocab_size), target_BL.view(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            timing = measure(train_step, device, args.warmup, args.repeats, f"{name} train {dtype}")
            rows.append(row(name, num_params, dtype, "train", B, timing, var_training_flops(cfg, B), device))
            del optimizer  # free the Adam state before the next row (matters for the peak memory on CUDA)
            var.zero_grad(set_to_none=True)

        # 5. generate: KV-cached next-scale sampling (+ the VQVAE decoder) ---------------------------------------------
        if "generate" in args.modes:
            var.eval()

            def generate_call():
                with autocast(device, dtype):
                    if args.no_vae_decode:  # the sampling loop alone: stop at f̂, skip vae.fhat_to_img
                        sample_scales(var, vae, generate_labels, cfg=1.5, top_k=900, top_p=0.96,
                                      generator=make_generator(args.seed, device))
                    else:
                        generate(var, vae, generate_labels, cfg=1.5, top_k=900, top_p=0.96, seed=args.seed)

            timing = measure(generate_call, device, args.warmup, args.repeats, f"{name} generate {dtype}")
            mode = "generate/no-decode" if args.no_vae_decode else "generate"
            rows.append(row(name, num_params, dtype, mode, args.generate_batch_size, timing))

    # 6. report --------------------------------------------------------------------------------------------------------
    print_table(rows)
    if any(r["mfu"] is not None for r in rows):
        peaks = ", ".join(f"{d} {peak_flops(device, d) / 1e9:.0f} GFLOP/s" for d in args.dtypes
                          if peak_flops(device, d))
        print(f"# MFU: train rows only (FLOPs counted as minvar/evaluation/flops.py says); device peak {peaks}")
    if args.json:
        write_json(args.json, {"environment": env, "var_config": {"name": name, **asdict(cfg)}, "args": vars(args),
                               "rows": rows})


if __name__ == "__main__":
    main()
