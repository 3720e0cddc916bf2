"""The Hub double speaks the protocol of the real clients: huggingface_hub, timm and transformers, unmocked."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    create_repo,
    hf_hub_download,
    snapshot_download,
    upload_folder,
    whoami,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError
from timm.models import save_for_hf

from hub_server import HubServer

LABELS = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A 3-class ``test_resnet`` and its timm Hub-style folder: model.safetensors + config.json."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    folder = tmp_path_factory.mktemp("tiny")
    save_for_hf(model, folder, model_config={"label_names": LABELS}, safe_serialization=True)
    # timm 1.0.31 also writes "model_args" (with num_classes), which transformers 5.x's TimmWrapper passes to
    # timm.create_model next to its own num_classes: "got multiple values for keyword argument 'num_classes'".
    # Keep the keys the project exports: architecture, num_classes, num_features, global_pool, label_names,
    # pretrained_cfg.
    config = json.loads((folder / "config.json").read_text())
    del config["model_args"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return model, folder


def _request(url: str, token: str | None = None, method: str = "GET", body: bytes | None = None) -> tuple[int, Any]:
    """A raw request, to check status codes and error bodies the client would turn into exceptions."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_whoami_needs_a_valid_token(hub_env: HubServer) -> None:
    assert whoami()["name"] == "alice"  # module-level function: its HfApi was built at import time
    assert [org["name"] for org in HfApi().whoami(token=hub_env.token_for("bob"))["orgs"]] == ["bob-lab"]
    with pytest.raises(HfHubHTTPError) as error:
        HfApi().whoami(token="hf_not_a_token")
    assert error.value.response.status_code == 401
    status, body = _request(f"{hub_env.url}/api/whoami-v2")
    assert status == 401 and "error" in body


