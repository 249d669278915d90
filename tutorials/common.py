"""What every tutorial needs before it can start teaching: flags, threads, and a trained tokenizer / VAR.

Not a tutorial itself: the numbered files import it so that each of them can stay about one idea.

Models come from, in this order:
  1. the quickstart run, `runs/tokenizer/checkpoint.pt` and `runs/var/checkpoint.pt`
     (made by `python train_tokenizer.py && python train_var.py`, or by `python tutorials/03_training.py`);
  2. otherwise a small *stand-in* run that the tutorial trains itself with the same two scripts and very few steps,
     kept in `<out-dir>/standin_fast/` or `<out-dir>/standin_full/` and reused by the next tutorial.
A stand-in shows the mechanics, not good pictures: its tokenizer has seen a few hundred images at most.

Flags: from the command line when a tutorial runs as a script. Inside a Jupyter kernel (a tutorial opened as a
notebook in Jupyter, VS Code or PyCharm) `sys.argv` holds the kernel's own arguments (`-f .../kernel.json`), so the
flags are read from the environment variable MINVAR_TUTORIAL_ARGS instead (split as a shell would, empty by default),
e.g. `MINVAR_TUTORIAL_ARGS="--fast --seed 1"`. In a kernel, figures are also shown in the notebook as they are saved.
"""
import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

# The tutorials import the library and the training scripts from the repository root, whatever the working folder.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib
import torch

from minvar.io.checkpoint import load_tokenizer, load_var, read_file

# Stand-in runs: (tokenizer steps, VAR steps, batch size), far fewer than the quickstart's defaults (scripts' --help).
STANDIN_RECIPES = {"fast": (8, 8, 4), "full": (150, 150, 16)}
# Where a tutorial run as a notebook reads its flags (sys.argv belongs to the kernel there).
ARGS_VARIABLE = "MINVAR_TUTORIAL_ARGS"


def in_notebook_kernel() -> bool:
    """True when the tutorial runs inside a Jupyter kernel (Jupyter, VS Code or PyCharm notebooks)."""
    return "ipykernel" in sys.modules


if not in_notebook_kernel():
    matplotlib.use("Agg")  # write PNG files, never open a window (works on servers and in tests)


def parse_args(description: str, extra=None, argv=None):
    """The flags every tutorial shares, plus the tutorial's own (`extra(parser)` adds them).

    `argv=None` reads the command line, or MINVAR_TUTORIAL_ARGS inside a notebook kernel (module docstring).
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="tiny settings that run in seconds (used by the tests)")
    parser.add_argument("--out-dir", default=str(REPO_ROOT / "tutorials" / "figures"),
                        help="where figures (and stand-in runs) are written")
    parser.add_argument("--runs-dir", default=str(REPO_ROOT / "runs"),
                        help="folder holding the quickstart's tokenizer/ and var/ run folders")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 1 is predictable on a shared "
                        "machine (see bench/README.md), 0 keeps torch's default (one per core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random in the tutorial")
    if extra is not None:
        extra(parser)
    if argv is None and in_notebook_kernel():
        argv = shlex.split(os.environ.get(ARGS_VARIABLE, ""))  # not sys.argv: the kernel's `-f kernel.json`
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    return args


def settings_key(settings: dict) -> str:
    """A short hash of a JSON-able dict of settings: the name of a cached run made with exactly those settings.

    Tutorials that reuse what they trained before (07's tokenizers and models) store the dict beside the checkpoint
    and reuse it only if every entry matches: the data, the tokenizer, the seed and every training setting.
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached(folder: str, settings: dict):
    """(path of the checkpoint for these settings, True if a finished run with exactly them is already there)."""
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, settings_key(settings))
    try:
        with open(stem + ".json") as file:
            same = json.load(file) == json.loads(json.dumps(settings, default=str))
    except (OSError, ValueError):
        same = False
    return stem + ".pt", same and os.path.isfile(stem + ".pt")


def mark_cached(checkpoint_path: str, settings: dict) -> None:
    """Write the settings beside a finished checkpoint (after it, so a killed run is never reused)."""
    with open(os.path.splitext(checkpoint_path)[0] + ".json", "w") as file:
        json.dump(settings, file, indent=1, sort_keys=True, default=str)


def section(title: str) -> None:
    """A visible heading in the printed story."""
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}")


def save_figure(figure, out_dir: str, name: str, title: str = None, title_size: float = 10, no_ticks=()) -> str:
    """Finish a matplotlib figure and save it as PNG: hide the ticks of the `no_ticks` axes (pictures have no axis
    numbers worth reading), set `title` as the figure's title, save, show it when in a notebook, close it, and say
    where it went."""
    import matplotlib.pyplot as plt
    for ax in no_ticks:
        ax.set_xticks([])
        ax.set_yticks([])
    if title is not None:
        figure.suptitle(title, fontsize=title_size)
    path = os.path.join(out_dir, name)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    if "inline" in matplotlib.get_backend():  # a notebook's inline backend: show it below the cell
        from IPython.display import display
        display(figure)
    plt.close(figure)
    print(f"[figure] {path}")
    return path


def note_standin(source: str, message: str) -> None:
    """Print `message` only when the models came from a stand-in run (`source` is their path, see get_models):
    a few training steps make blurry blobs, and the reader should know that is expected."""
    if "standin" in source:
        print(message)


