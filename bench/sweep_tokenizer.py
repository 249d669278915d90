"""Sweep train_tokenizer.py's recipe on an image folder at fixed compute: one table row per setting.

Every row trains a tokenizer for the same `--cpu-seconds` of CPU time and scores it with `evaluate.py
--tokenizer-only N`: its reconstructions of N held-out images beside N other held-out real images (the floor), both
against the same reference set, in the judge's features (one judge per folder, trained once and shared by every
row). The table gives held-out PSNR and codebook use per scale (train_tokenizer.py's metrics.json, 64 held-out
images), the reconstructions' Fréchet distance and its ratio to the real floor at matched N, the judge's accuracy on
the reconstructions and on the real images, and precision / recall. The rows differ only in the flags they name.

Equal compute is CPU seconds, as in bench/sweep_recipe.py (which explains why, on a shared machine, not wall-clock
minutes): a row's CPU seconds per step are measured by two short runs `--probe-steps` apart (startup cancels out;
probes are cached per architecture and batch, so rows that differ only in a loss share one), and the row trains
budget / cost steps with its learning-rate decay over exactly those steps. The steps and CPU seconds really used are
recorded beside the scores.

A GAN row names `--gan-from SHARE` (a sweep flag, not train_tokenizer.py's): the PatchGAN starts after that share of
the row's steps (`--disc-start` = SHARE × steps). A step with the discriminator on costs more, so such a row probes
both kinds of step and takes the steps whose CPU time, before and after the start, is the budget.

    python bench/sweep_tokenizer.py --data-path /tmp/real/grey32 --out-root /tmp/real/tok_grey --cpu-seconds 180 \
        --row default= --row l1="--mse-weight 0 --l1-weight 1" --row gan_half="--gan-from 0.5"
Each `--row NAME=FLAGS` adds one row; a row already scored (in `<out-root>/results.jsonl`) or started (its folder's
`started.json`; delete it to retry a row whose run died) is skipped, so the sweep can be extended, resumed, or run as
several processes over the same rows. `<out-root>/table.md` is rebuilt each time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

# Flags a row may not set: the driver owns them, so every row has the same budget, data and run layout.
OWNED_FLAGS = ("--minutes", "--steps", "--data-path", "--out-dir", "--threads", "--resume", "--disc-start",
               "--save-every", "--grid-every")
# Flags that change what a step costs (the architecture, the batch, the precision); the others share a probe.
COST_FLAGS = ("--preset", "--vocab-size", "--channels", "--patch-nums", "--batch-size", "--precision",
              "--perceptual-weights")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-path", required=True, help="image folder with train/ and val/ class folders")
    parser.add_argument("--out-root", required=True, help="one sub-folder per row, plus results.jsonl and table.md")
    parser.add_argument("--cpu-seconds", type=float, default=180.0, help="training CPU time of every row")
    parser.add_argument("--probe-steps", type=int, default=40, help="steps between the two short runs that "
                        "measure a row's CPU seconds per step")
    parser.add_argument("--probe-root", default=None, help="where the probes are cached (default: <out-root>/probes; "
                        "share it between folders of the same image size)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every script")
    parser.add_argument("--held-out", type=int, default=500, help="N of evaluate.py --tokenizer-only N")
    parser.add_argument("--row", action="append", default=[], help="NAME=FLAGS: a row and its train_tokenizer.py "
                        "flags (empty: today's defaults), plus --gan-from SHARE; repeat for more rows")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    return parser.parse_args(argv)


def parse_row(spec: str) -> tuple[str, list[str], float | None]:
    """'NAME=FLAGS' -> (NAME, [train_tokenizer.py flags], GAN start share or None); refuses the driver's flags."""
    name, sep, flags = spec.partition("=")
    if not sep or not name or "/" in name:
        raise ValueError(f"--row {spec!r}: expected NAME=FLAGS with a name that can be a folder, e.g. "
                         f"'l1=--mse-weight 0 --l1-weight 1' or 'default='")
    tokens, gan_from = shlex.split(flags), None
    if "--gan-from" in tokens:
        at = tokens.index("--gan-from")
        gan_from = float(tokens[at + 1])
        if not 0.0 <= gan_from < 1.0:
            raise ValueError(f"--row {name}: --gan-from is the share of the steps before the GAN starts, in [0, 1)")
        del tokens[at:at + 2]
    for token in tokens:
        if token.split("=")[0] in OWNED_FLAGS:
            raise ValueError(f"--row {name}: {token} is set by the sweep for every row (same budget, data and "
                             f"layout; a GAN start is --gan-from SHARE); remove it from the row")
    return name, tokens, gan_from


