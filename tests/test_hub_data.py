"""Hub datasets on the test Hub, loaded by the real `datasets` library: ids, configurations, revisions, access.

Repos are written the two ways users write them: ``upload_folder`` of an imagefolder tree with a README that
declares configurations, and ``Dataset.push_to_hub`` (parquet shards through LFS, README with dataset_info
and configs). Nothing is mocked: ``hub_env`` only points huggingface_hub and datasets at the local server.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from huggingface_hub import HfApi
from PIL import Image as PILImage

from hf_transfer.config import DataConfig
from hf_transfer.data import load_splits
from hf_transfer.errors import DataError
from hf_transfer.training import train

from conftest import tiny_config, write_imagefolder
from hub_server import HubServer

FINE = ["apple", "bee", "cloud"]
COARSE = ["thing", "animal"]

# Two configurations of one imagefolder repo: everything, and one image per class and split.
CONFIGS_README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: train/*/*.png
  - split: validation
    path: validation/*/*.png
- config_name: small
  data_files:
  - split: train
    path: train/*/*_0.png
  - split: validation
    path: validation/*/*_0.png
---
# Pets
"""


def _cifar_like(train_rows: int, test_rows: int = 3, fine: list[str] = FINE) -> DatasetDict:
    """CIFAR-100-like columns: ``img`` (Image), ``fine_label`` and ``coarse_label`` (ClassLabels)."""
    features = Features({"img": Image(), "fine_label": ClassLabel(names=fine), "coarse_label": ClassLabel(names=COARSE)})

    def split(rows: int) -> Dataset:
        images = [PILImage.new("RGB", (8, 8), (40 + 60 * (i % len(fine)), 0, 0)) for i in range(rows)]
        data = {"img": images, "fine_label": [i % len(fine) for i in range(rows)], "coarse_label": [i % 2 for i in range(rows)]}
        return Dataset.from_dict(data, features=features)

    return DatasetDict({"train": split(train_rows), "test": split(test_rows)})


def test_imagefolder_repo_loads_by_id_and_configuration(hub_env: HubServer, tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "pets", {"train": {"cat": 3, "dog": 3}, "validation": {"cat": 2, "dog": 2}}, 8)
    (root / "README.md").write_text(CONFIGS_README)
    HfApi().create_repo("alice/pets", repo_type="dataset")
    HfApi().upload_folder(folder_path=root, repo_id="alice/pets", repo_type="dataset")

    loaded = datasets.load_dataset("alice/pets")
    assert {name: len(split) for name, split in loaded.items()} == {"train": 6, "validation": 4}

    splits = load_splits(DataConfig(path="alice/pets"), seed=0)
    assert (len(splits.train), len(splits.val), splits.test, splits.val_carved) == (6, 4, None, False)
    assert (splits.image_column, splits.label_column, splits.label_names) == ("image", "label", ["cat", "dog"])
    small = load_splits(DataConfig(path="alice/pets", name="small"), seed=0)
    assert (len(small.train), len(small.val), small.label_names) == (2, 2, ["cat", "dog"])
    assert hub_env.unserved == []


def test_pushed_parquet_dataset_detects_cifar_like_columns_and_configurations(hub_env: HubServer) -> None:
    _cifar_like(train_rows=12).push_to_hub("alice/cifar-like")
    _cifar_like(train_rows=4, fine=["x", "y"]).push_to_hub("alice/cifar-like", config_name="small")
    files = HfApi().list_repo_files("alice/cifar-like", repo_type="dataset")
    assert {"README.md", "data/train-00000-of-00001.parquet", "small/train-00000-of-00001.parquet"} <= set(files)
    assert ("PUT", 200) in {(method, status) for method, _, status in hub_env.requests}  # parquet went through LFS

    splits = load_splits(DataConfig(path="alice/cifar-like", val_fraction=0.25), seed=0)
    assert (splits.image_column, splits.label_column, splits.label_names) == ("img", "fine_label", FINE)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.val_carved) == (9, 3, 3, True)
    assert isinstance(splits.train[0]["img"], PILImage.Image)
    coarse = load_splits(DataConfig(path="alice/cifar-like", label_column="coarse_label", val_fraction=0.25), seed=0)
    assert coarse.label_names == COARSE

    small = load_splits(DataConfig(path="alice/cifar-like", name="small", val_fraction=0.25), seed=0)
    assert (len(small.train), len(small.val), len(small.test), small.label_names) == (3, 1, 3, ["x", "y"])
    assert hub_env.unserved == []


def test_revision_picks_a_branch_or_commit(hub_env: HubServer) -> None:
    first = _cifar_like(train_rows=12).push_to_hub("alice/versions")
    _cifar_like(train_rows=8, fine=["x", "y"]).push_to_hub("alice/versions", revision="v2")  # creates the branch

    def loaded(revision: str | None) -> tuple[int, list[str]]:
        splits = load_splits(DataConfig(path="alice/versions", revision=revision, val_fraction=0.25), seed=0)
        return len(splits.train) + len(splits.val), splits.label_names

    assert loaded(None) == loaded("main") == loaded(first.oid) == (12, FINE)
    assert loaded("v2") == (8, ["x", "y"])
    assert hub_env.unserved == []


def test_missing_private_or_misnamed_datasets_give_clear_errors(hub_env: HubServer) -> None:
    with pytest.raises(DataError) as missing:
        load_splits(DataConfig(path="alice/missing"), seed=0)
    message = str(missing.value)
    assert message.startswith("Could not load dataset 'alice/missing': DatasetNotFoundError: ")
    assert "data.path" in message and "hf auth login" in message and ".." not in message

    bob = hub_env.token_for("bob")
    _cifar_like(train_rows=4).push_to_hub("bob/secret", private=True, token=bob)
    with pytest.raises(DataError, match=r"Could not load dataset 'bob/secret': DatasetNotFoundError"):
        load_splits(DataConfig(path="bob/secret"), seed=0)  # alice's token: 404, as if it did not exist
    assert len(datasets.load_dataset("bob/secret", token=bob)["train"]) == 4  # bob's token reads it

    _cifar_like(train_rows=4).push_to_hub("alice/named")
    with pytest.raises(DataError, match=r"data.revision 'v9'.*Revision 'v9' doesn't exist.*data.revision \(a branch"):
        load_splits(DataConfig(path="alice/named", revision="v9"), seed=0)
    with pytest.raises(DataError, match=r"data.name 'tiny'.*BuilderConfig 'tiny' not found. Available: \['default'\]"):
        load_splits(DataConfig(path="alice/named", name="tiny"), seed=0)
    assert hub_env.unserved == []


def test_training_on_a_hub_dataset_writes_metrics(hub_env: HubServer, tmp_path: Path) -> None:
    _cifar_like(train_rows=16).push_to_hub("alice/train-me")
    config = tiny_config(tmp_path, data__path="alice/train-me", data__val_fraction=0.25, data__max_train_samples=None)
    results = train(config)
    metrics = json.loads((Path(config.output.dir) / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results))
    assert metrics["label_names"] == FINE and metrics["val"]["num_samples"] == 4
    assert hub_env.unserved == []
