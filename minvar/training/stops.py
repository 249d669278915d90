"""How a training run ends early without losing its work: clean stops on a signal, and saves by the clock.

Ctrl-C (SIGINT), SIGTERM (how SLURM, Kubernetes and preemptible cloud GPUs end a job after a grace period) and
SIGUSR1 (what a cluster sends before a time limit, e.g. SLURM's `--signal`) do not kill a training run: `StopSignals`
notes the request, the training loop asks `after_step` once per step, and the script finishes the step it is in,
writes its checkpoint, prints one line with the step reached and the command that continues the run, and exits with
128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), the shell's convention. A second Ctrl-C or SIGTERM stops
at once, without saving and without a traceback; the checkpoint already in the folder is kept. Before the first
step (loading data, building a token cache) there is no step to finish and nothing new to save, so a signal ends the
script at once.

Under `torchrun` every process must stop after the same step (a process that stopped alone would leave the others
waiting in DDP's next gradient all-reduce), but each receives its signal at its own moment. So `after_step` reduces
the processes' flags over the process group every step (a MAX: one process that saw a signal stops them all), and
only rank 0 writes. `torchrun` forwards the signal it receives to its workers, so a worker may see one Ctrl-C twice
(the terminal's and the launcher's copy): with several processes a repeated signal is the same request, and it is
the launcher that kills workers that do not end in time.

`SaveClock` bounds what a SIGKILL or a power cut can lose: a checkpoint every --save-minutes of wall-clock time as
well as every --save-every steps. Rank 0's clock decides, shared by the same reduction, so every process agrees on
which steps were saved. A save only reads the training state, so it never changes the trajectory.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from typing import List, Optional

import torch
import torch.distributed as dist

from minvar.training.distributed import Distributed

# SIGUSR1 does not exist on Windows; SIGINT and SIGTERM do.
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)]


class StopSignals:
    """A context manager that turns the stop signals into a flag for the training loop, for the run's life.

    On exit the handlers that were there before come back (the tests call a script's `main` many times in one
    process, and Ctrl-C outside a run must stay a KeyboardInterrupt). Python runs signal handlers in the main thread
    only, so from another thread nothing is installed and a signal keeps its usual effect.
    """

    def __init__(self, distributed: Distributed, folder: str):
        self.distributed = distributed
        self.folder = folder  # named when a second signal stops the run at once
        self.received: Optional[int] = None  # the first stop signal's number (any process's, once shared)
        self.stepping = False  # whether the training steps have begun (`begin_steps`)
        self.previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous.clear()

    def begin_steps(self) -> None:
        """Call just before the training loop: from now on a stop waits for the step in progress."""
        self.stepping = True

    def handle(self, number: int, frame) -> None:
        """The signal handler: note the first stop once steps run; end at once before them, or on a second one."""
        name = signal.Signals(number).name
        if self.received is None and self.stepping:
            self.received = number  # the loop sees it after the step it is in
            return
        if self.received is None:
            self.stop_now(f"{name} before the first training step: stopped, with nothing new to save", number)
        if self.distributed.world_size > 1 or number == getattr(signal, "SIGUSR1", None):
            return  # a forwarded copy under torchrun, or a scheduler's repeated warning: the same request
        self.stop_now(f"{name} again: stopped at once without saving; {self.folder} keeps its last checkpoint", number)

    @staticmethod
    def stop_now(message: str, number: int) -> None:
        # os.write, not print: the handler may interrupt a print (tqdm's bar writes to stderr all the time), and a
        # print inside a print of the same stream raises "reentrant call"
        os.write(2, f"\n{message}\n".encode())
        raise SystemExit(128 + number)  # SystemExit prints no traceback; atomic_save removes its temporary file

    def after_step(self, save_by_time: bool, device: torch.device) -> tuple:
        """(stop now, save now because of the clock), the same in every process.

        `save_by_time` counts on rank 0 only: one clock decides, so no process disagrees because its clock read a
        millisecond later. With one process nothing is communicated.
        """
        stop = self.received or 0
        if self.distributed.world_size > 1:
            flags = torch.tensor([stop, int(save_by_time and self.distributed.is_main)], device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # a signal number (0: none), and rank 0's clock
            stop, save_by_time = int(flags[0]), bool(flags[1])
            self.received = self.received or stop or None  # a stop that another process received
        return bool(stop), save_by_time

    def report(self, done: int, total: int, checkpoint_path: str, script_file: str, argv) -> str:
        """The one line a stopped run prints: the signal, the step reached, the checkpoint, how to continue."""
        return (f"{signal.Signals(self.received).name}: stopped at step {done} of {total}; checkpoint "
                f"{checkpoint_path}; continue with: {continue_command(script_file, argv, self.distributed)}")

    def exit_status(self) -> int:
        """128 + the signal's number: what a shell reports for a process ended by that signal."""
        return 128 + self.received


class SaveClock:
    """Whether --save-minutes of wall-clock time have passed since the last checkpoint (0 minutes: never)."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = time.monotonic()


def continue_command(script_file: str, argv: Optional[List[str]], distributed: Distributed) -> str:
    """The command that continues a stopped run: the script as it was started, its arguments and --resume (once),
    under the same launcher. --move-old-run is dropped: it starts a new run, and the run to continue is this one."""
    script = sys.argv[0] if argv is None else os.path.relpath(script_file)  # as typed, when run from a shell
    arguments = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--move-old-run"]
    arguments += [] if "--resume" in arguments else ["--resume"]
    if distributed.world_size == 1:
        return shlex.join(["python", script, *arguments])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size))
    command = shlex.join(["torchrun", "--nproc_per_node", str(per_node), script, *arguments])
    # on several nodes only the launcher knows its other flags (--nnodes, --node_rank, the rendezvous)
    return command if per_node == distributed.world_size else command + " (with this run's other torchrun flags)"
