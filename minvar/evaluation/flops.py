"""Counting floating-point operations: a VAR training step from its config (for MFU), or any call by running it.

Two counts for two jobs: `var_training_flops` / `vqvae_training_flops` / `peak_flops` / `mfu` below give the MFU of
the two training logs and the benchmarks; `count_flops` runs a call under PyTorch's FlopCounterMode for
tutorials/07_ablations.py (equal training compute for every row, sampling cost per image) and bench/bench_cost.py (the cost of generation as the token map
grows: the paper's O(n⁶) vs O(n⁴), Section 3.1).

MFU (model FLOPs utilisation, PaLM paper Appendix B; printed by nanoGPT and nanochat) = FLOPs a step needs by the
model's arithmetic / step time / the device's peak FLOP/s. It says how much of the hardware a run uses, independent
of model size, so it tells a slow run (low MFU: overheads, small matrices, a wrong kernel) from a big one.

How a training step is counted (multiply-add = 2 FLOPs; backward = 2 × forward, so a step = 3 × forward):
    per token, the matrix products of the linear layers: 2 · N_linear FLOPs forward, N_linear = word_embed (Cvae·C)
        + per block qkv (3C²) + proj (C²) + fc1, fc2 (2·C·hidden) + the head (C·V). AdaLN's projections (6C² per
        block) run once per image, not per token, and embeddings are lookups: neither is counted.
    attention scores and the weighted sum: 2 · 2 · L² · C per block and image forward, over the full L × L map
        (as PaLM and nanoGPT count, although the block-causal mask makes ~38% of the scores at 256px
        unused).
    step = 3 · (2 · N_linear · B · L + 4 · depth · B · L² · C) = 6 · N_linear · tokens + 12 · depth · B · L² · C.
Norms, activations, softmax and the optimizer are not counted (a few % of the arithmetic).
tests/test_flops.py checks this count against torch.utils.flop_counter on a small model.

Peak: on CUDA from a table of known GPUs (dense, no sparsity); on a CPU measured once per process (and thread
count) by timing a large matrix product in the dtype, as the best a matmul reaches there. Unknown GPUs give None.

Shape legend: B batch, L = Σ pn² tokens, C width, Cvae codebook dim, V codebook size.

count_flops: PyTorch counts matrix products and convolutions itself. On the CPU, F.scaled_dot_product_attention
runs an op (`_scaled_dot_product_flash_attention_for_cpu`) that its table does not list, so attention would count as
free; here it gets the same formula as the CUDA kernels (4·B·H·Lq·Lk·hd forward: q·kᵀ and p·v, 2 FLOPs per multiply-add).
NOTE: like PyTorch's formula, a masked (causal or block-causal) attention is counted as if it were full.
Element-wise work (softmax, norms, GELU, sampling) is not counted: it is small next to the products.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch.utils import flop_counter

# Dense peak FLOP/s of known GPUs from the vendors' data sheets (SXM where there are variants): (bf16, fp32 w/o TF32).
GPU_PEAK_FLOPS = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "L4": (121e12, 30.3e12),
}
_measured_peaks = {}  # (dtype, threads) -> FLOP/s measured on this CPU, filled on first use


def var_training_flops(config, batch_size: int) -> float:
    """FLOPs of one training step (forward + backward) of VAR `config` on `batch_size` images (module docstring)."""
    cfg = config.resolved()
    C, L = cfg.width, sum(pn * pn for pn in cfg.patch_nums)
    hidden = round(C * cfg.mlp_ratio)
    per_block = 3 * C * C + C * C + 2 * C * hidden  # qkv, proj, fc1 + fc2 weights (per-token matrix products)
    linear_params = cfg.code_dim * C + cfg.depth * per_block + C * cfg.vocab_size
    tokens = batch_size * L
    return 6 * linear_params * tokens + 12 * cfg.depth * batch_size * L * L * C


def vqvae_training_flops(config, batch_size: int) -> float:
    """FLOPs of one tokenizer training step: the VQVAE's forward and backward on `batch_size` images of its size.

    Counted rather than derived by hand: for a convolutional network the count is a sum of 2·k²·C_in·C_out·H·W over
    some fifty layers, exactly what PyTorch's FlopCounterMode adds up (`count_flops` below). The model is built on
    the meta device (shapes only: no memory, no arithmetic), so even the released 256px tokenizer (1.8 TFLOP per
    image and step) is counted in well under a second. The LPIPS network and the discriminator, when a run turns
    them on, are not counted, so its MFU is then a lower bound.
    """
    from minvar.vqvae import VQVAE  # here, not at the top: the VAR-only users of this module need no VQVAE
    with torch.device("meta"):
        vae = VQVAE(config)
    vae.eval()  # training mode adds only the codebook-usage statistics, a bincount that meta tensors cannot run
    images = torch.empty(1, 3, config.image_size, config.image_size, device="meta")

    def one_image_step():
        reconstruction, vq_loss, _ = vae(images)
        (reconstruction.square().mean() + vq_loss).backward()

    return batch_size * count_flops(one_image_step)


def measured_cpu_peak(dtype: torch.dtype = torch.float32, size: int = 1024) -> float:
    """The FLOP/s of a (size × size) @ (size × size) product on this CPU with torch's current threads, best of 5.

    Measured, not looked up: CPUs differ in vector width, bf16 support and clock, and a shared machine's busy cores
    lower what a run can reach. Cached per (dtype, threads), so a process pays ~0.1-0.5 s once.
    """
    key = (dtype, torch.get_num_threads())
    if key not in _measured_peaks:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        a @ b  # warm up (kernel selection, page faults)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        _measured_peaks[key] = 2 * size ** 3 / best
    return _measured_peaks[key]


def peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """Peak FLOP/s of `device` in `precision` ('fp32' or 'bf16'): the GPU table on CUDA, measured on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16, fp32) in GPU_PEAK_FLOPS.items():
            if key in name:
                return bf16 if precision == "bf16" else fp32
        return None
    return measured_cpu_peak(torch.bfloat16 if precision == "bf16" else torch.float32)


def mfu(flops_per_step: float, seconds_per_step: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation in [0, 1] (None when the peak is unknown)."""
    if peak is None or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


def mfu_text(step_flops: float, images_per_step: int, images_per_second: float, peak: Optional[float],
             world_size: int = 1) -> str:
    """The training logs' MFU field: '12.3%', or '-' when the peak is unknown. `peak` is one device's; a step of
    `images_per_step` images (all processes) runs on `world_size` devices."""
    utilisation = mfu(step_flops, images_per_step / max(images_per_second, 1e-9),
                      peak * world_size if peak else None)
    return "-" if utilisation is None else f"{100 * utilisation:.1f}%"


# ------------------------------------------------------------------------------------------------------------------
# counting by running a call
def _attention_forward(query, key, value, *args, out_val=None, **kwargs) -> int:
    """FLOPs of the CPU attention op, by PyTorch's own formula for the CUDA attention kernels."""
    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def _attention_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    """FLOPs of its backward (the gradients of q, k and v), by PyTorch's formula."""
    return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_attention_forward._get_raw = _attention_backward._get_raw = True  # they take the tensors, not their shapes
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_forward,
                  torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward}


def count_flops(function: Callable, *args, **kwargs) -> int:
    """Run `function(*args, **kwargs)` once and return the FLOPs of its matrix products, attention included."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        function(*args, **kwargs)
    return int(counter.get_total_flops())
