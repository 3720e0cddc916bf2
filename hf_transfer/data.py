"""Dataset loading with `datasets`: local folders or Hub ids, splits, image/label columns, class names.

The result is a :class:`Splits` of plain `datasets.Dataset` objects that share one ClassLabel
feature, so every later stage can rely on ``label_names[i]`` being the name of class ``i``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value
from datasets.exceptions import DatasetNotFoundError
from PIL import Image as PILImage

from .config import DataConfig
from .errors import DataError
from .image_check import check_class_folders, check_images

logger = logging.getLogger(__name__)

IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "photo", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "category")
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")
PIL_MAX_IMAGE_PIXELS = PILImage.MAX_IMAGE_PIXELS  # PIL's default, restored when data.max_image_pixels is null


@dataclass
class Splits:
    """The data of one run, ready for transforms."""

    train: Dataset
    val: Dataset
    test: Optional[Dataset]
    image_column: str
    label_column: str
    label_names: list[str]
    val_carved: bool  # True when val was carved out of train (not a split of the dataset)
    skipped: dict[str, list[dict]] = field(default_factory=dict)  # unreadable images left out, per split

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def load_splits(config: DataConfig, seed: int) -> Splits:
    """Load the dataset named by ``config`` and return its train/val/test splits, every image
    checked to decode (see :mod:`hf_transfer.image_check`)."""
    # PIL's own decompression-bomb guard, for the check below and for decoding in DataLoader workers
    PILImage.MAX_IMAGE_PIXELS = config.max_image_pixels or PIL_MAX_IMAGE_PIXELS
    dataset = load_dataset_dict(config)
    image_column, label_column = detect_columns(dataset, config.image_column, config.label_column)
    dataset = encode_labels(dataset, label_column)
    label_names = dataset[next(iter(dataset))].features[label_column].names
    if len(label_names) < 2:
        raise DataError(
            f"The dataset at {config.path!r} has {len(label_names)} class ({label_names}); a classifier needs "
            "at least 2. With a folder of images, put each class in its own sub-folder."
        )
    train, val, test, carved = pick_splits(dataset, config, label_column, seed)
    checked, skipped = {}, {}
    named = {"train": _subset(train, config.max_train_samples, seed), "val": _subset(val, config.max_val_samples, seed)}
    if test is not None:
        named["test"] = test
    for name, split in named.items():
        checked[name], dropped = check_images(split, image_column, name, config.on_bad_image)
        if dropped:
            skipped[name] = dropped
    return Splits(
        checked["train"], checked["val"], checked.get("test"), image_column, label_column, list(label_names),
        carved, skipped,
    )


def load_dataset_dict(config: DataConfig) -> DatasetDict:
    """A local folder (imagefolder layout, parquet/csv files, or `save_to_disk` output) or a Hub id."""
    path = Path(config.path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(f"data.path {config.path!r} is a file; point it at a folder of images or a Hub dataset id.")
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        check_class_folders(path)
        return _load(str(path), config)
    if _looks_local(config.path):
        raise DataError(
            f"data.path {config.path!r} does not exist. Point it at a folder of images with one sub-folder "
            "per class (optionally inside train/ and validation/ folders), or at a Hub dataset id."
        )
    return _load(config.path, config)


def _load(path: str, config: DataConfig) -> DatasetDict:
    try:
        loaded = datasets.load_dataset(path, config.name, revision=config.revision)
    except Exception as e:  # datasets raises many types (network, not found, empty folder)
        raise DataError(_load_failure(path, config, e)) from e
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    return loaded


def _load_failure(path: str, config: DataConfig, error: Exception) -> str:
    """What `datasets` said, and what to change: not found (or not readable), unreachable, or anything else."""
    named = (("name", config.name), ("revision", config.revision))
    asked = "".join(f", data.{key} {value!r}" for key, value in named if value)
    message = f"Could not load dataset {path!r}{asked}: {type(error).__name__}: {str(error).rstrip('.')}."
    if isinstance(error, DatasetNotFoundError):
        return message + (
            " Check data.path (a local folder, or the id 'owner/name' of a Hub dataset) and data.revision "
            "(a branch, tag or commit of it). A private or gated dataset also needs a token that can read it: "
            "run `hf auth login` or set HF_TOKEN."
        )
    if isinstance(error, ConnectionError):
        return message + (
            " Hub datasets need network access; offline (HF_HUB_OFFLINE=1) only datasets already in the HF "
            "cache load. Or point data.path at a local copy."
        )
    return message + " Check data.path, data.name (a configuration of the dataset) and data.revision."


def _looks_local(path: str) -> bool:
    """Hub ids look like ``name`` or ``owner/name``; anything else is meant as a local path."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path