def test_create_repo_exist_ok_and_repo_info(hub_env: HubServer) -> None:
    url = create_repo("alice/tiny")
    assert (url.repo_id, url.repo_type, url.endpoint) == ("alice/tiny", "model", hub_env.url)
    assert create_repo("alice/tiny", exist_ok=True).repo_id == "alice/tiny"
    with pytest.raises(HfHubHTTPError) as error:
        create_repo("alice/tiny")
    assert error.value.response.status_code == 409

    api = HfApi()
    info = api.repo_info("alice/tiny")
    assert len(info.sha) == 40 and [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert api.model_info("alice/tiny", revision=info.sha).sha == info.sha
    with pytest.raises(RepositoryNotFoundError):
        api.space_info("alice/tiny")  # the same id, asked for as another repo type, is another repo
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/missing")
    assert hub_env.unserved == []


def test_upload_folder_then_list_and_download(hub_env: HubServer, tiny_model: tuple) -> None:
    _, folder = tiny_model
    create_repo("alice/tiny")
    commit = upload_folder(folder_path=folder, repo_id="alice/tiny", commit_message="Add tiny model")
    assert [method for method, path, _ in hub_env.requests if path.endswith("/commit/main")] == ["POST"]
    # .gitattributes names *.safetensors: the weights went through LFS (batch, then one PUT), config.json inline.
    assert [method for method, path, _ in hub_env.requests if "lfs" in path] == ["POST", "PUT"]

    api = HfApi()
    assert api.repo_info("alice/tiny").sha == commit.oid
    assert api.list_repo_files("alice/tiny") == [".gitattributes", "config.json", "model.safetensors"]
    [weights] = api.get_paths_info("alice/tiny", ["model.safetensors", "absent.bin"])
    assert weights.size == (folder / "model.safetensors").stat().st_size

    config_path = Path(hf_hub_download("alice/tiny", "config.json"))
    assert config_path.read_bytes() == (folder / "config.json").read_bytes()
    assert commit.oid in config_path.parts  # cached under the snapshot of the commit that X-Repo-Commit named
    snapshot = Path(snapshot_download("alice/tiny"))
    for name in ("config.json", "model.safetensors"):
        assert (snapshot / name).read_bytes() == (folder / name).read_bytes()
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/tiny", "pytorch_model.bin")

    upload_folder(folder_path=folder, repo_id="alice/tiny")  # unchanged files: the client skips the commit
    assert api.repo_info("alice/tiny").sha == commit.oid
    assert hub_env.unserved == []


def test_upload_folder_through_the_xet_pipeline(hub_env: HubServer, tmp_path: Path, monkeypatch) -> None:
    """With hf_xet installed the client uploads folders through its Xet pipeline; "regular" preupload
    answers (a .txt file, not named in .gitattributes) keep that pipeline on the inline-content path, so the
    double serves it too. LFS files would go to Xet storage, which the double does not serve."""
    from huggingface_hub import _upload_pipeline

    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", False)
    pipelined = []
    real_pipelined_upload = _upload_pipeline.pipelined_upload

    def pipelined_upload(*args, **kwargs):
        pipelined.append(kwargs["repo_id"])
        return real_pipelined_upload(*args, **kwargs)

    monkeypatch.setattr(_upload_pipeline, "pipelined_upload", pipelined_upload)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("xet")
    create_repo("alice/xet")
    upload_folder(folder_path=tmp_path / "data", repo_id="alice/xet")
    assert pipelined == ["alice/xet"]
    assert Path(hf_hub_download("alice/xet", "notes.txt")).read_text() == "xet"
    assert hub_env.unserved == []


def test_lfs_takes_only_announced_uploads_of_the_right_content(hub_env: HubServer) -> None:
    create_repo("alice/big")
    token, content = hub_env.token_for("alice"), b"weights"
    oid = hashlib.sha256(content).hexdigest()
    header = {"key": "header", "value": {"summary": "Add weights"}}
    add = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(content)}}
    commit = b"".join(json.dumps(line).encode() + b"\n" for line in (header, add))
    batch = json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(content)}]}).encode()

    def send(path: str, body: bytes, method: str = "POST") -> int:
        return _request(hub_env.url + path, token, method, body)[0]

    assert send(f"/lfs-upload/{oid}", content, "PUT") == 403  # no batch asked for it
    assert send("/api/models/alice/big/commit/main", commit) == 400  # not uploaded yet
    assert send("/alice/big.git/info/lfs/objects/batch", batch) == 200
    assert send(f"/lfs-upload/{oid}", b"other content", "PUT") == 400
    assert send(f"/lfs-upload/{oid}", content, "PUT") == 200
    assert send("/api/models/alice/big/commit/main", commit) == 200
    assert Path(hf_hub_download("alice/big", "w.bin")).read_bytes() == content
    assert hub_env.unserved == []


def test_timm_and_transformers_load_the_pushed_model(hub_env: HubServer, tiny_model: tuple) -> None:
    import transformers
    from PIL import Image

    model, folder = tiny_model
    create_repo("alice/tiny")
    upload_folder(folder_path=folder, repo_id="alice/tiny")
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(pixels)
        loaded = timm.create_model("hf-hub:alice/tiny", pretrained=True).eval()
        assert torch.equal(loaded(pixels), expected)
        assert loaded.pretrained_cfg["label_names"] == LABELS

        wrapped = transformers.AutoModelForImageClassification.from_pretrained("alice/tiny").eval()
        assert wrapped.config.id2label == dict(enumerate(LABELS))
        assert torch.allclose(wrapped(pixel_values=pixels).logits, expected)

    classify = transformers.pipeline("image-classification", model="alice/tiny")
    assert sorted(result["label"] for result in classify(Image.new("RGB", (64, 64)))) == sorted(LABELS)
    # transformers looks for processor files the repo does not have: 404 EntryNotFound, which it tolerates.
    assert hub_env.unserved == []


