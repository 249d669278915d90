"""Sweep train_var.py's recipe on a small real image folder at fixed compute: one table row per setting.

Every row trains a VAR with the same frozen tokenizer and the same training compute, `--cpu-seconds` of CPU time,
then draws `--per-class` samples per class with sample.py at ONE fixed sampling setting (`--cfg`, `--top-p`, passed
explicitly so no run's own sampling.json changes it), and scores them with evaluate.py at matched N: judge accuracy,
Fréchet distance in the judge's features, that distance over the real-vs-real floor and over the tokenizer's
reconstructions (the ceiling), precision / recall. The rows differ only in the flags they name.

Why CPU seconds and not train_var.py --minutes: on a machine shared with other jobs a process gets a changing share
of a core, so equal wall-clock minutes buy very different amounts of training (and --minutes fixes its total from
its first steps' speed, so a load that changes later stretches or shrinks the run). CPU time counts only the time
the process ran. Each row's cost per step is measured first, as the CPU-time difference of two short runs of the
same architecture and batch (`--probe-steps` apart; startup cancels out), and the row then trains for
--cpu-seconds / (cost per step) steps, with the learning-rate decay over exactly those steps. The steps and the CPU
seconds each run really used are recorded beside its scores.

The dataset is tokenized once: a first 2-step run builds `<out-root>/token_cache.pt` (train_var.py's cache, keyed by
the tokenizer's and the data's fingerprints) and every run starts from a copy, so no row spends its budget encoding.
The judge is trained once (`<out-root>/judge.pt`) and shared by every row.

    python bench/sweep_recipe.py --data-path /tmp/photos32 --tokenizer /tmp/sweep/tok/checkpoint.pt \
        --out-root /tmp/sweep --cpu-seconds 200 --row default= --row d3w96="--depth 3 --width 96"
Each `--row NAME=FLAGS` adds one row. A row already trained (its `trained.json`) is not trained again, only sampled
and scored at this call's `--cfg` / `--top-p` unless `<out-root>/results.jsonl` already holds that result; so the
sweep can be extended, resumed, rescored at another sampling setting, or run as two processes on two cores over
disjoint rows (one appended results.jsonl line per result; `<out-root>/table.md` is rebuilt from it each time).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time

# Flags a row may not set: the driver owns them, so every row has the same budget, data, tokenizer and run layout.
OWNED_FLAGS = ("--minutes", "--steps", "--sample-every", "--data-path", "--tokenizer", "--out-dir", "--threads", "--resume")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-path", required=True, help="image folder with train/ and val/ class folders")
    parser.add_argument("--tokenizer", required=True, help="the train_tokenizer.py checkpoint every row uses")
    parser.add_argument("--out-root", required=True, help="one sub-folder per row, plus results.jsonl and table.md")
    parser.add_argument("--cpu-seconds", type=float, default=200.0, help="training CPU time of every row")
    parser.add_argument("--probe-steps", type=int, default=100, help="steps between the two short runs that "
                        "measure a row's CPU seconds per step")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every script")
    parser.add_argument("--row", action="append", default=[], help="NAME=FLAGS: a row and its train_var.py flags "
                        "(empty: today's defaults); repeat for more rows")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance of every row's samples")
    parser.add_argument("--top-p", type=float, default=0.8, help="nucleus mass of every row's samples")
    parser.add_argument("--per-class", type=int, default=50, help="samples per class of every row")
    parser.add_argument("--train-only", action="store_true", help="train the rows, score none (score them later, "
                        "e.g. once the sampling setting is chosen)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    return parser.parse_args(argv)


def parse_row(spec: str) -> tuple[str, list[str]]:
    """'NAME=FLAGS' -> (NAME, [flags]); refuses the flags the driver owns, which would break equal compute."""
    name, sep, flags = spec.partition("=")
    if not sep or not name or "/" in name:
        raise ValueError(f"--row {spec!r}: expected NAME=FLAGS with a name that can be a folder, e.g. "
                         f"'lr2x=--base-learning-rate 0.096' or 'default='")
    tokens = shlex.split(flags)
    for token in tokens:
        if token.split("=")[0] in OWNED_FLAGS:
            raise ValueError(f"--row {name}: {token} is set by the sweep for every row (same budget, data and "
                             f"tokenizer); remove it from the row")
    return name, tokens


# Flags that change what a step costs (the architecture, the batch, the EMA update); the others share a probe.
COST_FLAGS = ("--preset", "--depth", "--width", "--batch-size", "--ema", "--precision")


def cost_key(flags: list[str]) -> str:
    """A folder name for the probe of a row's cost per step: only the flags that change that cost."""
    kept, index = [], 0
    while index < len(flags):
        name = flags[index].split("=")[0]
        takes_value = "=" not in flags[index] and index + 1 < len(flags) and not flags[index + 1].startswith("--")
        if name in COST_FLAGS:
            kept.append(flags[index].lstrip("-") + (("_" + flags[index + 1]) if takes_value else ""))
        index += 2 if takes_value else 1
    return "_".join(kept) or "default"


