"""Example images for the demo, taken from the model's own validation split.

The split is rebuilt from the run's ``training_config.yaml`` with training's own loader, and accepted only
when its `datasets` fingerprint is the one ``run_info.json`` recorded: the examples are then images the
model was validated on, never trained on. The files are written as they are stored (no re-encoding), so
the demo's prediction of an example is the predict command's prediction of that file.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from datasets import Image as ImageFeature
from PIL import Image

from .config import load_config
from .data import load_splits
from .errors import HfTransferError
from .outputs import CONFIG_FILE
from .run_info import read_run_info

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 10


def write_examples(model_dir: Path, target: Path, limit: int = MAX_EXAMPLES) -> list[Path]:
    """The first validation image of each class (classes in index order, at most ``limit``), written to
    ``target`` as ``NN-<class>.<ext>``. When the run's data cannot be loaded, or is no longer the data the
    model was validated on, logs why and returns ``[]``: the demo works without examples."""
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        logger.warning("No examples: %s is missing, so the validation data is unknown", config_path)
        return []
    try:
        config = load_config(config_path)
        splits = load_splits(config.data, config.train.seed)
    except HfTransferError as e:
        logger.warning("No examples: the validation data of %s cannot be loaded: %s", model_dir, e)
        return []
    recorded = read_run_info(model_dir).get("data", {}).get("splits", {}).get("validation", {}).get("fingerprint")
    if recorded != splits.val._fingerprint:
        logger.warning(
            "No examples: the validation split at %s is not the one %s was validated on (fingerprint %s, recorded %s)",
            config.data.path, model_dir, splits.val._fingerprint, recorded,
        )
        return []
    rows = splits.val.cast_column(splits.image_column, ImageFeature(decode=False))
    first: dict[int, dict] = {}
    for row in rows.select_columns([splits.image_column, splits.label_column]):  # one row at a time
        first.setdefault(row[splits.label_column], row[splits.image_column])
        if len(first) == splits.num_classes:
            break
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for label in sorted(first)[:limit]:
        data = first[label]["bytes"] or Path(first[label]["path"]).read_bytes()
        path = target / f"{len(written):02d}-{splits.label_names[label]}{_extension(data)}"
        path.write_bytes(data)
        written.append(path)
    return written


def _extension(data: bytes) -> str:
    """The file extension of encoded image bytes (``.png``, ``.jpeg``, ...), from their format."""
    with Image.open(io.BytesIO(data)) as image:
        return f".{(image.format or 'png').lower()}"
