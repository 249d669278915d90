"""The cost argument of the VAR paper, measured: raster-scan AR against next-scale VAR as the token map grows.

Paper §3.1: generating an n×n token map with a raster-scan transformer takes n² sequential steps and, recomputing the
prefix at every step (no KV cache), O(n⁶) operations: step t attends over t tokens for each of t queries, and
Σ_{t ≤ n²} t² ~ n⁶. VAR (§3.2 and its appendix) takes K steps, one per scale, and O(n⁴): its L = Σ pn² ~ n² tokens
attend to at most L tokens each. With a KV cache, AR computes each query once against ≤ n² keys: O(n⁴) too, but
still n² sequential steps.

For each side n (default 4, 8, 16, 32) this script generates ONE image's tokens with untrained weights and reports:
    steps      sequential transformer calls (AR: n², VAR: K)
    FLOPs      counted by minvar.evaluation.flops (matrix products and attention, as full attention; no decoder)
    seconds    wall time, the median of --repeats calls, the three variants interleaved
for AR with the KV cache, AR without it (the whole prefix recomputed every step), and VAR without AdaLN (the paper's
"AR to VAR" row, whose parameters match the AR model's: the same depth, width, heads and FFN). VAR's schedules:
n=4 (1,2,3,4), n=8 (1,2,3,4,6,8), n=16 the official 256px (1,2,3,4,5,6,8,10,13,16), n=32 the official 512px
(1,2,3,4,6,9,13,18,24,32). Exponents are fitted on log-log axes (numpy.polyfit) over all sides, and between the last
two sides (the local slope, closer to the asymptote).

Then the cost table of the ablation (tutorials/07_ablations.py, row 1 against row 2) where the claim lives: at
batch 1 and 16 (--batches), at 8×8 and 16×16 token maps (--table-sides), the sequential steps, counted FLOPs and
wall time per image of VAR against AR with and without the KV cache, and their ratios.

    python bench/bench_cost.py --threads 1                       # a few minutes on one CPU thread
    python bench/bench_cost.py --quick                           # seconds (tests/test_bench.py)

Why the paper's 0.013 is a latency, and what a CPU can show of it. The paper's cost column (Table 3: VAR 0.013 of
the AR's time) is wall-clock time to generate an image on a GPU, against an AR that recomputes its prefix at every
one of its 256 steps (the O(n⁶) model of §3.1). A GPU at batch 1 is latency-bound: one transformer call on a few
hundred tokens leaves most of it idle, so time grows with the number of sequential calls (256 against 10) far more
than with the arithmetic. Against a KV-cached AR, VAR does MORE arithmetic, not less (all L = Σ pn² tokens, and
attention over up to L keys: about 2× the FLOPs at 8×8 and 4× at 16×16 by minvar/flops.py). On a CPU thread a
small model's call costs a fixed overhead (Python, dispatch, the sampling step) plus its arithmetic: at batch 1 the
overhead of the AR's many steps dominates and VAR wins by about the step ratio; as the batch grows the arithmetic
takes over and the ratio moves towards the FLOP ratio, where a KV-cached AR would win. So a CPU can show the step
count and the FLOPs exactly, and the latency advantage at batch 1, shrinking with the batch; it cannot show a GPU's
0.013, which is a latency at 256 against 10 steps with the AR's prefix recomputed.

What to expect: at small n the per-token matrix products (O(T·C²) for T tokens, C the width) dominate, not the
attention (O(T²·C)), so the measured FLOP exponents start near 2 (VAR, AR cached) and 4 (AR without cache) and
climb towards 4 and 6 only once T outgrows the width. Wall time on a CPU adds a fixed cost per sequential step,
which is what makes VAR fast in practice: K calls instead of n².

Shape legend: n side of the last token map, T = n² AR tokens, L = Σ pn² VAR tokens, K scales, C width.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
from minvar.ar import AR, ARConfig, sample_tokens  # noqa: E402
from minvar.evaluation.flops import count_flops  # noqa: E402
from minvar.sampling import sample_scales  # noqa: E402
from minvar.var import SCHEDULE_256, SCHEDULE_512, VAR, VARConfig  # noqa: E402
from minvar.vqvae import VQVAE  # noqa: E402

SCHEDULES = {2: (1, 2), 4: (1, 2, 3, 4), 8: (1, 2, 3, 4, 6, 8), 16: SCHEDULE_256, 32: SCHEDULE_512}
VARIANTS = ("AR, KV cache", "AR, no cache", "VAR")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sides", default="4,8,16,32", help=f"token-map sides n, from {sorted(SCHEDULES)}")
    parser.add_argument("--depth", type=int, default=4, help="transformer blocks of both models")
    parser.add_argument("--width", type=int, default=64, help="width C of both models")
    parser.add_argument("--heads", type=int, default=2, help="attention heads of both models")
    parser.add_argument("--vocab-size", type=int, default=512, help="codebook size V")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per variant and side")
    parser.add_argument("--long-call", type=float, default=20.0, help="seconds above which a call is timed only "
                        "once (AR without cache at n=32 takes minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: predictable on a shared CPU)")
    parser.add_argument("--out", default="runs/bench_cost/cost.png", help="figure path (the JSON goes beside it)")
    parser.add_argument("--table-sides", default="8,16", help="token-map sides of the cost table")
    parser.add_argument("--batches", default="1,16", help="batch sizes of the cost table")
    parser.add_argument("--quick", action="store_true", help="sides 2 and 4, a one-block model, one repeat; the "
                        "table at side 4, batches 1 and 2")
    return parser.parse_args(argv)


def build(side: int, args):
    """(AR, VAR without AdaLN, the VQVAE whose quantizer VAR's sampler needs) for an n×n token map."""
    shape = dict(depth=args.depth, width=args.width, num_heads=args.heads, mlp_ratio=4.0, num_classes=10,
                 vocab_size=args.vocab_size)
    torch.manual_seed(0)
    ar = AR(ARConfig(grid_size=side, **shape)).eval()
    var = VAR(VARConfig(code_dim=16, patch_nums=SCHEDULES[side], drop_path_rate=0.0, adaln=False, **shape)).eval()
    vae = VQVAE.from_preset("tiny", vocab_size=args.vocab_size, patch_nums=SCHEDULES[side], image_size=4 * side)
    return ar, var, vae.eval()


def fit(sides, values):
    """Exponent b of values ≈ a·n^b over all sides, and the local slope between the last two sides."""
    slope = float(np.polyfit(np.log(sides), np.log(values), 1)[0]) if len(sides) > 1 else float("nan")
    local = float(np.log(values[-1] / values[-2]) / np.log(sides[-1] / sides[-2])) if len(sides) > 1 else slope
    return slope, local


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.sides, args.depth, args.width, args.heads, args.repeats = "2,4", 1, 32, 1, 1
        args.table_sides, args.batches = "4", "1,2"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sides = [int(s) for s in args.sides.split(",")]
    table_sides = [int(s) for s in args.table_sides.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    unknown = [s for s in sides + table_sides if s not in SCHEDULES]
    if unknown:
        raise SystemExit(f"error: --sides {unknown} have no VAR schedule; choose from {sorted(SCHEDULES)}")
    label = torch.zeros(1, dtype=torch.long)

    # 1. measure every side: steps, counted FLOPs, wall time
    rows = []
    for side in sides:
        ar, var, vae = build(side, args)
        calls = {"AR, KV cache": lambda: sample_tokens(ar, label, use_cache=True),
                 "AR, no cache": lambda: sample_tokens(ar, label, use_cache=False),
                 "VAR": lambda: sample_scales(var, vae, label, cfg=0.0)}
        steps = {"AR, KV cache": side ** 2, "AR, no cache": side ** 2, "VAR": len(SCHEDULES[side])}
        params = {"AR": sum(p.numel() for p in ar.parameters()), "VAR": sum(p.numel() for p in var.parameters())}
        flops = {name: count_flops(call) for name, call in calls.items()}  # also the untimed warm-up call
        times = {name: [] for name in calls}
        with torch.no_grad():
            for repeat in range(args.repeats):  # the variants in turns, so that a load change hits them alike
                for name, call in calls.items():
                    if times[name] and times[name][0] > args.long_call:
                        continue  # a call this long is timed once: its noise is small, and repeats cost minutes
                    begin = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - begin)
        for name in calls:
            rows.append(dict(side=side, variant=name, steps=steps[name], flops=flops[name],
                             seconds=statistics.median(times[name]), seconds_min=min(times[name]),
                             seconds_max=max(times[name]), params=params[name.split(",")[0]],
                             tokens=side ** 2 if name.startswith("AR") else var.L))
            r = rows[-1]
            print(f"n={side:<3} {name:<13} params {r['params']:>9,}  steps {r['steps']:>5}  FLOPs {r['flops']:>10.3g}"
                  f"  {r['seconds'] * 1e3:>10.1f} ms (range {r['seconds_min'] * 1e3:.1f}-{r['seconds_max'] * 1e3:.1f})",
                  flush=True)

    # 2. fitted exponents on log-log axes
    exponents = {}
    print(f"\n{'variant':<13} {'FLOPs ∝ n^b (all, last two)':>30} {'seconds ∝ n^b (all, last two)':>32} {'steps':>8}")
    for name in VARIANTS:
        own = [r for r in rows if r["variant"] == name]
        flops_fit = fit([r["side"] for r in own], [r["flops"] for r in own])
        time_fit = fit([r["side"] for r in own], [r["seconds"] for r in own])
        steps_fit = fit([r["side"] for r in own], [r["steps"] for r in own])
        exponents[name] = dict(flops=flops_fit[0], flops_last_two=flops_fit[1], seconds=time_fit[0],
                               seconds_last_two=time_fit[1], steps=steps_fit[0])
        print(f"{name:<13} {flops_fit[0]:>19.2f}, {flops_fit[1]:>8.2f} {time_fit[0]:>21.2f}, {time_fit[1]:>8.2f}"
              f" {steps_fit[0]:>8.2f}")
    print("paper (§3.1): AR without cache O(n^6) operations, VAR O(n^4); AR n^2 steps, VAR K (about log n) steps")
    for side in sides:
        by = {r["variant"]: r for r in rows if r["side"] == side}
        print(f"n={side}: VAR / AR-with-cache wall time {by['VAR']['seconds'] / by['AR, KV cache']['seconds']:.3f}"
              f" (FLOPs {by['VAR']['flops'] / by['AR, KV cache']['flops']:.2f}); VAR / AR-without-cache "
              f"{by['VAR']['seconds'] / by['AR, no cache']['seconds']:.4f} (FLOPs "
              f"{by['VAR']['flops'] / by['AR, no cache']['flops']:.4f})")

    # 3. the cost table: batch 1 and 16, the ablation's row 1 (AR, with and without cache) against row 2 (VAR)
    table = []
    for side in table_sides:
        ar, var, vae = build(side, args)
        for batch in batches:
            labels = torch.arange(batch) % 10  # (B,) class ids
            calls = {"AR, KV cache": lambda: sample_tokens(ar, labels, use_cache=True),
                     "AR, no cache": lambda: sample_tokens(ar, labels, use_cache=False),
                     "VAR": lambda: sample_scales(var, vae, labels, cfg=0.0)}
            flops = {name: count_flops(call) / batch for name, call in calls.items()}  # also the untimed warm-up
            times = {name: [] for name in calls}
            with torch.no_grad():
                for repeat in range(args.repeats):  # interleaved, as above
                    for name, call in calls.items():
                        begin = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - begin)
            for name in calls:
                seconds = statistics.median(times[name])
                table.append(dict(side=side, batch=batch, variant=name,
                                  steps=side ** 2 if name.startswith("AR") else len(SCHEDULES[side]),
                                  flops_per_image=flops[name], seconds_per_batch=seconds,
                                  seconds_per_image=seconds / batch, seconds_min=min(times[name]),
                                  seconds_max=max(times[name])))
    print(f"\ncost table ({args.threads} thread(s), {platform.processor() or platform.machine()}; median of "
          f"{args.repeats}, interleaved; untrained depth-{args.depth} width-{args.width} models)")
    print(f"{'map':>6} {'batch':>5} {'variant':<13} {'steps':>6} {'FLOPs/image':>12} {'ms/image':>10} "
          f"{'VAR / this: time':>17} {'FLOPs':>7}")
    for r in table:
        var_row = next(v for v in table if (v["side"], v["batch"], v["variant"]) == (r["side"], r["batch"], "VAR"))
        r["var_time_ratio"] = var_row["seconds_per_image"] / r["seconds_per_image"]
        r["var_flops_ratio"] = var_row["flops_per_image"] / r["flops_per_image"]
        print(f"{r['side']:>3}×{r['side']:<2} {r['batch']:>5} {r['variant']:<13} {r['steps']:>6} "
              f"{r['flops_per_image']:>12.3g} {r['seconds_per_image'] * 1e3:>10.2f} {r['var_time_ratio']:>17.3f} "
              f"{r['var_flops_ratio']:>7.2f}")
    print("paper (Table 3): VAR 0.013 of the AR's time: GPU latency against an AR that recomputes its prefix")

    # 4. figure and JSON
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, key, title in zip(axes, ("steps", "flops", "seconds"),
                                ("sequential steps", "counted FLOPs per image", "wall time per image (s)")):
        for name, marker in zip(VARIANTS, "os^"):
            own = [r for r in rows if r["variant"] == name]
            slope = fit([r["side"] for r in own], [r[key] for r in own])[0]
            axis.plot([r["side"] for r in own], [r[key] for r in own], marker=marker,
                      label=f"{name} (n^{slope:.2f})")
        if key == "flops":  # the paper's slopes, drawn through the first points for comparison
            first = {r["variant"]: r["flops"] for r in rows if r["side"] == sides[0]}
            grid = np.array(sides, dtype=float) / sides[0]
            axis.plot(sides, first["AR, no cache"] * grid ** 6, ":", color="tab:orange", label="n^6 (paper, AR)")
            axis.plot(sides, first["VAR"] * grid ** 4, ":", color="tab:green", label="n^4 (paper, VAR)")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("token map side n")
        axis.set_title(title)
        axis.legend(fontsize=8)
    figure.suptitle(f"Generation cost of one image, AR vs VAR (untrained, depth {args.depth}, width {args.width}; "
                    f"{args.threads} thread(s), {platform.processor() or platform.machine()})")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    figure.savefig(args.out, dpi=110, bbox_inches="tight")
    plt.close(figure)
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as file:
        json.dump(dict(rows=rows, exponents=exponents, table=table, args=vars(args), threads=torch.get_num_threads(),
                       machine=platform.machine(), processor=platform.processor(), torch=torch.__version__,
                       load_average=os.getloadavg()), file, indent=1)
    print(f"[figure] {args.out}\n[json] {json_path}")


if __name__ == "__main__":
    sys.exit(main())