def train_command(args, run: str, flags: list[str], steps: int) -> list[str]:
    """train_var.py for `steps` steps in folder `run`: the sweep's data, tokenizer and threads, then the row's flags."""
    return [sys.executable, os.path.join(ROOT, "train_var.py"), "--data-path", args.data_path, "--tokenizer",
            args.tokenizer, "--out-dir", run, "--steps", str(steps), "--threads", str(args.threads),
            "--sample-every", "0", *flags]


def samples_folder(args) -> str:
    """Each sampling setting of a run gets its own folder, so one trained row can be scored at several."""
    return f"samples_cfg{args.cfg:g}_top_p{args.top_p:g}"


def commands(args, name: str, flags: list[str], steps: int) -> list[list[str]]:
    """The three commands of one row: train (its steps), sample (fixed setting), evaluate (matched N)."""
    run = os.path.join(args.out_root, name)
    return [
        train_command(args, run, flags, steps),
        [sys.executable, os.path.join(ROOT, "sample.py"), "--checkpoint", os.path.join(run, "checkpoint.pt"),
         "--out-dir", os.path.join(run, samples_folder(args)), "--per-class", str(args.per_class), "--cfg", str(args.cfg),
         "--top-p", str(args.top_p), "--top-k", "0", "--threads", str(args.threads)],
        [sys.executable, os.path.join(ROOT, "evaluate.py"), "--samples",
         os.path.join(run, samples_folder(args), "samples.npz"),
         "--data-path", args.data_path, "--tokenizer", args.tokenizer,
         "--judge", os.path.join(args.out_root, "judge.pt")],
    ]


def steps_for_budget(cpu_seconds: float, seconds_per_step: float) -> int:
    """Equal compute: the steps whose CPU time is the budget (at least one)."""
    return max(1, round(cpu_seconds / seconds_per_step))