def cost_key(flags: list[str], gan: bool) -> str:
    """A folder name for the probe of a step's cost: only the flags that change it, and whether the GAN is on."""
    kept = []
    for index, token in enumerate(flags):
        if token in COST_FLAGS:
            kept.append(token.lstrip("-") + "_" + os.path.basename(flags[index + 1]))
    return "_".join(kept + (["gan"] if gan else [])) or "default"


def steps_for_budget(cpu_seconds: float, plain_cost: float, gan_cost: float | None, gan_from: float | None) -> int:
    """Equal compute: the steps whose CPU time is the budget, the share after the GAN's start at the GAN's cost."""
    per_step = plain_cost if gan_from is None else gan_from * plain_cost + (1 - gan_from) * gan_cost
    return max(1, round(cpu_seconds / per_step))


def train_command(args, run: str, flags: list[str], steps: int, disc_start: int | None = None) -> list[str]:
    """train_tokenizer.py for `steps` steps in folder `run`: the sweep's data and threads, then the row's flags."""
    command = [sys.executable, os.path.join(ROOT, "train_tokenizer.py"), "--data-path", args.data_path,
               "--out-dir", run, "--steps", str(steps), "--threads", str(args.threads), "--grid-every", "0",
               "--save-every", "0", *flags]
    return command + (["--disc-start", str(disc_start)] if disc_start is not None else [])


def evaluate_command(args, run: str) -> list[str]:
    """evaluate.py --tokenizer-only: the row's reconstructions beside the real floor at matched N, shared judge."""
    return [sys.executable, os.path.join(ROOT, "evaluate.py"), "--tokenizer-only", str(args.held_out),
            "--data-path", args.data_path, "--tokenizer", os.path.join(run, "checkpoint.pt"),
            "--judge", os.path.join(args.out_root, "judge.pt"), "--out", os.path.join(run, "ceiling.json")]


def timed(command: list[str], log_path: str, threads: int) -> tuple[float, float]:
    """Run a command with its output in a log; (wall seconds, CPU seconds of the child: user + system).
    OMP_NUM_THREADS holds evaluate.py (which has no --threads) to the sweep's threads."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def seconds_per_step(args, flags: list[str], gan: bool) -> float:
    """CPU seconds of one step with these flags (the GAN on from step 0 if `gan`): two short runs (cached)."""
    folder = os.path.join(args.probe_root or os.path.join(args.out_root, "probes"), cost_key(flags, gan))
    path = os.path.join(folder, "probe.json")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        cost_flags = [token for index, token in enumerate(flags)
                      if token in COST_FLAGS or (index and flags[index - 1] in COST_FLAGS)]
        cpu = [timed(train_command(args, os.path.join(folder, f"steps{steps}"), cost_flags, steps,
                                   0 if gan else None), os.path.join(folder, "probe.log"), args.threads)[1]
               for steps in (5, 5 + args.probe_steps)]
        with open(path, "w") as file:
            json.dump(dict(flags=cost_flags, gan=gan, cpu_seconds=cpu,
                           seconds_per_step=(cpu[1] - cpu[0]) / args.probe_steps), file)
    with open(path) as file:
        return json.load(file)["seconds_per_step"]


def score(run: str) -> dict:
    """One row's numbers: train_tokenizer.py's metrics.json and evaluate.py's ceiling.json, side by side."""
    with open(os.path.join(run, "metrics.json")) as file:
        metrics = json.load(file)
    with open(os.path.join(run, "ceiling.json")) as file:
        ceiling = json.load(file)
    return dict(psnr=metrics["psnr"], usage_per_scale=metrics["usage_per_scale"],
                fd_reconstructions=ceiling["frechet_distance_reconstructions"],
                fd_floor=ceiling["frechet_distance_real_floor"],
                fd_over_floor=ceiling["frechet_distance_reconstructions"] / ceiling["frechet_distance_real_floor"],
                judge_reconstructions=ceiling["judge_accuracy_reconstructions"],
                judge_real=ceiling["judge_accuracy_real"],
                precision=ceiling["precision_reconstructions"], recall=ceiling["recall_reconstructions"])


