"""An exported model back in memory, from its folder or its Hub repo, with its labels and preprocessing.

An export with timm's linear classifier loads with plain timm and transformers as well; the optional
MLP head (``hf_transfer_head`` in config.json) is no timm module, so this loader builds it around the
timm backbone that ``local-dir:`` creates. Either way timm reads the same config.json, so the
architecture, labels and preprocessing are the ones the other libraries see.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import timm
import torch
from huggingface_hub import constants, parse_hf_uri, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HfUriError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.data import resolve_data_config
from torch import nn

from .errors import ModelError
from .folding import folded_copy
from .model import mlp_head, replace_classifier
from .outputs import METRICS_FILE
from .transforms import build_transform

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)
HEAD_KEY = "hf_transfer_head"


@dataclass
class LoadedModel:
    """A model ready for inference and what it needs around it."""

    model: nn.Module  # in eval mode, BatchNorm folded into the convolutions (inference only)
    label_names: list[str]  # in class-index order
    input_config: dict[str, Any]  # timm data config: input_size, interpolation, crop_pct, crop_mode, mean, std
    transform: Callable  # the evaluation preprocessing: RGB PIL image -> tensor
    folder: Path  # where the files were read (the Hub cache snapshot for a repo)


def load_model(source: Union[str, Path], device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """Load an exported model from a local folder or a Hub model repo (``OWNER/NAME``, ``hf-hub:OWNER/NAME``,
    ``OWNER/NAME@REVISION``); errors name the folder, repo or file and say what to do."""
    folder = resolve_model_folder(str(source))
    config = read_model_config(folder)
    # NHWC convolutions: faster inference on CPU and on CUDA (see benchmarks/speed.py)
    model = build_model(folder, config).eval().to(device, memory_format=torch.channels_last)
    input_config = resolve_data_config(model=model)
    model = folded_copy(model, torch.randn(2, *input_config["input_size"], device=device))
    return LoadedModel(model, list(config["label_names"]), input_config, build_transform(input_config), folder)


def resolve_model_folder(source: str) -> Path:
    """The local folder holding ``source``'s files: the folder itself, or a download of the Hub repo."""
    if source.startswith("local-dir:"):
        return _existing_folder(Path(source[len("local-dir:"):]).expanduser())
    from_hub = source.startswith("hf-hub:")
    name = source[len("hf-hub:"):] if from_hub else source
    if not from_hub and Path(name).expanduser().exists():
        return _existing_folder(Path(name).expanduser())
    try:
        target = parse_hf_uri(f"hf://{name}")
    except HfUriError:
        target = None
    if target is None or target.type != "model" or target.path_in_repo:
        raise ModelError(
            f"Model {source!r} is neither a local folder nor a Hub model repo id. Give the folder of an export "
            "(the output.dir of a run) or a repo id like OWNER/NAME, optionally with @REVISION."
        )
    return download_model(target.id, target.revision, local_hint=not from_hub)


def download_model(repo_id: str, revision: Optional[str] = None, local_hint: bool = False) -> Path:
    """The snapshot of the model files of ``repo_id`` (from the cache when it is already there)."""
    where = f"{repo_id}{'@' + revision if revision else ''} on {constants.ENDPOINT}"
    also = f" There is no local folder {repo_id!r} either." if local_hint else ""
    try:  # with the validation metrics, which the demo shows
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[*MODEL_FILES, METRICS_FILE]))
    except RepositoryNotFoundError:
        raise ModelError(
            f"No model repo {where} (or it is private and you are not logged in: run `hf auth login` or set "
            f"HF_TOKEN).{also}"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"Model repo {repo_id} has no revision {revision!r} on {constants.ENDPOINT}.") from None
    except LocalEntryNotFoundError:
        raise ModelError(
            f"Cannot download {where}: the Hub is unreachable or HF_HUB_OFFLINE is set, and the model is not in "
            f"the local cache.{also}"
        ) from None
    except HfHubHTTPError as e:
        raise ModelError(f"Downloading {where} failed: {e}") from None


def read_model_config(folder: Path) -> dict[str, Any]:
    """config.json of an export, checked for what loading and the Hub widgets need; the weights file must exist."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing: {folder} is not an exported model (it needs {' and '.join(MODEL_FILES)}).")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({e}); re-export the run with `python -m hf_transfer.export`.") from None
    problem = _config_problem(config)
    if problem:
        raise ModelError(f"{path}: {problem}. Re-export the run with `python -m hf_transfer.export`.")
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelError(f"{folder / WEIGHTS_FILE} is missing; re-export the run with `python -m hf_transfer.export`.")
    return config


def build_model(folder: Path, config: dict[str, Any]) -> nn.Module:
    """timm's model from the folder, with the MLP head rebuilt and loaded when config.json names one."""
    head = config.get(HEAD_KEY)
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=head is None)
        if head is not None:
            replace_classifier(model, mlp_head(model.num_features, head["hidden_dim"], head.get("dropout", 0.0), config["num_classes"]))
            model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    except (RuntimeError, ValueError, KeyError, AttributeError, OSError, SafetensorError) as e:
        raise ModelError(
            f"{folder / WEIGHTS_FILE} does not load into the {config['architecture']!r} model that {folder / CONFIG_FILE} "
            f"describes: {type(e).__name__}: {e}"
        ) from e
    return model


def _config_problem(config: Any) -> Optional[str]:
    """What is wrong with an export's config.json, or None."""
    if not isinstance(config, dict):
        return "must hold a JSON object"
    missing = [key for key in ("architecture", "num_classes", "label_names", "pretrained_cfg") if key not in config]
    if missing:
        return f"has no {', '.join(missing)}"
    names, count = config["label_names"], config["num_classes"]
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        return "label_names must be a list of class names"
    if not isinstance(count, int) or len(names) != count:
        return f"label_names has {len(names)} names but num_classes is {count!r}"
    pretrained_cfg = config["pretrained_cfg"]
    if not isinstance(pretrained_cfg, dict) or any(key not in pretrained_cfg for key in ("input_size", "mean", "std")):
        return "pretrained_cfg must give input_size, mean and std (the preprocessing of the model)"
    head = config.get(HEAD_KEY)
    if head is not None and not (isinstance(head, dict) and head.get("type") == "mlp" and isinstance(head.get("hidden_dim"), int)):
        return f"{HEAD_KEY} must be {{'type': 'mlp', 'hidden_dim': N, 'dropout': P}}"
    return None


def _existing_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(f"Model folder {path} does not exist or is not a folder.")
    return path
