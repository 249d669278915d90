"""One command that says how minvar runs on a GPU: kernels, speed, memory, and whether bf16 is safe.

    python bench/gpu_check.py                    # on a CUDA machine: VAR-d16 at a real batch, d16-d30 batch search
    python bench/gpu_check.py --cpu              # the same checks, tiny sizes, on the CPU (what tests/test_bench.py runs)

It prints, in order:
    1. the SDPA kernel PyTorch actually ran (read from the profiler) for the block-causal training mask and for
       KV-cached generation: flash, memory-efficient, cuDNN or the slow math fallback.
    2. one bf16 training step (forward + cross-entropy + backward + fused AdamW) of VAR-d16 at --batch-size: seconds,
       images/s, MFU (minvar/evaluation/flops.py) and the peak CUDA memory.
    3. KV-cached generation (cfg 1.5, top-k 900, top-p 0.96) with the VQVAE decoder at 256px: images/s.
    4. the largest batch per GPU that trains in bf16 for d16, d20, d24, d30 (doubling then bisecting, OOM caught).
    5. bf16 against fp32 from the same weights on the same batch: the loss of every step of a short run, and their
       largest relative gap.
Weights and inputs are random: speed and memory do not depend on them, and the loss comparison only needs the
same starting point. With --json the numbers are also written to a file (for the README).

Shape legend: B batch, L = Σ pn² tokens, Cvae codebook dim, V codebook size.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere in the repo
from minvar import VAR, VQVAE, VARConfig, generate  # noqa: E402
from minvar.evaluation.flops import mfu, peak_flops, var_training_flops  # noqa: E402
from minvar.training.precision import autocast  # noqa: E402

TINY = dict(depth=2, width=64, num_heads=2, num_classes=10, vocab_size=64, code_dim=8, patch_nums=(1, 2, 3, 4))


def make_var(depth: int, device: torch.device, cpu_mode: bool) -> VAR:
    """VAR-dD with the official sizes (width 64·D, 256px schedule), or a tiny model in --cpu mode."""
    config = VARConfig(**{**TINY, "depth": depth}) if cpu_mode else VARConfig(depth=depth)
    with device:  # build (and randomly initialise) the weights on the device itself: d30 has 2B of them
        return VAR(config)


def random_batch(var: VAR, batch_size: int, device: torch.device):
    """Class ids, teacher-forcing input (B, L-1, Cvae) and targets (B, L): what the tokenizer would give."""
    cfg = var.config
    labels_B = torch.randint(0, cfg.num_classes, (batch_size,), device=device)
    x_BLCv = torch.randn(batch_size, var.L - 1, cfg.code_dim, device=device)
    target_BL = torch.randint(0, cfg.vocab_size, (batch_size, var.L), device=device)
    return labels_B, x_BLCv, target_BL


def train_step(var: VAR, optimizer, batch, device: torch.device, precision: str) -> float:
    """One optimisation step (no label dropout, so fp32 and bf16 see the same arithmetic); returns the loss."""
    labels_B, x_BLCv, target_BL = batch
    with autocast(device, precision == "bf16"):
        logits_BLV = var(labels_B, x_BLCv, torch.zeros_like(labels_B, dtype=torch.bool))  # (B, L, V), fp32
    loss = F.cross_entropy(logits_BLV.flatten(0, 1), target_BL.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def timed(call, device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one untimed call, synchronised on CUDA."""
    call()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def sdpa_kernels(call) -> list:
    """The names of the scaled-dot-product-attention ops that `call` ran, read from the profiler."""
    with torch.profiler.profile() as profiler:
        call()
    names = {event.key for event in profiler.key_averages()}
    return sorted(name for name in names if "scaled_dot_product" in name and name != "aten::scaled_dot_product_attention")


