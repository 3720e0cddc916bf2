"""Optimizer and learning-rate schedule.

The optimizer holds every parameter from the start, one group per stage (split into decayed weights
and undecayed biases/norms), frozen ones included: a frozen parameter has no gradient, so the
optimizer skips it, and unfreezing it later needs no new group and no schedule surgery. Each stage's
group has its own base learning rate (discriminative learning rates), which the schedule scales.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .config import TrainConfig


def stage_lrs(num_stages: int, config: TrainConfig) -> list[float]:
    """Base learning rate of each stage, input to output: ``lr`` for the head; ``backbone_lr``, when
    set, for the stage below it; each stage further down ``layer_decay`` times the one above it
    (timm's layer decay; fastai's ``slice(lo, hi)`` spreads the same geometric way)."""
    assert not isinstance(config.lr, str), "train.lr auto is resolved before the optimizer is built"
    decay = config.layer_decay or 1.0
    top = config.backbone_lr if config.backbone_lr is not None else config.lr * decay
    return [top * decay ** (num_stages - 2 - index) for index in range(num_stages - 1)] + [config.lr]


def build_optimizer(
    model: nn.Module, stages: list[list[str]], config: TrainConfig, fused: bool = False
) -> torch.optim.Optimizer:
    """AdamW or SGD over per-stage parameter groups, each named ``stage{i}`` or ``stage{i}_no_decay``,
    with the stage's base learning rate from :func:`stage_lrs` (and its index as ``stage``). ``fused``
    (for CUDA) updates all parameters in one kernel."""
    parameters = dict(model.named_parameters())
    lrs = stage_lrs(len(stages), config)
    groups = []
    for index, names in enumerate(stages):
        decay = [parameters[n] for n in names if parameters[n].ndim > 1]
        no_decay = [parameters[n] for n in names if parameters[n].ndim <= 1]
        for suffix, params, weight_decay in (("", decay, config.weight_decay), ("_no_decay", no_decay, 0.0)):
            if params:
                name = f"stage{index}{suffix}"
                groups.append({"params": params, "name": name, "stage": index, "lr": lrs[index], "weight_decay": weight_decay})
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, fused=fused or None
        )
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)


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
