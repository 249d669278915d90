"""Compare the speed of two minvar code trees on the same work, interleaved, each call in its own process.

A speed-up measured on a shared machine is only believable if both sides ran under the same load, so the two trees
take turns: round r runs tree A then tree B (B then A on odd rounds), each in a fresh subprocess whose PYTHONPATH
points at that tree, so `import minvar` loads that tree's code. Every subprocess builds the same random model (same
seed), prepares its input before the clock starts, runs `--warmup` untimed calls and then `--calls` timed ones. The
table gives, per tree, the median and the range (min-max) of all timed calls, and the ratio of the medians.

What is timed (VAR paper Section 3.2; official `trainer.py` and `models/var.py` `autoregressive_infer_cfg`):
    train     VAR only: teacher-forced forward on all L = Σ pn² positions, cross-entropy against every scale's
              tokens, backward (no optimizer step). Inputs are random tensors of the shapes the tokenizer would give.
    generate  one KV-cached `generate()` call (cfg 1.5, top-k 900, top-p 0.96) including the VQVAE decoder of the
              released architecture (108.9M parameters, random weights) at 256px.

Two clocks are reported: wall time, and the process's CPU time (one thread per process, so CPU time is the work
done; unlike wall time it does not grow while the process waits for a core that another job holds).

Defaults are the 256px schedule (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), VAR-d4 and VAR-d12 (width 64·depth), batch 8,
fp32, one thread per process (with 2 threads on a 2-core machine shared with other jobs, a busy core stalls every
parallel op and the spread grows several-fold). The worker only uses the public API both trees share (VARConfig,
VAR, VQVAE.from_preset, generate), so it can time an older tree than this one.

    python bench/compare_trees.py --compare /work/main                      # this tree (A) against /work/main (B)
    python bench/compare_trees.py --compare /tmp/base --depths 4 --modes train --rounds 5
    python bench/compare_trees.py --precision-a bf16 --depths tiny,4 --modes train   # bf16 against fp32, one tree
    python bench/compare_trees.py --precision-a bf16 --precision-b bf16 --compile-a --modes train  # torch.compile

Shape legend: B batch, L = Σ pn² tokens, Cvae codebook dim, V codebook size.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve()


def worker(args: argparse.Namespace) -> None:
    """Build the model, prepare the input, time the calls; print one JSON line with the seconds of each call."""
    import torch
    import torch.nn.functional as F

    import minvar
    from minvar import VAR, VQVAE, VARConfig, generate
    from minvar.var import VAR_PRESETS
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    var = VAR(VAR_PRESETS["tiny"] if args.depth == "tiny" else VARConfig(depth=int(args.depth)))
    cfg = var.config
    # bf16: autocast around the model's forward and generate(); the loss and backward stay outside, as in the trainer
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    B = args.batch_size
    if args.mode == "train":
        var.train()
        model = torch.compile(var) if args.compile else var  # as train_var.py --compile: the forward only
        labels_B = torch.randint(0, cfg.num_classes, (B,))
        x_BLCv = torch.randn(B, var.L - 1, cfg.code_dim)  # (B, L-1, Cvae): what idx_to_var_input would give
        target_BL = torch.randint(0, cfg.vocab_size, (B, var.L))  # (B, L)
        drop_B = torch.zeros(B, dtype=torch.bool)  # no label dropout: both trees do the same arithmetic

        def call():
            with precision:
                logits_BLV = model(labels_B, x_BLCv, drop_B)  # (B, L, V)
            loss = F.cross_entropy(logits_BLV.view(-1, cfg.vocab_size), target_BL.view(-1))
            var.zero_grad(set_to_none=True)
            loss.backward()
    else:
        var.eval()
        vae = (VQVAE.from_preset("tiny") if args.depth == "tiny" else VQVAE.from_preset("official")).eval()
        labels_B = torch.arange(B) % cfg.num_classes

        def call():
            with precision:
                generate(var, vae, labels_B, cfg=1.5, top_k=900, top_p=0.96, seed=0)

    seconds, cpu_seconds = [], []
    for i in range(args.warmup + args.calls):
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds,
                      "minvar": os.path.dirname(os.path.dirname(minvar.__file__))}))


def run_one(tree: str, precision: str, compiled: bool, args: argparse.Namespace, depth: str, mode: str) -> dict:
    """One subprocess on `tree`: returns its timed wall-clock and CPU seconds."""
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, str(HERE), "--worker", "--mode", mode, "--depth", depth, "--precision", precision,
               "--threads",
               str(args.threads), "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
               "--calls", str(args.calls)] + (["--compile"] if compiled else [])
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the worker failed on {tree} ({mode}, depth {depth}):\n{result.stderr[-3000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    if os.path.realpath(answer["minvar"]) != os.path.realpath(tree):  # e.g. an editable install shadowing PYTHONPATH
        raise SystemExit(f"the worker imported minvar from {answer['minvar']}, not from {tree}")
    return {"wall": answer["seconds"], "cpu": answer["cpu_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # what to compare
    parser.add_argument("--compare", default=str(HERE.parents[1]),
                        help="the other code tree (B), e.g. a `git worktree add /tmp/base main` checkout (default: "
                             "this one, to compare precisions)")
    parser.add_argument("--tree", default=str(HERE.parents[1]), help="the first code tree (A) (default: this one)")
    parser.add_argument("--precision-a", default="fp32", choices=["fp32", "bf16"],
                        help="precision of A: bf16 = bfloat16 autocast (default %(default)s)")
    parser.add_argument("--precision-b", default="fp32", choices=["fp32", "bf16"],
                        help="precision of B (default %(default)s)")
    parser.add_argument("--compile-a", action="store_true", help="A's training forward through torch.compile "
                        "(train mode only; its first call, the compile, is a warm-up call)")
    # what to time
    parser.add_argument("--depths", default="4,12", help="comma-separated VAR depths, or 'tiny' for the quickstart "
                                                         "preset with its tokenizer (default %(default)s)")
    parser.add_argument("--modes", default="train,generate", help="train and/or generate (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per call (default %(default)s)")
    # how long
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, one process per tree and "
                                                              "round (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per process (default %(default)s)")
    parser.add_argument("--calls", type=int, default=2, help="timed calls per process (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default %(default)s)")
    parser.add_argument("--json", default="", help="also write every timing to this JSON file")
    # internal
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    parser.add_argument("--depth", default="4", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    trees = {"A": os.path.abspath(args.tree), "B": os.path.abspath(args.compare)}
    precisions = {"A": args.precision_a, "B": args.precision_b}
    compiled = {"A": args.compile_a, "B": False}
    if trees["A"] == trees["B"] and precisions["A"] == precisions["B"] and not args.compile_a:
        parser.error("A and B are the same tree in the same precision: give --compare PATH, --precision-a bf16 or "
                     "--compile-a")
    for tree in trees.values():
        if not os.path.isfile(os.path.join(tree, "minvar", "var.py")):
            parser.error(f"{tree} is not a minvar tree (no minvar/var.py)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("train", "generate") for m in modes):
        parser.error(f"--modes {args.modes!r}: choose from train, generate")
    if args.compile_a and modes != ["train"]:
        parser.error("--compile-a times the training step only: add --modes train")
    depths = [d.strip() for d in args.depths.split(",")]  # depths, or "tiny" for the quickstart preset

    print(f"# A = {trees['A']} ({precisions['A']}{', compiled' if args.compile_a else ''})\n"
          f"# B = {trees['B']} ({precisions['B']})")
    print(f"# batch {args.batch_size}, {args.threads} thread(s) per process, {args.rounds} rounds x {args.calls} "
          f"timed calls (after {args.warmup} warmup) per variant")
    results = []
    for depth in depths:
        for mode in modes:
            seconds = {name: {"wall": [], "cpu": []} for name in trees}
            for r in range(args.rounds):
                for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    timed = run_one(trees[name], precisions[name], compiled[name], args, depth, mode)
                    for clock in ("wall", "cpu"):
                        seconds[name][clock] += timed[clock]
                    print(f"#   d{depth} {mode} round {r} {name}: wall {timed['wall']} cpu {timed['cpu']}", flush=True)
            results.append({"depth": depth, "mode": mode, "seconds": seconds})
    # Both clocks: wall time is what a user waits; CPU time (time.process_time, one thread) is the work done and is
    # far less disturbed when other jobs share the cores (a descheduled process does not accumulate it).
    print("| op | depth | clock | A median s (range) | B median s (range) | speed-up of A (B time / A time) |")
    print("|---|---|---|---|---|---|")
    for res in results:
        for clock in ("cpu", "wall"):
            values = {name: res["seconds"][name][clock] for name in trees}
            med = {name: statistics.median(v) for name, v in values.items()}
            cells = [f"{med[n]:.3f} ({min(values[n]):.3f}-{max(values[n]):.3f})" for n in ("A", "B")]
            print(f"| {res['mode']} | {res['depth']} | {clock} | {cells[0]} | {cells[1]} | {med['B'] / med['A']:.2f}x |")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"trees": trees, "args": vars(args), "load_average": os.getloadavg(), "results": results},
                      file, indent=2)


if __name__ == "__main__":
    main()