def largest_batch(fits, start: int, limit: int) -> int:
    """The largest batch size b ≤ limit with fits(b) True, assuming fits is monotone: double, then bisect. 0 if
    not even `start` fits."""
    low, high = 0, start
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def batch_fitter(depth: int, device: torch.device, cpu_mode: bool):
    """A function batch -> whether one bf16 training step of VAR-dD (weights, gradients, AdamW state, activations)
    fits in memory. One model and optimizer serve every try, so the optimizer state is counted as in training."""
    var = make_var(depth, device, cpu_mode)
    optimizer = torch.optim.AdamW(var.parameters(), lr=1e-4, fused=device.type == "cuda")

    def fits(batch_size: int) -> bool:
        try:
            train_step(var, optimizer, random_batch(var, batch_size, device), device, "bf16")
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="reduced mode on the CPU: tiny models and batches")
    parser.add_argument("--batch-size", type=int, default=0, help="training batch of the d16 step (default: 64 on "
                                                                  "CUDA, 2 with --cpu)")
    parser.add_argument("--generate-batch-size", type=int, default=0, help="images per generate() call (default: "
                                                                           "64 on CUDA, 2 with --cpu)")
    parser.add_argument("--max-batch", type=int, default=0, help="upper end of the batch search (default: 2048 on "
                                                                 "CUDA, 4 with --cpu)")
    parser.add_argument("--loss-steps", type=int, default=0, help="steps of the bf16-vs-fp32 run (default: 20 on "
                                                                  "CUDA, 3 with --cpu)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --cpu for the reduced CPU check")
    device = torch.device("cpu" if args.cpu else "cuda")
    batch = args.batch_size or (2 if args.cpu else 64)
    generate_batch = args.generate_batch_size or (2 if args.cpu else 64)
    max_batch = args.max_batch or (4 if args.cpu else 2048)
    loss_steps = args.loss_steps or (3 if args.cpu else 20)
    depth = 2 if args.cpu else 16
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (reduced --cpu mode)"
    result = {"device": name, "torch": torch.__version__}
    print(f"# {name}, torch {torch.__version__}")

    # 1. which attention kernel runs -----------------------------------------------------------------------------
    var = make_var(depth, device, args.cpu)
    labels_B, x_BLCv, target_BL = random_batch(var, 2, device)
    with torch.no_grad(), autocast(device, True):
        training = sdpa_kernels(lambda: var(labels_B, x_BLCv))
        vae = VQVAE.from_preset("tiny", patch_nums=var.patch_nums, image_size=4 * var.patch_nums[-1], vocab_size=64,
                                code_dim=8) if args.cpu else VQVAE.from_preset("official")
        vae = vae.to(device).eval()
        cached = sdpa_kernels(lambda: generate(var.eval(), vae, [0, 1], cfg=1.5, seed=0))
    result["sdpa_training_mask"], result["sdpa_cached_generation"] = training, cached
    print(f"1. SDPA kernels, bf16: block-causal training mask -> {', '.join(training)}")
    print(f"                       KV-cached generation      -> {', '.join(cached)}")

    # 2. bf16 training step of d16 at a real batch -----------------------------------------------------------
    var.train()
    optimizer = torch.optim.AdamW(var.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    train_batch = random_batch(var, batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(lambda: train_step(var, optimizer, train_batch, device, "bf16"), device, repeats=3)
    utilisation = mfu(var_training_flops(var.config, batch), seconds, peak_flops(device, "bf16"))
    memory = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    result["train"] = {"depth": depth, "batch": batch, "seconds": seconds, "images_per_s": batch / seconds,
                       "mfu": utilisation, "peak_memory_gib": memory}
    print(f"2. bf16 train step, d{depth}, batch {batch}: {seconds:.3f} s, {batch / seconds:.1f} images/s, MFU "
          f"{'-' if utilisation is None else f'{100 * utilisation:.1f}%'}, peak memory "
          f"{'-' if memory is None else f'{memory:.1f} GiB'}")
    del optimizer

    # 3. generation ------------------------------------------------------------------------------------------
    var.eval()
    labels = [i % var.num_classes for i in range(generate_batch)]
    with autocast(device, True):
        seconds = timed(lambda: generate(var, vae, labels, cfg=1.5, top_k=900, top_p=0.96, seed=0), device,
                        repeats=3)
    result["generate"] = {"batch": generate_batch, "seconds": seconds, "images_per_s": generate_batch / seconds}
    print(f"3. bf16 generation with decode, d{depth}, batch {generate_batch}: {generate_batch / seconds:.1f} images/s")
    del var, vae

    # 4. largest batch per GPU ---------------------------------------------------------------------------------
    result["largest_batch"] = {}
    for search_depth in ((2,) if args.cpu else (16, 20, 24, 30)):
        found = largest_batch(batch_fitter(search_depth, device, args.cpu), 1, max_batch)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["largest_batch"][f"d{search_depth}"] = found
        capped = " (the search limit)" if found == max_batch else ""
        print(f"4. largest bf16 training batch, d{search_depth}: {found}{capped}")

    # 5. bf16 tracks fp32 -----------------------------------------------------------------------------------------
    losses = {}
    loss_batch = None
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)
        var = make_var(depth, device, args.cpu)
        loss_batch = loss_batch or random_batch(var, batch, device)
        optimizer = torch.optim.AdamW(var.parameters(), lr=1e-4 if not args.cpu else 1e-3)
        losses[precision] = [train_step(var, optimizer, loss_batch, device, precision) for _ in range(loss_steps)]
        del var, optimizer
    gap = max(abs(a - b) / abs(a) for a, b in zip(losses["fp32"], losses["bf16"]))
    result["losses"], result["largest_relative_loss_gap"] = losses, gap
    print(f"5. loss per step on one batch, fp32: {' '.join(f'{v:.5f}' for v in losses['fp32'])}")
    print(f"                               bf16: {' '.join(f'{v:.5f}' for v in losses['bf16'])}")
    print(f"   largest relative gap {100 * gap:.3f}%")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
