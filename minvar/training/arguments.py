"""Command-line flags shared by the scripts, and argparse validators that reject a bad value at parse time.

A bad number ends a script with "argument --per-class: must be a positive integer, got -3" instead of a traceback
from deep inside the run (CONTRIBUTING.md, "Scripts").
"""
from __future__ import annotations

import argparse
import math


# argparse `type=` validators for counts, sizes and probabilities: a bad value ends the script at parse time with
# "argument --per-class: must be a positive integer, got -3" instead of a traceback deep inside the run.
def _number(text: str, kind, accept, wanted: str):
    """Convert `text` with `kind` and check it with `accept`; argparse turns ArgumentTypeError into the message
    above, naming the flag. Two messages: one for text that is no number at all (quoted, as the user typed it),
    one for a number out of range."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def positive_int(text: str) -> int:
    """A count or size of at least 1 (steps, batch size, image size, samples per class)."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """A count where 0 means "none" or "only at the end" (workers, warmup steps, --log-every, top-k)."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def probability(text: str) -> float:
    """A probability, share or decay in [0, 1] (dropout rate, top-p mass, label smoothing, EMA decay)."""
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def positive_float(text: str) -> float:
    """A strictly positive size, such as a learning rate."""
    return _number(text, float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def non_negative_float(text: str) -> float:
    """A loss weight or a clipping norm, where 0 switches the term off."""
    return _number(text, float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")


# The flags both trainers let a resumed run change (each change is logged): how long it trains, how often it logs
# and saves, and the machine it runs on. Any other flag given with --resume must match the checkpoint.
MAY_CHANGE_ON_RESUME = ("steps", "log_every", "save_every", "save_minutes", "device", "precision", "threads",
                        "workers")
# The machine's flags: a resumed run takes them from its own command line (or their defaults), never from the
# checkpoint, which may come from another machine. They change how fast a step runs, not which steps run.
MACHINE_FLAGS = ("device", "precision", "threads", "workers", "compile")


def add_common_arguments(parser, out_dir: str, image_size, image_size_help: str, may_change) -> None:
    """The flags both training scripts share (run folder, resume, seed, device, precision, data, logging).

    `may_change`: the dests of the flags a resumed run may change, listed in --resume's help.
    """
    parser.add_argument("--out-dir", default=out_dir, help="run folder: log.txt, checkpoint.pt, image grids")
    # --resume's help is built from the lists above, so it cannot disagree with what the resume check allows
    machine = ", ".join("--" + name for name in MACHINE_FLAGS if name in may_change)
    parser.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt exactly. "
                        f"Flags left out take the checkpoint's values ({machine}: this machine's); of the flags "
                        "given, only "
                        f"{', '.join('--' + name.replace('_', '-') for name in may_change)} may differ from the "
                        "checkpoint's (each change is logged), any other is an error")
    parser.add_argument("--move-old-run", action="store_true", help="if <out-dir> holds a run, move it aside to a new "
                        "folder <out-dir>-old-N (printed) and start a new run; without it a new run into a folder "
                        "with a checkpoint is refused")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init, the data order and label dropout")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', or 'auto' (CUDA when present)")
    add_speed_arguments(parser)
    parser.add_argument("--data-path", default=None, help="image folder (one sub-folder per class); "
                        "absent: the built-in shapes dataset")
    parser.add_argument("--image-size", type=positive_int, default=image_size, help=image_size_help)
    parser.add_argument("--num-images", type=positive_int, default=20_000, help="size of the built-in dataset")
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips")
    parser.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    parser.add_argument("--log-every", type=non_negative_int, default=50,
                        help="steps between log.txt lines (0: only at the end)")
    parser.add_argument("--save-every", type=non_negative_int, default=500,
                        help="steps between checkpoints (0: only at the end)")
    parser.add_argument("--save-minutes", type=non_negative_float, default=10.0, help="minutes of wall-clock time "
                        "between checkpoints, besides --save-every (0: by steps only); bounds what a crash or a "
                        "SIGKILL can lose (Ctrl-C, SIGTERM and SIGUSR1 save at the step reached)")


def given_flags(parser: argparse.ArgumentParser, argv=None) -> set:
    """The dests of the flags typed on the command line, as opposed to those left at their argparse defaults.

    argparse writes a default only into a namespace that lacks the attribute, so parsing into a namespace that
    already holds a marker for every dest leaves the marker exactly where no flag was given.
    """
    unset = object()  # a marker no flag can produce, so "given" is exact even for flags whose default is None
    namespace = argparse.Namespace(**{action.dest: unset for action in parser._actions})
    parsed = parser.parse_args(argv, namespace=namespace)
    return {name for name, value in vars(parsed).items() if value is not unset}


def add_speed_arguments(parser) -> None:
    """--precision and --threads (shared by the training scripts and sample.py)."""
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="bf16 = bfloat16 autocast; auto = bf16 where the device computes it natively (CUDA "
                             "with bf16 support, CPUs with AVX512-BF16 or AMX), fp32 elsewhere (emulated bf16 is "
                             "many times slower than fp32) (default %(default)s)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="CPU threads for torch (0: torch's default, one per core); on a machine shared with "
                             "other jobs, 1 is often faster (default %(default)s)")
