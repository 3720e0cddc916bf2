"""Backbone creation with timm and the new classification head."""

from __future__ import annotations

import difflib
import logging
from typing import Optional

import timm
from timm.models import get_pretrained_cfg
from torch import nn

from .config import ModelConfig
from .errors import ModelError
from .weights import resolve_weights_file

logger = logging.getLogger(__name__)


def create_model(config: ModelConfig, num_classes: int, image_size: Optional[int] = None) -> nn.Module:
    """A timm model with pretrained weights (as configured) and a fresh ``num_classes`` head.

    ``image_size`` is passed on to architectures built for one input size (ViT and kin), whose
    position embeddings timm then resamples; the others take any size as they are.
    """
    check_model_name(config.name)
    overlay = None
    if config.pretrained and config.weights:
        overlay = {"file": str(resolve_weights_file(config.weights, config.name))}
    extra = {}
    pretrained_cfg = None if ":" in config.name else get_pretrained_cfg(config.name)
    if image_size and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        extra["img_size"] = image_size
    try:
        model = timm.create_model(
            config.name,
            pretrained=config.pretrained,
            pretrained_cfg_overlay=overlay,
            num_classes=num_classes,
            drop_rate=config.head_dropout if config.head == "linear" else 0.0,
            drop_path_rate=config.drop_path_rate or None,
            **extra,
        )
    except (RuntimeError, OSError, ValueError) as e:
        raise ModelError(_creation_failure(config, e)) from e
    if config.head == "mlp":
        replace_classifier(model, mlp_head(model.num_features, config.head_hidden_dim, config.head_dropout, num_classes))
    elif not (config.pretrained and model.pretrained_cfg.get("num_classes") == num_classes):
        reset_linear_head(model)
    return model


def check_model_name(name: str) -> None:
    """Reject names timm does not know, suggesting close ones."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    architecture = name.split(".")[0]
    if timm.is_model(architecture):
        return
    close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close names: {', '.join(close)}." if close else " `timm.list_models('*resnet*')` lists names."
    raise ModelError(f"model.name {name!r}: timm has no architecture {architecture!r}.{hint}")


def mlp_head(in_features: int, hidden: int, dropout: float, num_classes: int) -> nn.Sequential:
    """The seed-000 head: Linear -> ReLU -> Dropout -> Linear. It returns logits: the seed's
    LogSoftmax + NLLLoss pair is the cross-entropy the training loop already applies."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
    )


def reset_linear_head(model: nn.Module) -> None:
    """Small random weights and zero bias for a new linear classifier. Some timm initialisations
    (EfficientNet's scales by 1/sqrt(num_classes)) give a 10-class head logits in the tens and a
    first-epoch loss several times that of chance."""
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):
        nn.init.trunc_normal_(classifier.weight, std=0.01)
        nn.init.zeros_(classifier.bias)


def replace_classifier(model: nn.Module, head: nn.Module) -> None:
    """Put ``head`` where the model's pretrained config says its classifier lives."""
    name = model.pretrained_cfg.get("classifier")
    if isinstance(name, (list, tuple)):
        name = name[0]
    if not name:
        raise ModelError(f"{type(model).__name__} does not name its classifier; use model.head: linear.")
    model.set_submodule(name, head)


def classifier_parameter_names(model: nn.Module) -> set[str]:
    """Names of the head's parameters (the classifier named in the pretrained config)."""
    names = model.pretrained_cfg.get("classifier") or ()
    prefixes = (names,) if isinstance(names, str) else tuple(names)
    return {n for n, _ in model.named_parameters() if n.startswith(tuple(p + "." for p in prefixes))}


def _creation_failure(config: ModelConfig, error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    if config.pretrained and config.weights:
        return (
            f"Could not load the weights in model.weights {config.weights!r} into {config.name!r}: {text}. "
            "The file must hold a state dict of that architecture; pickled files are read only with "
            "weights_only=True, so re-save untrusted or custom checkpoints as safetensors."
        )
    if config.pretrained:
        return (
            f"Could not load the pretrained weights of {config.name!r} from the Hugging Face Hub: {text}. "
            "Without network access, set model.weights to a local file or folder (or run with "
            "HF_HUB_OFFLINE=1 and a populated cache); model.pretrained false trains from scratch."
        )
    return f"Could not create model {config.name!r}: {text}"


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total - trainable


