"""Shared fixtures. ``hub_server`` and ``hub_env`` give a test an offline Hugging Face Hub (see hub_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hub_server import HubServer

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
    """Point huggingface_hub, and so timm and transformers, at ``hub_server``, logged in as "alice".

    Setting ``HF_ENDPOINT`` is not enough once huggingface_hub is imported (which happens when a test
    module is collected): ``huggingface_hub.constants`` copies the environment into module globals at
    import time, and the module-level ``HfApi`` behind ``huggingface_hub.create_repo``/``upload_folder``/
    ``model_info``... keeps the endpoint it was built with. So this fixture sets the variables (for
    subprocesses and any code that reads them later) *and* patches those globals; ``monkeypatch`` undoes
    all of it after the test. timm and transformers download through huggingface_hub and read these
    globals at call time, so they follow without patching anything of theirs. Caches go to a temporary
    HF_HOME; Xet is off (the server only speaks the regular-file protocol, which the client also uses
    when Xet is on, but Xet would open a session with its own cache); telemetry is off; offline mode is off.

    Returns the server, whose ``url`` is the endpoint; pass ``token=hub.token_for("bob")`` to act as bob,
    or ``token=False`` to act anonymously.
    """
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
    return hub_server