def table(results: list[dict]) -> str:
    """The markdown table: one line per scored row."""
    lines = ["| row | train_tokenizer.py flags | steps | train CPU s | PSNR dB | codes used per scale | "
             "rec. FD (floor) | × floor | judged right: rec. / real (×) | precision / recall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        s = result["score"]
        flags = " ".join(result["flags"] + ([f"--gan-from {result['gan_from']:g}"] if result["gan_from"] is not None
                                            else [])) or "(defaults)"
        lines.append(f"| {result['name']} | `{flags}` | {result['steps']} | {result['train_cpu_s']:.0f} | "
                     f"{s['psnr']:.2f} | {' / '.join(f'{u:.2f}' for u in s['usage_per_scale'])} | "
                     f"{s['fd_reconstructions']:.1f} ({s['fd_floor']:.1f}) | {s['fd_over_floor']:.2f}× | "
                     f"{100 * s['judge_reconstructions']:.1f}% / {100 * s['judge_real']:.1f}% "
                     f"({s['judge_reconstructions'] / max(s['judge_real'], 1e-12):.2f}×) | "
                     f"{s['precision']:.2f} / {s['recall']:.2f} |")
    return "\n".join(lines) + "\n"


def read_results(path: str) -> list[dict]:
    """The results so far, one per row (a row's latest line wins)."""
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return list({result["name"]: result for result in map(json.loads, file)}.values())


def claim(run: str) -> bool:
    """Mark a row as taken (its folder's started.json, created atomically), so that two processes of one sweep can
    be given the same rows and train each row once; False if another process took it."""
    os.makedirs(run, exist_ok=True)
    try:
        with open(os.path.join(run, "started.json"), "x") as file:
            json.dump(dict(pid=os.getpid(), time=time.time()), file)
        return True
    except FileExistsError:
        return False


def run_row(args, name: str, flags: list[str], gan_from: float | None) -> dict:
    """Train one row at the budget, score it, return its result line."""
    plain_cost = seconds_per_step(args, flags, gan=False)
    gan_cost = seconds_per_step(args, flags, gan=True) if gan_from is not None else None
    steps = steps_for_budget(args.cpu_seconds, plain_cost, gan_cost, gan_from)
    disc_start = round(gan_from * steps) if gan_from is not None else None
    run = os.path.join(args.out_root, name)
    os.makedirs(run, exist_ok=True)
    load_before = os.getloadavg()[0]
    train_wall, train_cpu = timed(train_command(args, run, flags, steps, disc_start), os.path.join(run, "sweep.log"),
                                  args.threads)
    load_after = os.getloadavg()[0]
    timed(evaluate_command(args, run), os.path.join(run, "sweep.log"), args.threads)
    return dict(name=name, flags=flags, gan_from=gan_from, disc_start=disc_start, steps=steps,
                seconds_per_step=plain_cost, gan_seconds_per_step=gan_cost, cpu_seconds_budget=args.cpu_seconds,
                train_wall_s=train_wall, train_cpu_s=train_cpu, load_before=load_before, load_after=load_after,
                score=score(run))


def main(argv=None):
    args = parse_args(argv)
    try:
        rows = [parse_row(spec) for spec in args.row]
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    if args.dry_run:
        for name, flags, gan_from in rows:
            run = os.path.join(args.out_root, name)
            print(shlex.join(train_command(args, run, flags, 0, 0 if gan_from is not None else None)))
            print(shlex.join(evaluate_command(args, run)))
        return
    os.makedirs(args.out_root, exist_ok=True)
    results_path = os.path.join(args.out_root, "results.jsonl")
    for name, flags, gan_from in rows:
        if name in {result["name"] for result in read_results(results_path)}:
            print(f"{name}: already scored; skipped")
            continue
        if not claim(os.path.join(args.out_root, name)):
            print(f"{name}: started by another process of this sweep; skipped")
            continue
        result = run_row(args, name, flags, gan_from)
        with open(results_path, "a") as file:
            file.write(json.dumps(result) + "\n")
        text = table(read_results(results_path))
        with open(os.path.join(args.out_root, "table.md"), "w") as file:
            file.write(text)
        print(text.splitlines()[-1], flush=True)


if __name__ == "__main__":
    sys.exit(main())
