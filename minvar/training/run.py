"""The run folder: where a training run starts (or resumes) and what it writes as it goes (log.txt, progress).

Both training scripts begin with `start_run` (process group, device, threads, precision, the checkpoint to resume
from) and log through `RunLog`; `is_due` decides when a periodic log line, grid or checkpoint is written.
"""
from __future__ import annotations

import os
import time

from tqdm import tqdm

from minvar.io.checkpoint import CheckpointError, load_checkpoint
from minvar.training.distributed import Distributed, resolve_device, setup_distributed
from minvar.training.precision import resolve_precision, set_threads


def resume_from(out_dir: str, kind: str, resume: bool):
    """(checkpoint path, the checkpoint dict to resume from or None); a missing or wrong file ends the script."""
    path = os.path.join(out_dir, "checkpoint.pt")
    if not resume:
        return path, None
    if not os.path.exists(path):
        raise SystemExit(f"error: --resume given but {path} does not exist")
    try:
        return path, load_checkpoint(path, kind)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")


def start_run(args, kind: str):
    """Step 1 of both training scripts: join the process group (under torchrun), pick the device, the CPU threads
    and the precision, and read the checkpoint to resume from.

    Writes the resolved precision back into `args` ('auto' becomes what runs: 'fp32' or 'bf16'), so that the run
    log and the checkpoint record it. Returns (distributed, device, checkpoint path, the
    checkpoint dict to resume from or None).
    """
    distributed = setup_distributed(args.device)
    device = resolve_device(args.device, distributed)
    set_threads(args.threads)
    args.precision = resolve_precision(args.precision, device)
    checkpoint_path, resumed = resume_from(args.out_dir, kind, args.resume)
    return distributed, device, checkpoint_path, resumed


class RunLog:
    """Appends lines to `<out_dir>/log.txt` (rank 0 only) and times throughput."""

    def __init__(self, out_dir: str, distributed: Distributed):
        self.path = os.path.join(out_dir, "log.txt")
        self.enabled = distributed.is_main
        self.last_time, self.last_step = time.time(), None
        if self.enabled:
            os.makedirs(out_dir, exist_ok=True)

    def write(self, line: str) -> None:
        if self.enabled:
            with open(self.path, "a") as file:
                file.write(line.rstrip() + "\n")

    def images_per_second(self, step: int, images_per_step: int) -> float:
        """Images per second since the previous call, or since `start`: (steps done since then) × images per step."""
        now = time.time()
        rate = (step - self.last_step) * images_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        return rate

    def start(self, step: int) -> None:
        """Restart the throughput clock at `step` (the first step this process trains)."""
        self.last_time, self.last_step = time.time(), step


def progress_bar(loader, start_step: int, total: int, distributed: Distributed, desc: str):
    """tqdm over a training loader, counting from the step a run starts at (a resumed run's); on rank 0 only."""
    return tqdm(loader, initial=start_step, total=total, disable=not distributed.is_main, desc=desc,
                dynamic_ncols=True)


def is_due(done: int, every: int, last: int) -> bool:
    """Whether a periodic action (log, grid, checkpoint) runs after `done` steps: every `every` steps and after the
    last one; `every` = 0 means only after the last."""
    return done == last or (every > 0 and done % every == 0)
