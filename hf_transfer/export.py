"""A trained model as a Hub model repo on disk: timm's ``model.safetensors`` + ``config.json``.

timm writes both (``save_for_hf``), with ``label_names`` and a ``pretrained_cfg`` describing the
evaluation preprocessing actually used, so the folder loads with ``timm.create_model("local-dir:…")``
and transformers' TimmWrapper. Files are written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from timm.models import save_for_hf
from torch import nn

EXPORT_FILES = ("model.safetensors", "config.json")


def export_model(
    model: nn.Module,
    directory: Path,
    label_names: list[str],
    input_config: dict[str, Any],
    head: Optional[dict[str, Any]] = None,
) -> None:
    """Write ``model`` (unwrapped, on any device) into ``directory`` in timm's Hub format.

    ``head`` describes a non-timm head (the MLP head) under the ``hf_transfer_head`` config key;
    such a model needs :func:`hf_transfer.predict` style loading, not plain timm.
    """
    directory.mkdir(parents=True, exist_ok=True)
    model_config: dict[str, Any] = {"label_names": list(label_names)}
    if head:
        model_config["hf_transfer_head"] = head
    # the pretrained_cfg timm writes must describe the preprocessing this model was trained with
    model.pretrained_cfg = {**model.pretrained_cfg, **input_config}
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as staging:
        save_for_hf(model, staging, model_config=model_config, safe_serialization=True)
        _drop_num_classes_arg(Path(staging) / "config.json")
        for name in EXPORT_FILES:
            os.replace(Path(staging) / name, directory / name)


def _drop_num_classes_arg(config_path: Path) -> None:
    """Remove ``num_classes`` from ``model_args``: transformers' TimmWrapper passes both
    ``num_classes=num_labels`` and ``**model_args`` to timm and fails on the duplicate, while timm
    reads the class count from the top-level ``num_classes`` anyway."""
    config = json.loads(config_path.read_text())
    model_args = config.get("model_args", {})
    model_args.pop("num_classes", None)
    if not model_args:
        config.pop("model_args", None)
    config_path.write_text(json.dumps(config, indent=2))
