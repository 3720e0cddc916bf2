"""A timm model as an ordered list of segments, so that its forward can start part way.

When the first stages are frozen, their output is the same every epoch for the same image: the
feature cache (feature_cache.py) stores it once, and training runs only the remaining segments.
Four families are split at every stage (EfficientNet/MobileNet-style, ResNet, ConvNeXt, ViT); any
other timm model is split before its classifier, which is what feature extraction needs. Each split
is checked against the model's own forward (``matches_forward``) before it is trusted.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .model import classifier_parameter_names


@dataclass(frozen=True)
class Segment:
    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    parameters: tuple[str, ...]  # names of the model parameters it uses


def _owned(model: nn.Module, prefixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        name for name, _ in model.named_parameters() if any(name == p or name.startswith(p + ".") for p in prefixes)
    )


def _seq(model: nn.Module, name: str, *prefixes: str) -> Segment:
    """A segment that runs the named sub-modules one after the other."""
    modules = [model.get_submodule(p) for p in prefixes]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for module in modules:
            x = module(x)
        return x

    return Segment(name, forward, _owned(model, prefixes))


def _blocks(model: nn.Module, container: str) -> list[Segment]:
    return [_seq(model, f"{container}.{i}", f"{container}.{i}") for i in range(len(model.get_submodule(container)))]


def _head(model: nn.Module, pre_logits_parameters: tuple[str, ...] = ()) -> list[Segment]:
    """timm's ``forward_head`` as two segments: pooling (and whatever else comes before the
    classifier) and the classifier itself."""
    classifier = model.get_classifier()
    return [
        Segment("pre_logits", lambda x: model.forward_head(x, pre_logits=True), _owned(model, pre_logits_parameters)),
        Segment("classifier", classifier, tuple(sorted(classifier_parameter_names(model)))),
    ]


def _vit_stem(model: VisionTransformer) -> Segment:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    return Segment("stem", forward, _owned(model, ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")))


def model_segments(model: nn.Module) -> list[Segment]:
    """The model's forward as segments, input to output; the last one is the classifier."""
    if isinstance(model, EfficientNet):
        body = [_seq(model, "stem", "conv_stem", "bn1"), *_blocks(model, "blocks"), _seq(model, "conv_head", "conv_head", "bn2")]
        return body + _head(model)
    if isinstance(model, ResNet):
        body = [_seq(model, "stem", "conv1", "bn1", "act1", "maxpool")]
        body += [_seq(model, f"layer{i}", f"layer{i}") for i in range(1, 5)]
        return body + _head(model)
    if isinstance(model, ConvNeXt):
        body = [_seq(model, "stem", "stem"), *_blocks(model, "stages"), _seq(model, "norm_pre", "norm_pre")]
        return body + _head(model, ("head.norm",))
    if isinstance(model, VisionTransformer) and not model.dynamic_img_size:
        body = [_vit_stem(model), *_blocks(model, "blocks"), _seq(model, "norm", "norm")]
        return body + _head(model, ("fc_norm", "attn_pool"))
    classifier = classifier_parameter_names(model)
    backbone = tuple(name for name, _ in model.named_parameters() if name not in classifier)
    features = Segment("backbone", lambda x: model.forward_head(model.forward_features(x), pre_logits=True), backbone)
    return [features, _head(model)[1]]


def covers_model(model: nn.Module, segments: list[Segment]) -> bool:
    """Every parameter belongs to exactly one segment."""
    owned = [name for segment in segments for name in segment.parameters]
    return len(owned) == len(set(owned)) and set(owned) == {name for name, _ in model.named_parameters()}


def first_trainable(model: nn.Module, segments: list[Segment]) -> int:
    """Index of the first segment with a trainable parameter: every segment before it is frozen."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for index, segment in enumerate(segments):
        if trainable.intersection(segment.parameters):
            return index
    return len(segments) - 1


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, then every module back in its own mode (frozen ones may be in eval while
    the rest trains, see freezing.train_mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def run_segments(segments: list[Segment], x: torch.Tensor) -> torch.Tensor:
    for segment in segments:
        x = segment.forward(x)
    return x


class Suffix:
    """The model's forward from segment ``start`` on: what the training loop calls instead of the
    model when it feeds cached activations.

    timm applies the head dropout inside ``forward_head``, before the classifier; when the cache holds
    what enters the classifier, the dropout is applied here, so cached training drops out the same way.
    """

    def __init__(self, model: nn.Module, segments: list[Segment], start: int, dropout: float) -> None:
        self.model = model
        self.segments = segments[start:]
        self.dropout = dropout if self.segments[0].name == "classifier" else 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout:
            x = F.dropout(x, self.dropout, training=self.model.training)
        return run_segments(self.segments, x)


def output_difference(expected: torch.Tensor, got: torch.Tensor) -> float:
    """Largest difference between two outputs of the same computation, relative to the largest
    expected value (at least 1); infinite when their shapes differ."""
    if expected.shape != got.shape:
        return float("inf")
    return float((expected - got).abs().max() / expected.abs().max().clamp_min(1.0))


@torch.no_grad()
def matches_forward(model: nn.Module, segments: list[Segment], probe: torch.Tensor, tolerance: float = 1e-4) -> bool:
    """The segments reproduce ``model(probe)`` in eval mode (timm may change a forward we mirror)."""
    with evaluating(model):
        expected = model(probe)
        got = run_segments(segments, probe)
    return output_difference(expected, got) <= tolerance
