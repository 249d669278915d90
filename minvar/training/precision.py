"""Speed settings of a run: bf16 autocast where the hardware computes it natively, and CPU threads.

`--precision auto` picks bf16 exactly where it is native (emulated bf16 is many times slower than fp32);
`--threads` sets torch's CPU threads and warns when other jobs already hold the cores.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Optional

import torch


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32' or 'bf16' from --precision: 'auto' is bf16 exactly where it is native."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


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
    them all (a measured case: docs/results.md#defaults-and-the-measurements-behind-them). Free cores
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
