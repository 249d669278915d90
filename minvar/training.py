"""What both training scripts share: distributed setup, a resumable data order, the official learning-rate and
weight-decay schedule, EMA weights, mixed precision and the run log.

Paper: Section 4 (implementation details: AdamW, lr per 256 images, weight decay, epochs); docs/official_model.md.

The models know nothing of this file (CONTRIBUTING.md: scripts own devices, DDP, precision and files); the scripts
`train_tokenizer.py` and `train_var.py` call it.
Official counterparts: `utils/lr_control.py` (lr_wd_annealing, the "lin0" schedule), `utils/data_sampler.py`
(DistInfiniteBatchSampler), `utils/misc.py` (logging).

Exact resume rests on one idea: everything random in a training step is a pure function of (seed, step).
The batch at step s is a slice of a seeded per-epoch permutation, and the label-dropout mask is drawn from a
generator seeded with (seed, step). A run stopped at step s and resumed computes the same steps s, s+1, ... as a
run that never stopped, and `torchrun` with N processes sees the same global batches as one process.

Shape legend: B local batch, G global batch (B × world size), N dataset size.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import os
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist
from tqdm import tqdm


# ------------------------------------------------------------------------------------------------------------------
# command line
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
    """--precision, its old spelling --bf16, and --threads (shared by the training scripts and sample.py)."""
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="bf16 = bfloat16 autocast; auto = bf16 where the device computes it natively (CUDA "
                             "with bf16 support, CPUs with AVX512-BF16 or AMX), fp32 elsewhere (emulated bf16 is "
                             "about 10x slower) (default %(default)s)")
    parser.add_argument("--bf16", action="store_true", help="same as --precision bf16 (the older flag)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="CPU threads for torch (0: torch's default, one per core); on a machine shared with "
                             "other jobs, 1 is often faster (default %(default)s)")


# ------------------------------------------------------------------------------------------------------------------
# distributed
@dataclass
class Distributed:
    rank: int = 0  # this process's index among all processes
    world_size: int = 1  # number of processes (GPUs) in the run
    local_rank: int = 0  # index on this node, selects the GPU

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes logs, grids and checkpoints."""
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Join the process group when launched by `torchrun` (it sets WORLD_SIZE), otherwise run alone.

    NCCL on CUDA, gloo on CPU (so two CPU processes can test DDP on a laptop).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    info = Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    return info


