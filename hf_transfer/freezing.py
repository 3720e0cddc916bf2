"""What trains: timm's stage grouping, one freeze primitive, and the mode of frozen modules.

Stages come from each timm model's own ``group_matcher`` (the same grouping timm's layer decay
uses), so a strategy means the same thing on ResNet, EfficientNet, ConvNeXt or ViT: stage 0 is the
stem, the middle stages are the blocks, and the last stage is the classifier head.
"""

from __future__ import annotations

from torch import nn
from timm.models import group_parameters

def parameter_stages(model: nn.Module) -> list[list[str]]:
    """Parameter names per stage, input to output; the last stage is the head."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [names for _, names in sorted(groups.items())]


def trainable_stage_count(strategy: str, num_stages: int) -> int:
    """How many of the last stages a strategy trains from the start."""
    if strategy == "feature_extraction":
        return 1
    if strategy == "full":
        return num_stages
    raise ValueError(f"unknown strategy {strategy!r}")


def set_trainable_stages(model: nn.Module, stages: list[list[str]], count: int) -> None:
    """The freeze primitive: the last ``count`` stages train, every earlier one is frozen."""
    trainable = {name for stage in stages[len(stages) - count :] for name in stage}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except that fully frozen sub-modules stay in eval mode: their BatchNorm
    statistics stay those of the pretrained weights and their dropout/drop-path stay off."""
    model.train()
    _eval_frozen(model)


def _eval_frozen(module: nn.Module) -> None:
    for child in module.children():
        parameters = list(child.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            child.eval()
        elif parameters:
            _eval_frozen(child)
