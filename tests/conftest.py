"""Shared fixtures and helpers.

Tests run offline against real files: the bundled Fashion-MNIST sample, images written on the fly,
tiny timm models (``test_resnet``, ``test_efficientnet``, ...) at small sizes. ``hub_server`` and
``hub_env`` give a test an offline Hugging Face Hub (see hub_server.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Before any Hugging Face library is imported: no network, and caches in a throwaway folder.
_HF_HOME = tempfile.mkdtemp(prefix="hf_transfer-tests-")
os.environ.update({"HF_HOME": _HF_HOME, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})

import pytest  # noqa: E402

from hub_server import HubServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "data" / "fashion-mnist-mini"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HF_HOME, ignore_errors=True)


def tiny_overrides(tmp_path: Path, **overrides: Any) -> list[str]:
    """``key=value`` overrides of a run that takes seconds: a tiny random-init model at 32 px on a
    small sample of the bundled data. Keyword names use ``__`` for the dot (``train__epochs=2``)."""
    settings: dict[str, Any] = {
        "data.path": str(MINI),
        "data.image_size": 32,
        "data.max_train_samples": 80,
        "data.max_val_samples": 40,
        "data.num_workers": 0,
        "model.name": "test_resnet",
        "model.pretrained": False,
        "model.strategy": "full",
        "train.epochs": 1,
        "train.batch_size": 16,
        "train.lr": 0.01,
        "output.dir": str(tmp_path / "run"),
    }
    settings.update({key.replace("__", "."): value for key, value in overrides.items()})
    return [f"{key}={'null' if value is None else value}" for key, value in settings.items()]


def tiny_config(tmp_path: Path, **overrides: Any):
    """A validated :class:`hf_transfer.config.Config` for :func:`tiny_overrides`."""
    from hf_transfer.config import load_config

    return load_config(None, tiny_overrides(tmp_path, **overrides))

# Token -> user, and org -> members, of the test Hub. "alice" may write to "alice/*" and "alice-lab/*",
# but not to "bob/*" nor "bob-lab/*": that is how tests reach a 403.
HUB_TOKENS = {"hf_alice_token": "alice", "hf_bob_token": "bob"}
HUB_ORGS = {"alice-lab": ["alice"], "bob-lab": ["bob"]}


@pytest.fixture
def hub_server(tmp_path: Path) -> Iterator[HubServer]:
    """A fresh, empty test Hub on 127.0.0.1 for one test; users "alice" and "bob" (``hub.token_for(name)``)."""
    with HubServer(tmp_path / "hub-server", HUB_TOKENS, HUB_ORGS) as hub:
        yield hub


@pytest.fixture
def hub_env(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """Point huggingface_hub, and so timm, transformers and datasets, at ``hub_server``, logged in as "alice".

    Setting ``HF_ENDPOINT`` is not enough once huggingface_hub is imported (which happens when a test
    module is collected): ``huggingface_hub.constants`` copies the environment into module globals at
    import time, and the module-level ``HfApi`` behind ``huggingface_hub.create_repo``/``upload_folder``/
    ``model_info``... keeps the endpoint it was built with. So this fixture sets the variables (for
    subprocesses and any code that reads them later) *and* patches those globals; ``monkeypatch`` undoes
    all of it after the test. timm and transformers download through huggingface_hub and read these
    globals at call time, so they follow without patching anything of theirs. ``datasets.config`` makes
    its own import-time copies (endpoint, offline mode, caches), so those are patched too. Caches go to a
    temporary HF_HOME, so nothing a test loads is found by another; Xet is off (the server speaks the
    regular-file and LFS protocols, and Xet would open a session with its own cache); telemetry is off;
    offline mode is off.

    Returns the server, whose ``url`` is the endpoint; pass ``token=hub.token_for("bob")`` to act as bob,
    or ``token=False`` to act anonymously.
    """
    from datasets import config as datasets_config
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _cache_manager

    home = tmp_path / "hf-home"
    url = hub_server.url
    env = {
        "HF_ENDPOINT": url,
        "HF_TOKEN": hub_server.token_for("alice"),
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets: see datasets_patches below
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    patches = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(url).hostname},
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(home / "hub"))  # imported by name: scan_cache_dir()

    datasets_patches = {
        "HF_ENDPOINT": url,
        "HUB_DATASETS_URL": url + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_DATASETS_CACHE": home / "datasets",
        "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
        "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
        "HF_MODULES_CACHE": home / "modules",
        # Requests that would leave the machine: a download-count HEAD to s3.amazonaws.com, and the dataset
        # viewer's parquet export at "datasets-server." + the endpoint's host, which no local server can be.
        # datasets tolerates both failing; switching them off keeps the tests off the network.
        "HF_UPDATE_DOWNLOAD_COUNTS": False,
        "USE_PARQUET_EXPORT": False,
    }
    for name, value in datasets_patches.items():
        monkeypatch.setattr(datasets_config, name, value)
    return hub_server


def write_imagefolder(root: Path, layout: dict[str, dict[str, int]], size: int = 24, mode: str = "RGB") -> Path:
    """Write ``layout`` = {split: {class: count}} as PNG files under ``root`` (split "" = no split folder).
    Each class gets a distinct brightness so a model can tell them apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for index, (name, count) in enumerate(sorted(classes.items())):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                base = 40 + 180 * index / max(1, len(classes) - 1)
                pixels = np.clip(rng.normal(base, 20, (size, size, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).convert(mode).save(folder / f"{name}_{number}.png")
    return root