# ----------------------------------------------------------------------------------------------------------------
# trained models
def quickstart_paths(args):
    """Where the quickstart's checkpoints would be."""
    return (os.path.join(args.runs_dir, "tokenizer", "checkpoint.pt"),
            os.path.join(args.runs_dir, "var", "checkpoint.pt"))


def train_standin(folder: str, fast: bool, which=("tokenizer", "var"), fresh: bool = False) -> None:
    """Train the tokenizer and/or the VAR of a stand-in run by calling the scripts' `main` with few steps.

    These are exactly the quickstart's commands with fewer steps (and a smaller batch): see tutorial 03.
    `fresh` deletes the run folders first (log.txt is appended to, so an old run would mix into the new curves).
    """
    import train_tokenizer
    import train_var
    tokenizer_steps, var_steps, batch = STANDIN_RECIPES["fast" if fast else "full"]
    log_every = "2" if fast else "10"
    tokenizer_dir, var_dir = os.path.join(folder, "tokenizer"), os.path.join(folder, "var")
    if "tokenizer" in which:
        if fresh:
            shutil.rmtree(tokenizer_dir, ignore_errors=True)
        print(f"training a stand-in tokenizer: {tokenizer_steps} steps of {batch} images -> {tokenizer_dir}")
        train_tokenizer.main(["--out-dir", tokenizer_dir, "--device", "cpu", "--steps", str(tokenizer_steps),
                              "--batch-size", str(batch), "--warmup-steps", str(max(tokenizer_steps // 10, 1)),
                              "--log-every", log_every])
    if "var" in which:
        if fresh:
            shutil.rmtree(var_dir, ignore_errors=True)
        print(f"training a stand-in VAR: {var_steps} steps of {batch} images -> {var_dir}")
        train_var.main(["--out-dir", var_dir, "--device", "cpu", "--tokenizer",
                        os.path.join(tokenizer_dir, "checkpoint.pt"), "--steps", str(var_steps),
                        "--batch-size", str(batch), "--log-every", log_every])


def standin_folder(args) -> str:
    return os.path.join(args.out_dir, "standin_fast" if args.fast else "standin_full")


def get_tokenizer(args):
    """The quickstart tokenizer, or a stand-in one (trained now if needed). Returns (vae, where it came from)."""
    tokenizer_path, _ = quickstart_paths(args)
    if os.path.isfile(tokenizer_path):
        print(f"using the quickstart tokenizer {tokenizer_path}")
        return load_tokenizer(tokenizer_path), tokenizer_path
    folder = standin_folder(args)
    path = os.path.join(folder, "tokenizer", "checkpoint.pt")
    if not os.path.isfile(path):
        print(f"no quickstart tokenizer at {tokenizer_path}: training a small stand-in (pictures will be poor; run "
              f"`python train_tokenizer.py && python train_var.py` for the real thing)")
        train_standin(folder, args.fast, which=("tokenizer",))
    else:
        print(f"no quickstart tokenizer: reusing the stand-in {path}")
    return load_tokenizer(path), path


def get_models(args):
    """(vae, var, class_names, where): the quickstart pair, or a stand-in pair (trained now if needed).

    The tokenizer is the one the VAR was trained with: embedded in small VAR checkpoints, otherwise its recorded path.
    """
    _, var_path = quickstart_paths(args)
    if os.path.isfile(var_path):
        print(f"using the quickstart VAR {var_path}")
    else:
        folder = standin_folder(args)
        var_path = os.path.join(folder, "var", "checkpoint.pt")
        if not os.path.isfile(var_path):
            print(f"no quickstart VAR in {args.runs_dir}: training a small stand-in (pictures will be poor; run "
                  f"`python train_tokenizer.py && python train_var.py` for the real thing)")
            have_tokenizer = os.path.isfile(os.path.join(folder, "tokenizer", "checkpoint.pt"))
            train_standin(folder, args.fast, which=("var",) if have_tokenizer else ("tokenizer", "var"))
        else:
            print(f"no quickstart VAR: reusing the stand-in {var_path}")
    data = read_file(var_path)
    var = load_var(data)  # eval mode, EMA weights if the run kept them
    vae = load_tokenizer(data["tokenizer"] if data.get("tokenizer") else data["tokenizer_path"])
    class_names = data.get("class_names") or [str(i) for i in range(var.num_classes)]
    return vae, var, class_names, var_path


def read_log(path: str):
    """Every number of a run's log.txt as {name: (steps, values)}, e.g. {"loss": ([50, 100], [0.8, 0.3]), ...}.

    Training lines read "step N loss X rec Y vq Z lr ...": each "name number" pair becomes a series. The tokenizer's
    "step N held-out {json}" lines give "held-out psnr" etc. A resumed run appends to the same log, so a step seen
    twice keeps its latest value.
    """
    pair = re.compile(r"([A-Za-z_/]+) ([-+]?\d[\d.]*(?:[eE][-+]?\d+)?)")
    series = {}
    with open(path) as file:
        for line in file:
            match = re.match(r"step (\d+) (.*)", line)
            if not match:
                continue  # "args: ...", "step 300: restarted 12 dead codes", ...
            step, rest = int(match.group(1)), match.group(2)
            if rest.startswith("held-out "):
                numbers = {f"held-out {name}": value for name, value in json.loads(rest[len("held-out "):]).items()
                           if isinstance(value, (int, float))}
            else:
                numbers = {name: float(value) for name, value in pair.findall(rest)}
            for name, value in numbers.items():
                series.setdefault(name, {})[step] = value
    return {name: (sorted(values), [values[s] for s in sorted(values)]) for name, values in series.items()}
