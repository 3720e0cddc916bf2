"""Optimizer and learning-rate schedule.

The optimizer holds every parameter from the start, one group per stage (split into decayed weights
and undecayed biases/norms), frozen ones included: a frozen parameter has no gradient, so the
optimizer skips it, and unfreezing it later needs no new group and no schedule surgery.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, stages: list[list[str]], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over per-stage parameter groups, each named ``stage{i}`` or ``stage{i}_no_decay``."""
    parameters = dict(model.named_parameters())
    groups = []
    for index, names in enumerate(stages):
        decay = [parameters[n] for n in names if parameters[n].ndim > 1]
        no_decay = [parameters[n] for n in names if parameters[n].ndim <= 1]
        for suffix, params, weight_decay in (("", decay, config.weight_decay), ("_no_decay", no_decay, 0.0)):
            if params:
                groups.append({"params": params, "name": f"stage{index}{suffix}", "weight_decay": weight_decay})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_multiplier(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Factor applied to every group's base LR at each optimizer step: linear warmup, then
    cosine decay to zero, step decay every ``step_epochs``, or constant."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    step_every = config.step_epochs * steps_per_epoch

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if config.scheduler == "step":
            return config.step_gamma ** (step // step_every)
        return 1.0

    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step LambdaLR, so it checkpoints and resumes with the optimizer."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config, steps_per_epoch))
