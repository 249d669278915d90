"""How fast and how long to train: the learning-rate and weight-decay schedules, and a step count from a time budget.

Paper: Section 4 (AdamW, learning rate per 256 images, weight decay); docs/official_model.md.
Official counterpart: `utils/lr_control.py` (lr_wd_annealing, the "lin0" schedule). The tokenizer's cosine
schedule is minvar's own (the official repository trains no tokenizer).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
import torch.distributed as dist

from minvar.training.distributed import Distributed


class TimeBudget:
    """`--minutes`: the number of training steps that fits a time budget, measured on the run's own first steps.

    How long to train is often known in minutes, not steps, and a learning-rate schedule only does its job if its
    decay completes. The script starts with a provisional number of steps and times its steps from `start + 2`
    (the first steps pay one-time costs) for `probe_steps` steps or 5% of the budget, whichever ends first; then it
    fixes the total once: the steps done plus as many as fit in what is left of the budget at that rate. The
    schedule then decays over the chosen total. The budget counts from `started` (the script's start: loading,
    the token cache) to the last training step; the final checkpoint and grid come after. Under DDP the processes
    end the probe together and take the smallest total, so all agree.
    NOTE: steps before the total is fixed use the provisional total in the schedule; the warmup (VAR: 2% of the
    provisional steps, tokenizer: --warmup-steps) is kept as it was, so they are exact whenever they lie inside it.
    """

    def __init__(self, minutes: float, start_step: int, started: float, probe_steps: int = 18):
        if minutes <= 0:
            raise ValueError(f"--minutes must be positive, got {minutes}")
        self.seconds, self.started, self.probe_steps = minutes * 60, started, probe_steps
        self.begin_step = start_step + 2
        self.begin_time = None
        self.seconds_per_step = None  # measured; set when the total is chosen
        self.chosen = False

    def total_steps(self, done: int, distributed: Distributed) -> Optional[int]:
        """Call after every step with the steps done; returns the chosen total once (at the probe's end), else None."""
        if self.chosen or done < self.begin_step:
            return None
        now = time.perf_counter()
        if done == self.begin_step:
            self.begin_time = now
            return None
        timed = done - self.begin_step
        finished = torch.tensor(int(timed >= self.probe_steps or now - self.begin_time >= 0.05 * self.seconds))
        if distributed.world_size > 1:  # every process must end the probe at the same step
            dist.all_reduce(finished, op=dist.ReduceOp.MAX)
        if not finished:
            return None
        self.chosen = True
        self.seconds_per_step = (now - self.begin_time) / timed
        remaining = self.seconds - (now - self.started)
        total = torch.tensor(done + max(int(remaining / self.seconds_per_step), 0))
        if distributed.world_size > 1:
            dist.all_reduce(total, op=dist.ReduceOp.MIN)
        return int(total)


def lr_wd_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int, warmup_start: float = 0.005,
             final_lr_ratio: float = 0.1, constant_fraction: float = 0.05, weight_decay: float = 0.05,
             final_weight_decay: Optional[float] = None):
    """The official "lin0" schedule (utils/lr_control.py), returned as (learning rate, weight decay).

    Learning rate: linear warmup from warmup_start·peak to peak over warmup_steps; then constant for the first
    `constant_fraction` of the remaining steps; then linear down to final_lr_ratio·peak at the last step.
    Weight decay: cosine from weight_decay to final_weight_decay over the whole run (d30 uses 0.05 → 0.08).
    """
    last = max(total_steps - 1, 1)
    if step < warmup_steps:
        factor = warmup_start + (1 - warmup_start) * step / warmup_steps
    else:
        passed = (step - warmup_steps) / max(last - warmup_steps, 1)  # 0 → 1 after warmup
        rest = 1 - passed
        factor = 1.0 if passed < constant_fraction else \
            final_lr_ratio + (1 - final_lr_ratio) * rest / (1 - constant_fraction)
    final_weight_decay = weight_decay if final_weight_decay is None else final_weight_decay
    wd = final_weight_decay + (weight_decay - final_weight_decay) * 0.5 * (1 + math.cos(math.pi * step / last))
    return peak_lr * factor, wd


def cosine_lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int,
                 final_lr_ratio: float = 0.1) -> float:
    """The tokenizer's schedule (train_tokenizer.py; the official repository trains no tokenizer): linear warmup to
    the peak over warmup_steps (step 0 already at peak/warmup_steps), then cosine decay to final_lr_ratio·peak at
    the last step. The transformer follows the official lin0 schedule above instead."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    cosine = torch.cos(torch.tensor(progress * math.pi)).item()  # in float32, as the runs in docs/results.md
    return peak_lr * (final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + cosine))


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Write the step's learning rate into every group, and its weight decay into the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("decay", False):  # groups built by VAR.parameter_groups say whether they decay
            group["weight_decay"] = wd
