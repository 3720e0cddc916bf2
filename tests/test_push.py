"""``python -m hf_transfer.push`` against the test Hub with the real huggingface_hub client, and its errors."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi, constants, hf_api, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError

from hf_transfer import cli, export, predict
from hf_transfer.push import main

from conftest import _HF_HOME, tiny_overrides, validation_images
from hub_server import HubServer

PUSHED = {".gitattributes", "README.md", "config.json", "model.safetensors", "training_config.yaml", "metrics.json",
          "metrics.jsonl", "run_info.json", "curves.png", "confusion_matrix.png"}


@pytest.fixture
def model_dir(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, with what must never be pushed: checkpoints, tracker logs, temporary files."""
    folder = tmp_path / "model"
    shutil.copytree(trained_run, folder)
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events.out.tfevents.1").write_bytes(b"events")
    (folder / ".model.safetensors.tmp123").write_bytes(b"partial")
    return folder


def _commits(hub: HubServer) -> int:
    return sum(1 for method, path, status in hub.requests if method == "POST" and "/commit/" in path and status == 200)


def test_dry_run_lists_files_and_card_without_any_request(
    model_dir: Path, hub_env: HubServer, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["--model-dir", str(model_dir), "--repo-id", "alice/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listing = out.split("\n\n")[0].splitlines()
    assert listing[0].startswith("Dry run: would push 9 files") and f"to {hub_env.url}/alice/tiny in one commit" in listing[0]
    weights = next(line for line in listing if "model.safetensors" in line and ".tmp" not in line)
    assert f"{(model_dir / 'model.safetensors').stat().st_size / 1e6:.1f} MB" in weights
    assert not any(word in out for word in ("checkpoints", "tensorboard", ".tmp123"))
    assert "Token: from HF_TOKEN (not shown)" in out
    assert 'create_model("hf-hub:alice/tiny"' in out and "--model alice/tiny" in out
    assert hub_env.requests == []  # not a single request
    assert "<user>/<model-name>" in (model_dir / "README.md").read_text()  # the local card is untouched


def test_push_uploads_one_commit_that_timm_loads(model_dir: Path, hub_env: HubServer, capsys: pytest.CaptureFixture) -> None:
    assert main(["--model-dir", str(model_dir), "--repo-id", "alice/tiny", "--commit-message", "First model"]) == 0
    assert capsys.readouterr().out.strip() == f"Pushed {model_dir} to {hub_env.url}/alice/tiny"
    api = HfApi()
    assert set(api.list_repo_files("alice/tiny")) == PUSHED
    assert _commits(hub_env) == 1
    repo = hub_env.repos[("model", "alice/tiny")]
    assert repo.commits[repo.branches["main"]].title == "First model"
    card = Path(hf_hub_download("alice/tiny", "README.md")).read_text()
    assert 'create_model("hf-hub:alice/tiny"' in card and "<user>/<model-name>" not in card
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".push-")]

    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pushed = timm.create_model("hf-hub:alice/tiny", pretrained=True).eval()(pixels)
        local = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()(pixels)
    assert torch.equal(pushed, local)

    assert main(["--model-dir", str(model_dir), "--repo-id", "alice/tiny"]) == 0  # nothing changed: no new commit
    assert _commits(hub_env) == 1


