"""What trains: timm's stage grouping, one freeze primitive, the strategies and the unfreeze schedule
composed from it, and the mode of frozen modules (the BatchNorm policy).

Stages come from each timm model's own ``group_matcher`` (the same grouping timm's layer decay
uses), so a strategy means the same thing on ResNet, EfficientNet, ConvNeXt or ViT: stage 0 is the
stem, the middle stages are the blocks, and the last stage is the classifier head. Like fastai's
``freeze_to``, everything is one primitive (the last ``count`` stages train) and a count per epoch.
"""

from __future__ import annotations

import logging

from timm.models import group_parameters
from torch import nn

from .config import ModelConfig
from .errors import ConfigError
from .model import count_parameters

logger = logging.getLogger(__name__)

ALL = "all"


def parameter_stages(model: nn.Module) -> list[list[str]]:
    """Parameter names per stage, input to output; the last stage is the head."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [names for _, names in sorted(groups.items())]


def trainable_stage_count(config: ModelConfig, num_stages: int, epoch: int = 0) -> int:
    """How many of the last stages (the head is one of them) train during ``epoch`` (0 is the first):
    the strategy's backbone stages, raised by every ``model.unfreeze`` entry the run has reached."""
    initial = {"scratch": ALL, "full": ALL, "feature_extraction": 0, "partial": config.trainable_stages or 1}
    backbone = initial[config.strategy]
    for start, stages in sorted(config.unfreeze.items()):
        if start <= epoch:
            backbone = stages
    return num_stages if backbone == ALL else backbone + 1


def check_stages(config: ModelConfig, stages: list[list[str]]) -> None:
    """Refuse, naming the key, a config that trains more backbone stages than the model has."""
    available = len(stages) - 1
    asked = [("'model.trainable_stages'", config.trainable_stages)]
    asked += [(f"'model.unfreeze' entry {{{epoch}: {count}}}", count) for epoch, count in config.unfreeze.items()]
    for key, count in asked:
        if isinstance(count, int) and count > available:
            raise ConfigError(
                f"{key} asks for {count} backbone stages, but {config.name} has {available} (its stem and "
                f"{available - 1} block groups, from timm's group_matcher) besides the head. "
                f"Use at most {available}, or all."
            )


def set_trainable_stages(model: nn.Module, stages: list[list[str]], count: int) -> None:
    """The freeze primitive: the last ``count`` stages train, every earlier one is frozen."""
    trainable = {name for stage in stages[len(stages) - count :] for name in stage}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)


def apply_freeze_state(model: nn.Module, stages: list[list[str]], config: ModelConfig, epoch: int) -> int:
    """Freeze as the strategy and schedule say for ``epoch``, log the parameter counts whenever they
    change (seed 003 prints them), and return the number of trainable parameters."""
    before = count_parameters(model)
    count = trainable_stage_count(config, len(stages), epoch)
    set_trainable_stages(model, stages, count)
    trainable, frozen = count_parameters(model)
    if (trainable, frozen) != before:
        logger.info(
            "Epoch %d: the last %d of %d stages train (head + %d backbone): %s trainable, %s frozen parameters",
            epoch + 1, count, len(stages), count - 1, f"{trainable:,}", f"{frozen:,}",
        )
    return trainable


def train_mode(model: nn.Module, bn_policy: str = "eval_frozen") -> None:
    """``model.train()``, except that fully frozen sub-modules stay in eval mode: their dropout and
    drop-path stay off and their BatchNorm statistics stay those of the pretrained weights.
    ``bn_policy`` ``train`` lets every BatchNorm update its statistics (frozen ones adapt to the new
    data), ``eval`` none (for batches too small to estimate them)."""
    model.train()
    _eval_frozen(model)
    if bn_policy != "eval_frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(bn_policy == "train")


def _eval_frozen(module: nn.Module) -> None:
    for child in module.children():
        parameters = list(child.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            child.eval()
        elif parameters:
            _eval_frozen(child)