def end_distributed(distributed: Distributed) -> None:
    """Leave the process group so that every process exits cleanly; call it after dropping the DDP wrappers.

    The order matters. `destroy_process_group` only unregisters the group: a DistributedDataParallel wrapper still
    holds it (for its gradient reducer), so while a wrapper lives, the gloo/NCCL backend and its worker threads
    survive until the interpreter shuts down, and are then destroyed while Python is half torn down, which can
    abort the process ("terminate called without an active exception", SIGABRT; seen on rank 1 of a 2-process
    CPU run). So the scripts `del` their wrappers and loaders first; here the barrier makes every process wait for
    rank 0's final grid and checkpoint, a garbage collection frees what the wrappers left in reference cycles, and
    only then is the group destroyed, while the interpreter is fully alive.
    """
    if distributed.world_size <= 1:
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def resolve_device(name: str, distributed: Distributed) -> torch.device:
    """'auto' picks CUDA when present; under torchrun each process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name == "cuda" and distributed.world_size > 1:
        name = f"cuda:{distributed.local_rank}"
    return torch.device(name)


def wrap_ddp(model: torch.nn.Module, distributed: Distributed, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` under torchrun (gradients averaged over processes), else the model."""
    if distributed.world_size <= 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def resume_from(out_dir: str, kind: str, resume: bool):
    """(checkpoint path, the checkpoint dict to resume from or None); a missing or wrong file ends the script."""
    from minvar.checkpoint import CheckpointError, load_checkpoint
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

    Writes the resolved precision back into `args` ('auto' becomes what runs: 'fp32' or 'bf16', and --bf16 follows
    it), so that the run log and the checkpoint record it. Returns (distributed, device, checkpoint path, the
    checkpoint dict to resume from or None).
    """
    distributed = setup_distributed(args.device)
    device = resolve_device(args.device, distributed)
    set_threads(args.threads)
    args.precision = resolve_precision(args.precision, args.bf16, device)
    args.bf16 = args.precision == "bf16"
    checkpoint_path, resumed = resume_from(args.out_dir, kind, args.resume)
    return distributed, device, checkpoint_path, resumed


def all_reduce_mean(value: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    """Average a logged number over processes (gradients are averaged by DDP itself)."""
    if distributed.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= distributed.world_size
    return value


# ------------------------------------------------------------------------------------------------------------------
# data order
def global_batch_indices(step: int, global_batch: int, dataset_size: int, seed: int) -> List[int]:
    """Dataset indices of the global batch at `step`: consecutive slices of a stream of seeded permutations.

    Epoch e is `randperm(N)` under seed (seed, e); the stream is their concatenation, so batches cross epoch
    boundaries seamlessly and every image is seen once per epoch. A pure function of the step: resume-exact.
    """
    start = step * global_batch
    indices: List[int] = []
    while len(indices) < global_batch:
        epoch, offset = divmod(start + len(indices), dataset_size)
        order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.extend(order[offset:offset + global_batch - len(indices)].tolist())
    return indices


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps start..end-1, this process's slice of the global batch as (index, epoch) pairs.

    The epoch travels with the index so that augmentations seeded by (seed, index, epoch) are reproducible in any
    DataLoader worker (see `EpochIndexed`).
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 distributed: Distributed):
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start_step, self.end_step, self.distributed = start_step, end_step, distributed

    def __len__(self) -> int:
        return max(self.end_step - self.start_step, 0)

    def __iter__(self) -> Iterator[list]:
        world, rank, B = self.distributed.world_size, self.distributed.rank, self.batch_size
        for step in range(self.start_step, self.end_step):
            indices = global_batch_indices(step, B * world, self.dataset_size, self.seed)
            epoch = step * B * world // self.dataset_size
            yield [(i, epoch) for i in indices[rank * B:(rank + 1) * B]]


class EpochIndexed(torch.utils.data.Dataset):
    """Wraps a dataset so that it can be indexed by (index, epoch): it sets the epoch before reading."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, epoch = item
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def make_loader(dataset, batch_size: int, seed: int, start_step: int, end_step: int, distributed: Distributed,
                workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader that yields exactly the batches of steps start_step..end_step-1 of this process."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, end_step, distributed)
    return torch.utils.data.DataLoader(EpochIndexed(dataset), batch_sampler=sampler, num_workers=workers,
                                       persistent_workers=workers > 0)


def step_generator(seed: int, step: int, device) -> torch.Generator:
    """A generator for the randomness of one step (label dropout), identical in every process and on resume."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


# ------------------------------------------------------------------------------------------------------------------
# time budget
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


# ------------------------------------------------------------------------------------------------------------------
# schedule
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
    cosine = torch.cos(torch.tensor(progress * math.pi)).item()  # in float32, as the runs measured in the README
    return peak_lr * (final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + cosine))


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Write the step's learning rate into every group, and its weight decay into the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("decay", False):  # groups built by VAR.parameter_groups say whether they decay
            group["weight_decay"] = wd


# ------------------------------------------------------------------------------------------------------------------
# precision, threads, EMA
def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware, so that bf16 autocast is faster than fp32.

    CUDA: what torch reports (Ampere and newer). CPU: the Linux /proc/cpuinfo flags avx512_bf16 (AVX512-BF16
    dot products, e.g. AMD Zen 4, Intel Cooper Lake) or amx_bf16 (Intel AMX tiles, Sapphire Rapids and newer).
    torch.backends.cpu.get_cpu_capability() says only "AVX512" on both kinds, so it cannot tell them apart.
    Elsewhere (macOS, Windows, ARM) this answers False: fp32 is the safe choice.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not os.path.exists("/proc/cpuinfo"):
        return False
    with open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, bf16_flag: bool, device: torch.device) -> str:
    """'fp32' or 'bf16' from --precision (and the older --bf16): 'auto' is bf16 exactly where it is native."""
    if bf16_flag or precision == "bf16":
        return "bf16"
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return "fp32"


def busy_cores(window: float = 0.25) -> Optional[float]:
    """How many cores other processes keep busy right now: the share of non-idle CPU time in /proc/stat over a short
    window, times the core count (Linux); the 1-minute load average elsewhere (Unix), None where neither exists.

    The load average lags by a minute: in the quickstart's chain of commands it still counts the tokenizer that has
    just finished when train_var.py starts, and would warn about cores that are in fact free.
    """
    def cpu_times():
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]  # user nice system idle iowait irq ...
        return sum(fields), fields[3] + fields[4]  # total, idle (idle + iowait)

    try:
        total_0, idle_0 = cpu_times()
        time.sleep(window)
        total_1, idle_1 = cpu_times()
        return (os.cpu_count() or 1) * (1 - (idle_1 - idle_0) / max(total_1 - total_0, 1))
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def set_threads(threads: int) -> int:
    """Apply --threads (0 keeps torch's default) and warn when the threads exceed the cores other jobs leave free.

    On a shared machine every parallel op waits for its slowest thread; a thread whose core another job holds stalls
    them all (measured: one tiny VAR step took 5.3 s on 2 busy cores with 2 threads and 0.14 s with 1). Free cores
    are the core count minus the cores busy now (`busy_cores`). Returns the thread count in use.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    busy = busy_cores() if threads > 1 else None  # one thread always fits: at least one core counts as free
    if busy is not None:
        cores = os.cpu_count() or 1
        free = max(cores - round(busy), 1)
        if threads > free:
            print(f"warning: torch uses {threads} CPU threads but only about {free} of the {cores} cores are free "
                  f"({busy:.1f} busy with other work); if steps are slow, try --threads {free}")
    return threads


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA and CPU when asked for; a no-op context otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class EMA:
    """Exponential moving average of a model's weights, kept in fp32 on the model's device."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Average the parameters; copy the buffers. A buffer is state, not a weight: VAR's block-causal mask holds
        -inf, and a lerp of -inf with -inf is NaN, which would poison a teacher-forced forward of the EMA model."""
        for ema_parameter, parameter in zip(self.model.parameters(), model.parameters()):
            ema_parameter.lerp_(parameter, 1 - self.decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------------------------------------------------------
# logging
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
