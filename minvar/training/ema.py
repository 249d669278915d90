"""EMA weights: an exponential moving average of a model, the copy that samples best after training.

Official counterpart: none (the released VAR checkpoints hold plain weights); `train_var.py --ema DECAY` keeps one
and samples from it.
"""
from __future__ import annotations

import copy

import torch


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
