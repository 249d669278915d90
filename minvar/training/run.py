"""The run folder: where a training run starts (or resumes), what it writes as it goes (log.txt, progress), and
how it protects the folder.

Both training scripts run inside `open_run` (process group, device, threads, precision, the folder's lock, the stop
signals, the checkpoint to resume from, and the flags reconciled with it) and log through `RunLog`; `is_due` decides
when a periodic log line, grid or checkpoint is written.

A run folder holds one run. A new run into a folder that holds a checkpoint is refused (it would overwrite it at its
first save) unless --move-old-run moves the old run aside; a second run into a folder that a live run uses is refused
(`fcntl.flock` on `<out-dir>/run.lock`: the kernel drops the lock when its process dies, even by SIGKILL, so no stale
lock ever blocks the next run). With --resume, the flags are reconciled with the checkpoint's: flags left out take
the checkpoint's values, and a flag given with another value is an error unless it is one that may change on resume.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from minvar.io.checkpoint import CheckpointError, load_checkpoint
from minvar.training.arguments import MACHINE_FLAGS
from minvar.training.distributed import Distributed, resolve_device, setup_distributed
from minvar.training.precision import resolve_precision, set_threads
from minvar.training.stops import StopSignals

LOCK_FILE = "run.lock"
# Where the run is and how it starts: never compared with the checkpoint.
NOT_COMPARED = ("out_dir", "resume", "move_old_run")
# Files named by path: the same file may be given as a relative or an absolute path.
PATH_FLAGS = ("tokenizer", "data_path", "perceptual_weights", "lpips_weights")


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


def lock_folder(out_dir: str):
    """(the open lock file, None) if this process now holds `<out_dir>/run.lock`, else (None, the holder's pid).

    The lock lives as long as the file stays open. POSIX: `flock`; Windows: `msvcrt.locking` of the first byte (a
    locked byte cannot be read there, so the holder's pid is not known).
    """
    file = open(os.path.join(out_dir, LOCK_FILE), "a+")  # "a+": create if missing, never truncate a holder's pid
    try:
        if os.name == "nt":
            import msvcrt
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by another live process: read its pid for the message, and give up the file
        try:
            file.seek(0)
            holder = file.read().strip() or "unknown"
        except OSError:
            holder = "unknown"
        file.close()
        return None, holder
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")  # for the message of a run refused while this one lives
    file.flush()
    return file, None


def move_aside(out_dir: str) -> str:
    """Move everything in `out_dir` but the lock into a new sibling folder `<out_dir>-old-N`; returns its path.

    The lock file stays, so the folder is never unlocked while the new run starts in it.
    """
    base = os.path.normpath(out_dir)
    number = 1
    while os.path.exists(f"{base}-old-{number}"):
        number += 1
    target = f"{base}-old-{number}"
    os.makedirs(target)
    for name in os.listdir(out_dir):
        if name != LOCK_FILE:
            os.replace(os.path.join(out_dir, name), os.path.join(target, name))
    return target


def claim_folder(args):
    """(lock file, None) if this process may run in args.out_dir, else (None, the error message).

    The lock comes first, so that a live run's folder is never judged, or moved, under it.
    """
    os.makedirs(args.out_dir, exist_ok=True)
    lock, holder = lock_folder(args.out_dir)
    if lock is None:
        return None, (f"error: {args.out_dir} is in use by another run (process {holder}); wait for it to end, or "
                      f"choose another --out-dir")
    for name in os.listdir(args.out_dir):  # atomic_save's temporary files, left by a run killed during a save
        if name.startswith(".tmp-") and name.endswith(".pt"):
            os.remove(os.path.join(args.out_dir, name))
    checkpoint = os.path.join(args.out_dir, "checkpoint.pt")
    if not args.resume and os.path.exists(checkpoint):
        if not args.move_old_run:
            lock.close()
            return None, (f"error: {args.out_dir} already holds a run ({checkpoint}); continue it with --resume, or "
                          f"start a new run in a new --out-dir, or add --move-old-run to move the old run aside to "
                          f"a new folder (nothing is deleted)")
        print(f"--move-old-run: moved the old run in {args.out_dir} to {move_aside(args.out_dir)}")
    return lock, None


def claim_folder_everywhere(args, distributed: Distributed):
    """`claim_folder` on rank 0 only; every process learns the outcome, so that all of them exit if it failed."""
    if args.resume and args.move_old_run:
        raise SystemExit("error: --resume continues the run in --out-dir and --move-old-run moves it away: "
                         "choose one")
    lock, message = claim_folder(args) if distributed.is_main else (None, None)
    if distributed.world_size > 1:
        shared = [message]
        dist.broadcast_object_list(shared, src=0)
        message = shared[0]
    if message is not None:
        raise SystemExit(message if distributed.is_main else 1)  # said once; the other processes only exit
    return lock


def same_value(name: str, recorded, given) -> bool:
    """Whether a flag's value on this command line is the checkpoint's; paths compare as absolute paths, so
    `runs/tokenizer/checkpoint.pt` and its absolute spelling are the same file (resolved from the current folder)."""
    if name in PATH_FLAGS and isinstance(recorded, str) and isinstance(given, str):
        return os.path.abspath(recorded) == os.path.abspath(given)
    return recorded == given


def reconcile_flags(args, given: set, resumed: Optional[dict], may_change) -> list:
    """On --resume: flags left out take the checkpoint's values, so that `--resume` alone continues the same run; a
    flag given with another value ends the script, unless it is in `may_change`. Returns the changed flags as lines
    for the log.

    Only flags typed on the command line (`given`) count as choices: an argparse default is not one. A checkpoint
    written before a flag existed keeps that flag's default.
    """
    if resumed is None:
        return []
    recorded = dict(resumed.get("args") or {})
    if recorded.get("minutes") and "steps" not in given:
        recorded["steps"] = resumed.get("total_steps", recorded.get("steps"))  # the total its time budget chose
    changes, contradictions = [], []
    for name, old in recorded.items():
        if name in NOT_COMPARED or not hasattr(args, name):
            continue
        new, flag = getattr(args, name), "--" + name.replace("_", "-")
        # three cases: a flag that may change (this machine's, or one allowed and typed): log the change; a flag
        # left out: the checkpoint's value; a flag typed with another value: collected, refused together below
        if name in MACHINE_FLAGS or (name in given and name in may_change):
            if not same_value(name, old, new):
                changes.append(f"resume: {flag} {old} -> {new}")
        elif name not in given:
            setattr(args, name, old)
        elif not same_value(name, old, new):
            contradictions.append(f"{flag} {new} (the checkpoint's: {old})")
    if contradictions:
        allowed = ", ".join("--" + name.replace("_", "-") for name in may_change)
        raise SystemExit(f"error: --resume: {'; '.join(contradictions)} would not continue the run in {args.out_dir}. "
                         f"Leave such flags out (a resumed run takes the checkpoint's), or start a new run (a new "
                         f"--out-dir, or --move-old-run). Flags that may change on resume: {allowed}")
    return changes


@dataclass
class Run:
    """What `open_run` gives a training script."""
    distributed: Distributed
    device: torch.device
    checkpoint_path: str  # <out-dir>/checkpoint.pt
    resumed: Optional[dict]  # the checkpoint to continue, or None for a new run
    stops: StopSignals  # the stop signals caught for the run's life
    changes: list = field(default_factory=list)  # "resume: --flag old -> new" lines, for the log


@contextlib.contextmanager
def open_run(args, kind: str, given: set, may_change):
    """Step 1 of both training scripts, held for the run's life: join the process group (under torchrun), pick the
    device, the CPU threads and the precision, lock the run folder, catch the stop signals, and read the checkpoint
    to resume from, reconciling the flags with it.

    Writes the resolved precision back into `args` ('auto' becomes what runs: 'fp32' or 'bf16'), so that the run
    log and the checkpoint record it. However the run ends (finished, stopped, an error), the lock is released and
    the signal handlers that were there before come back.
    """
    distributed = setup_distributed(args.device)
    device = resolve_device(args.device, distributed)
    set_threads(args.threads)
    args.precision = resolve_precision(args.precision, device)
    lock = claim_folder_everywhere(args, distributed)
    try:
        with StopSignals(distributed, args.out_dir) as stops:
            checkpoint_path, resumed = resume_from(args.out_dir, kind, args.resume)
            changes = reconcile_flags(args, given, resumed, may_change)
            yield Run(distributed, device, checkpoint_path, resumed, stops, changes)
    finally:
        if lock is not None:
            lock.close()  # releases the lock; the file stays, holding the last pid


def save_or_exit(save, folder: str) -> None:
    """Run `save()`; a failed write (a full disk, a lost mount) ends the script with the folder and the reason.

    atomic_save writes a temporary file and renames it only when complete, so the previous checkpoint is intact.
    """
    try:
        save()
    except OSError as error:
        raise SystemExit(f"error: cannot write a checkpoint into {folder}: {error.strerror or error}; the previous "
                         f"checkpoint there is intact") from None


class RunLog:
    """Appends lines to `<out_dir>/log.txt` (rank 0 only) and times throughput."""

    def __init__(self, out_dir: str, distributed: Distributed):
        self.path = os.path.join(out_dir, "log.txt")
        self.enabled = distributed.is_main
        self.last_time, self.last_step = time.time(), None
        if self.enabled:
            os.makedirs(out_dir, exist_ok=True)

    def write(self, line: str) -> None:
        """Append one line; the file is opened per line, so a run killed at any moment leaves whole lines."""
        if self.enabled:
            with open(self.path, "a") as file:
                file.write(line.rstrip() + "\n")

    def say(self, line: str) -> None:
        """A line for the person running the script as well as for the log (a warning, a changed flag)."""
        if self.enabled:
            print(line)
        self.write(line)

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