def timed(command: list[str], log_path: str) -> tuple[float, float]:
    """Run a command with its output in a log; (wall seconds, CPU seconds of the child: user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def table(results: list[dict]) -> str:
    """The README table: one line per row, scores from evaluate.py's report."""
    lines = ["| row | train_var.py flags | steps | train CPU s | cfg, top-p | judged right | FD | × floor | × ceiling | "
             "precision / recall |", "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        report = result["report"]
        lines.append(f"| {result['name']} | `{' '.join(result['flags']) or '(defaults)'}` | {result['steps']} | "
                     f"{result['train_cpu_s']:.0f} | {result['cfg']:g}, {result['top_p']:g} | {100 * report['judge_accuracy_samples']:.1f}% | "
                     f"{report['frechet_distance_samples']:.1f} | "
                     f"{report['frechet_distance_samples_over_floor']:.1f}× | "
                     f"{report['frechet_distance_samples_over_reconstructions']:.2f}× | "
                     f"{report['precision_samples']:.2f} / {report['recall_samples']:.2f} |")
    return "\n".join(lines) + "\n"


def copy_cache(args, run: str) -> None:
    """Start a run folder from the shared token cache (train_var.py checks its fingerprints: a stale copy is rebuilt)."""
    os.makedirs(run, exist_ok=True)
    shutil.copyfile(os.path.join(args.out_root, "token_cache.pt"), os.path.join(run, "token_cache.pt"))


def prepare(args) -> None:
    """Encode the dataset once (the shared token cache) and train the shared judge, unless both exist."""
    cache, judge = os.path.join(args.out_root, "token_cache.pt"), os.path.join(args.out_root, "judge.pt")
    if os.path.exists(cache) and os.path.exists(judge):
        return
    run = os.path.join(args.out_root, "prepare")
    log_path = os.path.join(args.out_root, "prepare.log")
    timed(train_command(args, run, [], 2), log_path)
    shutil.copyfile(os.path.join(run, "token_cache.pt"), cache)
    _, sample, evaluate = commands(args, "prepare", [], 2)
    timed(sample, log_path)
    timed(evaluate, log_path)  # trains and saves the judge; this 2-step model's scores are not used


def seconds_per_step(args, flags: list[str]) -> float:
    """CPU seconds of one training step with these flags: two short runs, `--probe-steps` apart (cached on disk)."""
    folder = os.path.join(args.out_root, "probes", cost_key(flags))
    path = os.path.join(folder, "probe.json")
    if not os.path.exists(path):
        cpu = []
        for steps in (5, 5 + args.probe_steps):
            run = os.path.join(folder, f"steps{steps}")
            copy_cache(args, run)
            cpu.append(timed(train_command(args, run, flags, steps), os.path.join(folder, "probe.log"))[1])
        with open(path, "w") as file:
            json.dump(dict(flags=flags, cpu_seconds=cpu, seconds_per_step=(cpu[1] - cpu[0]) / args.probe_steps),
                      file)
    with open(path) as file:
        return json.load(file)["seconds_per_step"]


def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def main(argv=None):
    args = parse_args(argv)
    rows = [parse_row(spec) for spec in args.row]  # every spec is checked before anything runs
    if args.dry_run:
        for name, flags in rows:
            print("\n".join(shlex.join(command) for command in commands(args, name, flags, steps=0)))
        return
    os.makedirs(args.out_root, exist_ok=True)
    results_path = os.path.join(args.out_root, "results.jsonl")
    prepare(args)
    for name, flags in rows:
        if any(result["name"] == name and result["cfg"] == args.cfg and result["top_p"] == args.top_p
               for result in read_results(results_path)):
            print(f"{name}: already measured at cfg {args.cfg}, top-p {args.top_p}; skipped")
            continue
        run = os.path.join(args.out_root, name)
        trained_path = os.path.join(run, "trained.json")
        if not os.path.exists(trained_path):  # a row already trained is only sampled again (another setting)
            per_step = seconds_per_step(args, flags)
            steps = steps_for_budget(args.cpu_seconds, per_step)
            copy_cache(args, run)
            load_before = os.getloadavg()[0]
            train_wall, train_cpu = timed(commands(args, name, flags, steps)[0], os.path.join(run, "sweep.log"))
            with open(trained_path, "w") as file:
                json.dump(dict(name=name, flags=flags, steps=steps, probe_seconds_per_step=per_step,
                               cpu_seconds_budget=args.cpu_seconds, train_wall_s=train_wall, train_cpu_s=train_cpu,
                               load_before=load_before, load_after=os.getloadavg()[0]), file)
        with open(trained_path) as file:
            trained = json.load(file)
        if trained["flags"] != flags:
            raise SystemExit(f"error: row {name} was trained with {trained['flags']}, not {flags}: use a new name")
        if args.train_only:
            continue
        _, sample, evaluate = commands(args, name, flags, trained["steps"])
        timed(sample, os.path.join(run, "sweep.log"))
        timed(evaluate, os.path.join(run, "sweep.log"))
        with open(os.path.join(run, samples_folder(args), "evaluation.json")) as file:
            report = json.load(file)
        with open(results_path, "a") as file:
            file.write(json.dumps(dict(trained, cfg=args.cfg, top_p=args.top_p, report=report)) + "\n")
        text = table(read_results(results_path))
        with open(os.path.join(args.out_root, "table.md"), "w") as file:
            file.write(text)
        print(text.splitlines()[-1], flush=True)


if __name__ == "__main__":
    sys.exit(main())