def test_private_repo_and_branch(model_dir: Path, hub_env: HubServer, capsys: pytest.CaptureFixture) -> None:
    assert main(["--model-dir", str(model_dir), "--repo-id", "alice/hidden", "--private"]) == 0
    assert HfApi().repo_info("alice/hidden").private
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/hidden", "config.json", token=False)

    assert main(["--model-dir", str(model_dir), "--repo-id", "alice/shared", "--revision", "dev"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{hub_env.url}/alice/shared/tree/dev")
    assert set(HfApi().list_repo_files("alice/shared", revision="dev")) == PUSHED
    assert HfApi().list_repo_files("alice/shared") == [".gitattributes"]

    assert main(["--model-dir", str(model_dir), "--repo-id", "alice/shared", "--private"]) == 2
    assert "already exists and is public; --private does not change an existing repo" in capsys.readouterr().err
    assert HfApi().list_repo_files("alice/shared") == [".gitattributes"]


def _closed_port_url() -> str:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{free.getsockname()[1]}"


def test_hub_failures_are_explained(
    model_dir: Path, hub_env: HubServer, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def push(repo_id: str = "alice/tiny") -> str:
        assert main(["--model-dir", str(model_dir), "--repo-id", repo_id]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hf_transfer: error: ") and "Traceback" not in err
        return err

    assert "names a space repo, but this pushes a model: use --repo-id alice/tiny" in push("spaces/alice/tiny")
    assert "is not a repo id like USER/NAME" in push("alice/bad name")
    assert "No permission: user alice (token from HF_TOKEN) may not write to model repo bob/tiny" in push("bob/tiny")
    with monkeypatch.context() as patch:
        patch.setenv("HF_TOKEN", "hf_not_a_token")
        assert "rejected the token from HF_TOKEN" in push()
    with monkeypatch.context() as patch:
        patch.delenv("HF_TOKEN")
        message = push()
        assert "Not logged in to the Hugging Face Hub" in message and "`hf auth login`" in message
    with monkeypatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        assert "HF_HUB_OFFLINE is set" in push()
    assert hub_env.repos == {}  # none of these created anything
    unreachable = _closed_port_url()
    monkeypatch.setattr(constants, "ENDPOINT", unreachable)
    monkeypatch.setattr(hf_api.api, "endpoint", unreachable)
    assert f"Cannot reach the Hub at {unreachable}" in push()


def test_incomplete_or_invalid_folders_are_refused_before_any_request(
    model_dir: Path, hub_env: HubServer, capsys: pytest.CaptureFixture
) -> None:
    def refused(edit, message: str) -> None:
        folder = model_dir.parent / f"case{len(list(model_dir.parent.iterdir()))}"
        shutil.copytree(model_dir, folder)
        edit(folder)
        assert main(["--model-dir", str(folder), "--repo-id", "alice/tiny"]) == 2
        err = capsys.readouterr().err
        assert message.format(folder=folder) in err and "Traceback" not in err, err

    def drop_labels(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        del config["label_names"]
        (folder / "config.json").write_text(json.dumps(config))

    refused(lambda f: (f / "model.safetensors").unlink(), "{folder}/model.safetensors is missing")
    refused(lambda f: (f / "model.safetensors").write_bytes(b"garbage"), "{folder}/model.safetensors is not a readable safetensors file")
    refused(lambda f: (f / "config.json").unlink(), "{folder}/config.json is missing")
    refused(drop_labels, "{folder}/config.json: has no label_names")
    refused(lambda f: (f / "README.md").unlink(), "{folder}/README.md is missing")
    refused(lambda f: (f / "confusion_matrix.png").unlink(), "links to confusion_matrix.png, which is not in {folder}")
    refused(
        lambda f: (f / "README.md").write_text((f / "README.md").read_text().replace("license: unknown\n", "")),
        "{folder}/README.md: the front matter has no 'license'",
    )
    assert hub_env.requests == []


PLANTED = "hf_PLANTEDsecret123"


def test_the_token_is_never_written_logged_or_printed(
    hub_env: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    hub_env.tokens[PLANTED] = "alice"
    monkeypatch.setenv("HF_TOKEN", PLANTED)
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub logs every request as a curl command
    root, hub_logger = logging.getLogger(), logging.getLogger("huggingface_hub")  # the library sets its own level
    log = logging.FileHandler(tmp_path / "debug.log")
    levels = root.level, hub_logger.level
    root.setLevel(logging.DEBUG)
    hub_logger.setLevel(logging.DEBUG)
    root.addHandler(log)
    image = str(validation_images(1)[0])
    try:
        assert cli.main([f"--{o}" for o in tiny_overrides(tmp_path, data__max_train_samples=32, data__max_val_samples=20)]) == 0
        assert export.main(["--run-dir", str(tmp_path / "run"), "--output", str(tmp_path / "export")]) == 0
        for extra in (["--dry-run"], []):  # with the demo Space, whose push builds and uploads its own folder
            push = ["--model-dir", str(tmp_path / "export"), "--repo-id", "alice/token-check", "--space", "alice/token-demo"]
            assert main([*push, *extra]) == 0
        assert predict.main(["--model", "alice/token-check", image]) == 0
        assert predict.main(["--model", str(tmp_path / "export"), image, "--json"]) == 0
    finally:
        root.removeHandler(log)
        root.setLevel(levels[0])
        hub_logger.setLevel(levels[1])
        log.close()
    out, err = capfd.readouterr()

    debug_log = (tmp_path / "debug.log").read_text()
    assert "authorization: <token>" in debug_log.lower()  # requests logged at DEBUG, the token redacted
    assert ("GET", "/api/whoami-v2", 200) in hub_env.requests  # the planted token did authenticate
    # everything under this test's folder (runs, export, HF_HOME with the download cache, the Hub's storage,
    # the debug log) and the session's HF_HOME (datasets' cache, set before the Hugging Face imports)
    written = [path for folder in (tmp_path, Path(_HF_HOME)) for path in folder.rglob("*") if path.is_file()]
    assert ("space", "alice/token-demo") in hub_env.repos
    for expected in ("debug.log", "run/model.safetensors", "export/README.md", "hf-home/hub/models--alice--token-check"):
        assert any(expected in str(path) for path in written), expected
    leaks = [str(path) for path in written if PLANTED.encode() in path.read_bytes()]
    assert leaks == [] and PLANTED not in out + err
