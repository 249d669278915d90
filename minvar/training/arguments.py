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


def add_common_arguments(parser, out_dir: str, image_size, image_size_help: str) -> None:
    """The flags both training scripts share (run folder, resume, seed, device, precision, data, logging)."""
    parser.add_argument("--out-dir", default=out_dir, help="run folder: log.txt, checkpoint.pt, image grids")
    parser.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt exactly")
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


def add_speed_arguments(parser) -> None:
    """--precision and --threads (shared by the training scripts and sample.py)."""
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="bf16 = bfloat16 autocast; auto = bf16 where the device computes it natively (CUDA "
                             "with bf16 support, CPUs with AVX512-BF16 or AMX), fp32 elsewhere (emulated bf16 is "
                             "about 10x slower) (default %(default)s)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="CPU threads for torch (0: torch's default, one per core); on a machine shared with "
                             "other jobs, 1 is often faster (default %(default)s)")
