"""Find unreadable images before training starts, instead of failing in a DataLoader worker hours in.

Every image is decoded once (truncated files, zero-byte files, non-images named .jpg, decompression
bombs); the result is cached by `datasets` under the dataset's fingerprint, so later runs on the same
data pay nothing. Bad rows either stop the run with a list of the files, or, with
``data.on_bad_image: skip``, are dropped and counted.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Optional

from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from .errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_FOLDER_NAMES = {"train", "training", "validation", "valid", "val", "dev", "test", "testing", "eval"}
SHOWN = 10  # bad files listed in an error message


def check_images(split: Dataset, image_column: str, name: str, policy: str) -> tuple[Dataset, list[dict[str, Any]]]:
    """``split`` without its unreadable images (policy ``skip``) and the list of what was dropped;
    raises DataError listing them when the policy is ``error``."""
    bad = find_bad_images(split, image_column)
    if not bad:
        return split, []
    if policy == "error":
        listed = "; ".join(f"{row['file']}: {row['reason']}" for row in bad[:SHOWN])
        more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
        raise DataError(
            f"{len(bad)} unreadable image(s) in the {name} split: {listed}{more}. Remove or repair them, "
            "or set data.on_bad_image: skip to leave them out (they are counted in metrics.json)."
        )
    logger.warning("Skipping %d unreadable image(s) in the %s split, e.g. %s", len(bad), name, bad[0])
    bad_rows = {row["row"] for row in bad}
    return split.select([i for i in range(len(split)) if i not in bad_rows]), bad


def find_bad_images(split: Dataset, image_column: str) -> list[dict[str, Any]]:
    """Rows whose image cannot be fully decoded: ``{"row", "file", "reason"}`` each."""
    raw = split.cast_column(image_column, ImageFeature(decode=False)).select_columns([image_column])
    limit = Image.MAX_IMAGE_PIXELS  # part of the cache key: a new limit re-checks
    checked = raw.map(
        _check_batch,
        batched=True,
        with_indices=True,
        remove_columns=[image_column],
        fn_kwargs={"column": image_column, "max_pixels": limit},
        desc="Checking images",
    )
    return [row for row in checked if row["reason"] is not None]


def _check_batch(batch: dict[str, list], indices: list[int], column: str, max_pixels: Optional[int]) -> dict[str, list]:
    Image.MAX_IMAGE_PIXELS = max_pixels  # the limit the rows are checked against (and the cache key)
    files = [value.get("path") or "<embedded bytes>" for value in batch[column]]
    return {"row": indices, "file": files, "reason": [image_problem(value) for value in batch[column]]}


def image_problem(value: dict[str, Any]) -> Optional[str]:
    """Why the image stored as ``{"bytes", "path"}`` cannot be used, or None when it decodes.
    Images over PIL's ``MAX_IMAGE_PIXELS`` count as decompression bombs."""
    source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if isinstance(source, str) and os.path.getsize(source) == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"decompression bomb: {e}"
    except Image.UnidentifiedImageError:
        return "not an image file"
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        return f"corrupt image ({e})"
    return None


def check_class_folders(root: Path) -> None:
    """In a local image folder, a class folder without images would silently drop the class."""
    split_folders = [d for d in _folders(root) if d.name.lower() in SPLIT_FOLDER_NAMES]
    has_images: dict[str, bool] = {}
    for parent in split_folders or [root]:
        for folder in _folders(parent):
            found = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*") if p.is_file())
            has_images[folder.name] = has_images.get(folder.name, False) or found
    empty = sorted(name for name, found in has_images.items() if not found)
    if empty:
        raise DataError(
            f"Class folder(s) without images in {root}: {', '.join(empty)}. Add images to them or remove them; "
            "otherwise those classes would silently be missing from the model."
        )


def _folders(parent: Path) -> list[Path]:
    """Sub-folders, without the hidden ones (.ipynb_checkpoints and the like) that datasets ignores too."""
    return [d for d in parent.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))]
