"""The pieces of a run built from its config, before accelerate wraps them: data, the model frozen as
for the first epoch, its stages, the loaders and the loss. Training and the LR finder share them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from .balance import class_weights
from .config import Config
from .data import Splits, load_splits
from .freezing import check_stages, parameter_stages, set_trainable_stages, trainable_stage_count
from .loaders import Loaders, build_loaders
from .model import create_model
from .transforms import resolve_input_config

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    splits: Splits
    model: torch.nn.Module
    stages: list[list[str]]  # parameter names per stage, input to output; the last is the head
    input_config: dict[str, Any]
    loaders: Loaders
    criterion: torch.nn.Module


def build_parts(config: Config, accelerator: Accelerator) -> Parts:
    """Load the data and the model (the main process first, so caches are filled once), freeze the
    model as the strategy says for the first epoch, and build the loaders and the loss."""
    with accelerator.main_process_first():
        splits = load_splits(config.data, config.train.seed)
        model = create_model(config.model, splits.num_classes, config.data.image_size)
    stages = parameter_stages(model)
    check_stages(config.model, stages)
    set_trainable_stages(model, stages, trainable_stage_count(config.model, len(stages)))
    input_config = resolve_input_config(model, config.data)
    loaders = build_loaders(splits, input_config, config, accelerator.device)
    criterion = build_criterion(config, splits).to(accelerator.device)
    return Parts(splits, model, stages, input_config, loaders, criterion)


def build_criterion(config: Config, splits: Splits) -> torch.nn.Module:
    """Cross-entropy with label smoothing and, with ``train.class_weights: auto``, inverse-frequency
    class weights from the training split."""
    weights = None
    if config.train.class_weights == "auto":
        weights = class_weights(splits.train[splits.label_column], splits.num_classes)
        logger.info("Class weights: %s", dict(zip(splits.label_names, [round(w, 3) for w in weights.tolist()])))
    return torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=config.train.label_smoothing)
