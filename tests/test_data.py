"""Data: local folders and datasets, split carving, column detection and class names."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from hf_transfer.config import DataConfig
from hf_transfer.data import detect_columns, encode_labels, load_splits, pick_splits
from hf_transfer.errors import DataError

from conftest import MINI, write_imagefolder

CLASSES = ["Ankle_boot", "Bag", "Coat", "Dress", "Pullover", "Sandal", "Shirt", "Sneaker", "T-shirt_top", "Trouser"]


def test_bundled_imagefolder_uses_its_validation_split() -> None:
    splits = load_splits(DataConfig(path=str(MINI)), seed=0)
    assert (len(splits.train), len(splits.val), splits.test) == (1000, 300, None)
    assert splits.label_names == CLASSES and not splits.val_carved
    assert (splits.image_column, splits.label_column) == ("image", "label")
    assert Counter(splits.val["label"]) == {i: 30 for i in range(10)}


def test_validation_is_carved_from_train_stratified_and_seeded(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "imgs", {"": {"a": 30, "b": 30, "c": 30}})
    config = DataConfig(path=str(root), val_fraction=0.2)
    first, again, other = (load_splits(config, seed) for seed in (1, 1, 2))
    assert first.val_carved and (len(first.train), len(first.val)) == (72, 18)
    assert Counter(first.val["label"]) == {0: 6, 1: 6, 2: 6}
    paths = [row["image"].filename for row in first.val]
    assert paths == [row["image"].filename for row in again.val]
    assert paths != [row["image"].filename for row in other.val]
    assert not set(paths) & {row["image"].filename for row in first.train}


def test_named_splits_are_checked_and_listed(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "imgs", {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}})
    splits = load_splits(DataConfig(path=str(root)), seed=0)
    assert splits.val_carved and len(splits.test) == 4  # no validation split: carved; test kept for the end
    with pytest.raises(DataError, match=r"data.val_split 'valid' is not a split.*Splits: train, test"):
        load_splits(DataConfig(path=str(root), val_split="valid"), seed=0)
    with pytest.raises(DataError, match=r"data.train_split 'training'"):
        load_splits(DataConfig(path=str(root), train_split="training"), seed=0)


def _dataset(features: dict, rows: int = 6) -> DatasetDict:
    from PIL import Image as PILImage

    data = {}
    for name, feature in features.items():
        if isinstance(feature, Image):
            data[name] = [PILImage.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(rows)]
        elif isinstance(feature, ClassLabel):
            data[name] = [i % feature.num_classes for i in range(rows)]
        else:
            data[name] = [f"c{i % 2}" if feature.dtype == "string" else i % 3 for i in range(rows)]
    return DatasetDict({"train": Dataset.from_dict(data, features=Features(features))})


def test_columns_are_detected_by_feature_type_and_preferred_name() -> None:
    cifar100_like = _dataset({"img": Image(), "fine_label": ClassLabel(names=list("abc")), "coarse_label": ClassLabel(names=list("xy"))})
    assert detect_columns(cifar100_like) == ("img", "fine_label")
    assert detect_columns(cifar100_like, label_column="coarse_label") == ("img", "coarse_label")


def test_ambiguous_or_missing_columns_ask_for_an_explicit_name() -> None:
    two_labels = _dataset({"img": Image(), "kind": ClassLabel(names=list("ab")), "size": ClassLabel(names=list("xy"))})
    with pytest.raises(DataError, match=r"several \(kind, size\) label columns.*data.label_column"):
        detect_columns(two_labels)
    no_image = _dataset({"text": Value("string"), "label": ClassLabel(names=list("ab"))})
    with pytest.raises(DataError, match=r"no image columns.*data.image_column.*Columns: text, label"):
        detect_columns(no_image)
    with pytest.raises(DataError, match=r"data.label_column 'target' is not a column"):
        detect_columns(two_labels, label_column="target")


def test_string_and_integer_labels_become_class_names() -> None:
    strings = encode_labels(_dataset({"image": Image(), "label": Value("string")}), "label")
    assert strings["train"].features["label"].names == ["c0", "c1"]
    integers = encode_labels(_dataset({"image": Image(), "label": Value("int64")}), "label")
    assert integers["train"].features["label"].names == ["0", "1", "2"]


def test_a_single_class_is_rejected(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "imgs", {"": {"only": 5}})
    with pytest.raises(DataError, match="no label columns.*its own sub-folder \\(at least 2 classes\\)"):
        load_splits(DataConfig(path=str(root)), seed=0)
    saved = tmp_path / "saved"
    _dataset({"image": Image(), "label": ClassLabel(names=["only"])}).save_to_disk(str(saved))
    with pytest.raises(DataError, match="has 1 class.*at least 2"):
        load_splits(DataConfig(path=str(saved)), seed=0)


def test_a_missing_local_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.path '\./nope/imgs' does not exist"):
        load_splits(DataConfig(path="./nope/imgs"), seed=0)


def test_test_split_auto_skips_the_one_used_for_validation() -> None:
    dataset = DatasetDict({name: _dataset({"image": Image(), "label": ClassLabel(names=list("ab"))})["train"] for name in ("train", "test")})
    _, val, test, carved = pick_splits(dataset, DataConfig(path="x", val_split="test"), "label", seed=0)
    assert test is None and not carved and len(val) == 6