def detect_columns(
    dataset: DatasetDict, image_column: Optional[str] = None, label_column: Optional[str] = None
) -> tuple[str, str]:
    """The image and label column names: the ones asked for, else detected from the features."""
    features = dataset[next(iter(dataset))].features
    columns = list(features)
    for asked, key in ((image_column, "image_column"), (label_column, "label_column")):
        if asked is not None and asked not in features:
            raise DataError(f"data.{key} {asked!r} is not a column of the dataset. Columns: {', '.join(columns)}.")
    if image_column is None:
        images = [name for name, feature in features.items() if isinstance(feature, Image)]
        image_column = _choose(images, IMAGE_COLUMN_NAMES, "image", columns)
    if label_column is None:
        labels = [name for name, feature in features.items() if isinstance(feature, ClassLabel)]
        if not labels:
            labels = [
                name
                for name, feature in features.items()
                if name in LABEL_COLUMN_NAMES and isinstance(feature, Value) and _is_label_dtype(feature.dtype)
            ]
        label_column = _choose(labels, LABEL_COLUMN_NAMES, "label", columns)
    if not isinstance(features[image_column], Image):
        raise DataError(
            f"Column {image_column!r} holds {features[image_column]}, not images. Set data.image_column to "
            f"the column with the images. Columns: {', '.join(columns)}."
        )
    return image_column, label_column


def _choose(candidates: list[str], preferred: tuple[str, ...], kind: str, columns: list[str]) -> str:
    if len(candidates) == 1:
        return candidates[0]
    for name in preferred:
        if name in candidates:
            return name
    what = "no" if not candidates else f"several ({', '.join(candidates)})"
    folder_hint = (
        " For a folder of images, put each class in its own sub-folder (at least 2 classes)."
        if kind == "label" and not candidates
        else ""
    )
    raise DataError(
        f"Found {what} {kind} columns in the dataset; set data.{kind}_column to the one to use. "
        f"Columns: {', '.join(columns)}.{folder_hint}"
    )


def _is_label_dtype(dtype: str) -> bool:
    return dtype == "string" or dtype.startswith(("int", "uint"))


def encode_labels(dataset: DatasetDict, label_column: str) -> DatasetDict:
    """Make the label column a ClassLabel shared by all splits (strings or ints become class names)."""
    feature = dataset[next(iter(dataset))].features[label_column]
    if isinstance(feature, ClassLabel):
        return dataset
    values = sorted({value for split in dataset.values() for value in split.unique(label_column)})
    if None in values:
        raise DataError(f"Some rows have no value in label column {label_column!r}; remove them or fix the labels.")
    if feature.dtype == "string":
        names = [str(v) for v in values]
        return dataset.cast_column(label_column, ClassLabel(names=names))
    if values[0] < 0:
        raise DataError(f"Label column {label_column!r} has negative values ({values[0]}); labels must be 0..N-1.")
    names = [str(i) for i in range(int(values[-1]) + 1)]
    return dataset.cast_column(label_column, ClassLabel(names=names))


def pick_splits(
    dataset: DatasetDict, config: DataConfig, label_column: str, seed: int
) -> tuple[Dataset, Dataset, Optional[Dataset], bool]:
    """(train, val, test, val_carved): named splits, or a stratified seeded carve of train for val."""
    available = ", ".join(dataset)
    if config.train_split not in dataset:
        raise DataError(f"data.train_split {config.train_split!r} is not a split of the dataset. Splits: {available}.")
    val_name = config.val_split
    if val_name == "auto":
        val_name = next((name for name in VALIDATION_SPLIT_NAMES if name in dataset), None)
    elif val_name is not None and val_name not in dataset:
        raise DataError(
            f"data.val_split {val_name!r} is not a split of the dataset. Splits: {available}. Name one of them, "
            "or set data.val_split to null to carve data.val_fraction of the training split."
        )
    test_name = config.test_split
    if test_name == "auto":
        test_name = "test" if "test" in dataset and val_name != "test" else None
    elif test_name is not None and test_name not in dataset:
        raise DataError(
            f"data.test_split {test_name!r} is not a split of the dataset. Splits: {available}. "
            "Set it to null to skip the final test evaluation."
        )
    train = dataset[config.train_split]
    test = dataset[test_name] if test_name else None
    if val_name is not None:
        return train, dataset[val_name], test, False
    train, val = carve(train, config.val_fraction, label_column, seed)
    return train, val, test, True


def carve(train: Dataset, fraction: float, label_column: str, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``fraction`` of ``train`` off as validation, stratified by class where possible."""
    if round(len(train) * fraction) < 1:
        raise DataError(
            f"data.val_fraction {fraction} of {len(train)} training images leaves no validation image; "
            "raise data.val_fraction or provide a validation split."
        )
    try:
        parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=label_column)
    except ValueError as e:  # a class too small to stratify
        logger.warning("Validation split is not stratified (%s)", e)
        parts = train.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def _subset(split: Dataset, limit: Optional[int], seed: int) -> Dataset:
    if limit is None or limit >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(limit))