def test_writing_outside_ones_namespaces_is_forbidden(hub_env: HubServer) -> None:
    bob = hub_env.token_for("bob")
    for repo_id in ("bob/model", "bob-lab/model"):
        with pytest.raises(HfHubHTTPError) as error:
            create_repo(repo_id)
        assert error.value.response.status_code == 403
    assert create_repo("alice-lab/model").repo_id == "alice-lab/model"

    create_repo("bob/model", token=bob)
    with pytest.raises(HfHubHTTPError) as error:
        HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="bob/model")
    assert error.value.response.status_code == 403
    assert create_repo("bob/model", exist_ok=True).repo_id == "bob/model"  # exists and is public: fine

    create_repo("bob/secret", private=True, token=bob)
    HfApi().upload_file(path_or_fileobj=b"s", path_in_repo="s.txt", repo_id="bob/secret", token=bob)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("bob/secret", "s.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("bob/secret", "s.txt", token=False)
    assert Path(hf_hub_download("bob/secret", "s.txt", token=bob)).read_text() == "s"


def test_second_commit_moves_main_and_downloads_follow(hub_env: HubServer) -> None:
    api = HfApi()
    create_repo("alice/notes")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="notes/a.txt", repo_id="alice/notes")
    assert Path(hf_hub_download("alice/notes", "notes/a.txt")).read_text() == "v1"

    second = api.create_commit(
        "alice/notes",
        [CommitOperationAdd("notes/a.txt", b"v2"), CommitOperationAdd("b.txt", b"b")],
        commit_message="v2",
    )
    assert second.oid != first.oid and api.repo_info("alice/notes").sha == second.oid
    assert Path(hf_hub_download("alice/notes", "notes/a.txt")).read_text() == "v2"
    assert Path(hf_hub_download("alice/notes", "notes/a.txt", revision=first.oid)).read_text() == "v1"

    api.create_branch("alice/notes", branch="dev", revision=first.oid)
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="notes/a.txt", repo_id="alice/notes", revision="dev")
    assert Path(hf_hub_download("alice/notes", "notes/a.txt", revision="dev")).read_text() == "dev"
    assert api.list_repo_files("alice/notes", revision="dev") == [".gitattributes", "notes/a.txt"]

    api.create_commit("alice/notes", [CommitOperationDelete("notes/")], commit_message="rm notes")
    assert api.list_repo_files("alice/notes") == [".gitattributes", "b.txt"]
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/notes", "notes/a.txt", force_download=True)
    assert hub_env.unserved == []


def test_space_repo_can_be_created_and_uploaded_to(hub_env: HubServer, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import gradio\n")
    (tmp_path / "README.md").write_text("---\nsdk: gradio\n---\n# Demo\n")  # makes the client call validate-yaml
    api = HfApi()
    url = create_repo("alice/demo", repo_type="space", space_sdk="gradio")
    assert (url.repo_type, str(url)) == ("space", f"{hub_env.url}/spaces/alice/demo")
    upload_folder(folder_path=tmp_path, repo_id="alice/demo", repo_type="space")

    info = api.space_info("alice/demo")
    assert info.sdk == "gradio" and {s.rfilename for s in info.siblings} >= {"app.py", "README.md"}
    app = hf_hub_download("alice/demo", "app.py", repo_type="space")
    assert Path(app).read_text() == "import gradio\n"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/demo")
    assert hub_env.unserved == []


def test_server_alone_binds_loopback_and_keeps_tokens_out_of_logs(tmp_path: Path, capfd) -> None:
    with HubServer(tmp_path, {"hf_secret": "carol"}) as hub:
        assert hub.url.startswith("http://127.0.0.1:")
        status, body = _request(f"{hub.url}/api/whoami-v2", "hf_secret")
        assert (status, body["name"]) == (200, "carol")
        assert _request(f"{hub.url}/api/nothing-here")[0] == 404
        assert hub.unserved == ["GET /api/nothing-here"]
        url = hub.url
    out, err = capfd.readouterr()
    assert "hf_secret" not in out + err + repr(hub.requests)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/api/whoami-v2", timeout=2)
