"""Counting floating-point operations of any call (a training step, one generation) with PyTorch's FlopCounterMode.

Used by tutorials/07_ablations.py (equal training compute for every row, sampling cost per image) and
bench/bench_cost.py (the cost of generation as the token map grows: the paper's O(n⁶) vs O(n⁴), §3.1).

PyTorch counts matrix products and convolutions itself. On the CPU, F.scaled_dot_product_attention runs an op
(`_scaled_dot_product_flash_attention_for_cpu`) that its table does not list, so attention would count as free;
here it gets the same formula as the CUDA kernels (4·B·H·Lq·Lk·hd forward: q·kᵀ and p·v, 2 FLOPs per multiply-add).
NOTE: like PyTorch's formula, a masked (causal or block-causal) attention is counted as if it were full.
Element-wise work (softmax, norms, GELU, sampling) is not counted: it is small next to the products.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils import flop_counter



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
