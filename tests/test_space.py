"""The demo Space as it runs on Hugging Face: pushed by ``python -m hf_transfer.push --space`` to the test Hub,
downloaded from there, and started with ``python app.py`` in its own folder, serving the model from the Hub.
``gradio_client`` then talks to it as any API user would."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from importlib import metadata
from io import StringIO
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub import HfApi, constants, metadata_load, snapshot_download
from packaging.requirements import Requirement
from PIL import Image

from hf_transfer import predict, push
from hf_transfer.demo import NO_IMAGE

from conftest import HUB_ORGS, HUB_TOKENS, REPO, validation_images
from hub_server import HubServer
from space_app import AppProcess, environment

MODEL, SPACE = "alice/tiny", "alice/tiny-demo"
SERVER_UPLOADS = str(Path(tempfile.gettempdir()) / "gradio")  # Gradio's upload folder (GRADIO_TEMP_DIR unset)


def hub_process_env(hub: HubServer, home: Path) -> dict[str, str | None]:
    """The environment of a process that talks to ``hub`` as alice, with its own caches, online."""
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token_for("alice"), "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": None, "PYTHONPATH": None}


@contextmanager
def online() -> Iterator[None]:
    """huggingface_hub in this process allowed on the network (conftest sets it offline) for the test Hub."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    with HubServer(tmp_path_factory.mktemp("hub"), HUB_TOKENS, HUB_ORGS) as server:
        yield server


def copy_of(run: Path, folder: Path) -> Path:
    """The export without its checkpoints: the push stages files inside the folder it is given."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints"))
    return folder


@pytest.fixture(scope="module")
def space_dir(hub: HubServer, trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Space pushed with the command line, as downloaded back from the Hub."""
    env = {**hub_process_env(hub, tmp_path_factory.mktemp("push-home")), "PYTHONPATH": str(REPO)}
    model_dir = copy_of(trained_run, tmp_path_factory.mktemp("export") / "tiny")
    command = [sys.executable, "-m", "hf_transfer.push", "--model-dir", str(model_dir), "--repo-id", MODEL, "--space", SPACE]
    done = subprocess.run(command, env=environment(env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"Pushed its demo Space to {hub.url}/spaces/{SPACE}"
    folder = tmp_path_factory.mktemp("space")
    with online():
        snapshot_download(SPACE, repo_type="space", local_dir=folder, endpoint=hub.url, token=False)
    return folder


@pytest.fixture(scope="module")
def app(space_dir: Path, hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    """``python app.py`` in the downloaded Space, without hf_transfer on the path: it must bring its own."""
    home = tmp_path_factory.mktemp("app-home")
    env = {**hub_process_env(hub, home), "HF_TOKEN": None}  # the model is public: the Space reads it anonymously
    with AppProcess(space_dir / "app.py", [], env, home / "app.log") as process:
        yield process


@pytest.fixture(scope="module")
def client(app: AppProcess) -> Client:
    return Client(app.url, verbose=False)


def expected(trained_run: Path, images: list[Path], top_k: int = 3, tta: str = "none") -> list[dict[str, float]]:
    """What ``python -m hf_transfer.predict --json`` prints for ``images``, one image per call (as the app sees them)."""
    records = []
    for image in images:
        done = predict_json(trained_run, image, top_k, tta)
        records.append({p["label"]: p["score"] for p in done[0]["predictions"]})
    return records


def predict_json(model: Path, image: Path, top_k: int, tta: str) -> list[dict]:
    out = StringIO()
    with redirect_stdout(out):
        assert predict.main(["--model", str(model), str(image), "--top-k", str(top_k), "--tta", tta, "--json"]) == 0
    return json.loads(out.getvalue())


def ask(client: Client, image: Path | None, top_k: int = 3, tta: str = "none") -> dict[str, float]:
    """The app's answer as ``{label: confidence}``, most probable first."""
    result = client.predict(handle_file(str(image)) if image else None, top_k, tta, api_name="/predict")
    return {entry["label"]: entry["confidence"] for entry in result["confidences"]}


def assert_same(answer: dict[str, float], reference: dict[str, float]) -> None:
    assert list(answer) == list(reference)
    assert list(answer.values()) == pytest.approx(list(reference.values()), abs=1e-6)


def test_pushed_space_is_complete_pinned_and_runs_its_own_code(
    space_dir: Path, app: AppProcess, hub: HubServer, trained_run: Path
) -> None:
    files = {path.relative_to(space_dir).as_posix() for path in space_dir.rglob("*") if path.is_file() and ".cache" not in path.parts}
    assert {"app.py", "requirements.txt", "README.md", "hf_transfer/predict.py", "hf_transfer/demo.py"} <= files
    labels = json.loads((trained_run / "config.json").read_text())["label_names"]
    examples = sorted(path.name for path in (space_dir / "examples").iterdir())
    classes = [name[3:].removesuffix(".png") for name in examples]  # NN-<class>.png, one per class
    assert len(examples) >= 5 and len(set(classes)) == len(classes) and set(classes) <= set(labels)
    with online():  # what was pushed (running the app here may write bytecode beside it)
        pushed = HfApi(endpoint=hub.url).list_repo_files(SPACE, repo_type="space")
    assert pushed and not [path for path in pushed if "__pycache__" in path or path.endswith(".pyc")]
    assert (space_dir / "app.py").read_bytes() == (REPO / "space" / "app.py").read_bytes()

    front = metadata_load(space_dir / "README.md")
    assert (front["sdk"], front["app_file"], front["models"]) == ("gradio", "app.py", [MODEL])
    assert front["sdk_version"] == metadata.version("gradio")
    assert front["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert {"title", "emoji", "colorFrom", "colorTo"} <= set(front)
    assert f"--model {MODEL} IMAGE" in (space_dir / "README.md").read_text()

    pins = dict(line.split("==") for line in (space_dir / "requirements.txt").read_text().splitlines() if "==" in line)
    listed = [line for line in (REPO / "space" / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert sorted(pins) == sorted(listed)
    assert pins == {name: metadata.version(name).split("+")[0] for name in listed}

    with online():
        assert HfApi(endpoint=hub.url).space_info(SPACE, token=False).sdk == "gradio"
    # `python app.py` imported the Space's copy of hf_transfer and served the model from the Hub
    assert f"with hf_transfer from {space_dir.resolve() / 'hf_transfer'}" in app.log_text()
    assert f"Serving {MODEL} " in app.log_text()


def test_requirements_install_everything_the_app_imports(space_dir: Path) -> None:
    """Every distribution that app.py and the hf_transfer modules it loads import is pinned, a dependency of a
    pin, or gradio (the SDK). Modules are those loaded by ``import hf_transfer.demo`` in the Space's folder."""
    script = "import json, sys; import hf_transfer.demo; print(json.dumps([m.__file__ for m in list(sys.modules.values()) if m.__name__.startswith('hf_transfer')]))"
    done = subprocess.run([sys.executable, "-c", script], cwd=space_dir, env=environment({"PYTHONPATH": None}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = [Path(name) for name in json.loads(done.stdout.splitlines()[-1])]
    assert all(path.is_relative_to(space_dir) for path in files) and len(files) > 5  # the Space's own copy
    modules = {name for path in [space_dir / "app.py", *files] for name in _imported_modules(path)} - set(sys.stdlib_module_names)
    providers = metadata.packages_distributions()
    assert modules - set(providers) - {"hf_transfer"} == set()  # every other import is an installed distribution
    imported = {_canonical(dist) for module in modules - {"hf_transfer"} for dist in providers[module]}
    pinned = [line.split("==")[0] for line in (space_dir / "requirements.txt").read_text().splitlines() if "==" in line]
    assert imported - _with_dependencies([*pinned, "gradio"]) == set()
    assert {"torch", "timm", "gradio", "datasets"} <= imported


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a Python file, wherever they are (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def _with_dependencies(names: list[str]) -> set[str]:
    """``names`` and everything they require, transitively (extras left out)."""
    seen: set[str] = set()
    todo = [_canonical(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_canonical(requirement.name))
    return seen


def test_predictions_equal_the_predict_command(client: Client, trained_run: Path, space_dir: Path) -> None:
    images = [*validation_images(1)[:4], *sorted((space_dir / "examples").iterdir())[:2]]
    answers = [ask(client, image) for image in images]
    for answer, reference in zip(answers, expected(trained_run, images)):
        assert_same(answer, reference)
    assert len({next(iter(answer)) for answer in answers}) > 1  # not one label for everything
    assert_same(ask(client, images[0], 5, "flip_zoom"), expected(trained_run, images[:1], 5, "flip_zoom")[0])


def odd_images(folder: Path) -> list[Path]:
    """A real validation photo in the modes users upload: grayscale, RGBA, palette, CMYK JPEG, 16-bit PNG, animated GIF."""
    folder.mkdir(exist_ok=True)
    photo = Image.open(validation_images(1)[3]).convert("RGB").resize((64, 64))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    sixteen = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    images = {
        "gray.png": photo.convert("L"), "rgba.png": rgba, "palette.png": photo.convert("P"),
        "cmyk.jpg": photo.convert("CMYK"), "sixteen.png": sixteen,
    }
    for name, image in images.items():
        image.save(folder / name)
    photo.save(folder / "animated.gif", save_all=True, append_images=[photo.rotate(90)], duration=100, loop=0)
    assert Image.open(folder / "sixteen.png").mode == "I;16" and Image.open(folder / "animated.gif").n_frames == 2
    return [*(folder / name for name in images), folder / "animated.gif"]


def test_any_image_mode_is_predicted_as_the_predict_command_predicts_it(
    client: Client, trained_run: Path, tmp_path: Path
) -> None:
    images = odd_images(tmp_path / "modes")
    for image, reference in zip(images, expected(trained_run, images)):
        assert_same(ask(client, image), reference)


def bad_inputs(folder: Path) -> dict[str, tuple[Path | None, str]]:
    """Name -> (file, what the message must say)."""
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("not a picture")
    (folder / "empty.png").write_bytes(b"")
    good = validation_images(1)[0].read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    limit = Image.MAX_IMAGE_PIXELS
    side = int((1.5 * limit) ** 0.5)  # over the limit: refused before decoding
    Image.new("1", (side, side)).save(folder / "large.png")
    Image.new("1", (int((3 * limit) ** 0.5),) * 2).save(folder / "bomb.png")  # over twice the limit: PIL refuses to open it
    (folder / "big.png").write_bytes(good + bytes(30_000_000))  # over the 25 MiB upload limit
    return {
        "no image": (None, NO_IMAGE),
        "not an image": (folder / "notes.txt", "notes.txt is not an image that can be read"),
        "empty file": (folder / "empty.png", "empty.png is not an image that can be read"),
        "truncated": (folder / "truncated.png", "Cannot read image truncated.png"),
        "large": (folder / "large.png", f"Image large.png is too large: {side}×{side} pixels"),
        "bomb": (folder / "bomb.png", "bomb.png is too large to open safely"),
        "over the upload limit": (folder / "big.png", "exceeds the maximum file size of 26214400 bytes"),  # said by the client
    }


def test_bad_input_gets_a_message_and_the_app_keeps_answering(client: Client, trained_run: Path, tmp_path: Path) -> None:
    good = validation_images(1)[1]
    reference = expected(trained_run, [good])[0]
    for name, (image, message) in bad_inputs(tmp_path / "bad").items():
        try:
            answer = ask(client, image)
        except (AppError, ValueError) as e:
            shown = str(e)
        else:
            pytest.fail(f"{name}: answered {answer} instead of an error")
        assert message in shown, (name, shown)
        assert "Traceback" not in shown and SERVER_UPLOADS not in shown  # the file's name, not where the server put it
        assert_same(ask(client, good), reference)  # still up, still right


def test_twenty_concurrent_requests_all_answer(client: Client, trained_run: Path) -> None:
    images = validation_images(2)[:10] * 2
    references = expected(trained_run, images[:10]) * 2
    start = time.monotonic()
    jobs = [client.submit(handle_file(str(image)), 3, "none", api_name="/predict") for image in images]
    results = [job.result(timeout=120) for job in jobs]
    assert time.monotonic() - start < 120
    for result, reference in zip(results, references):
        assert_same({entry["label"]: entry["confidence"] for entry in result["confidences"]}, reference)


def test_space_dry_run_shows_the_space_without_any_request(
    trained_run: Path, hub_env: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model_dir = copy_of(trained_run, tmp_path / "tiny")
    assert push.main(["--model-dir", str(model_dir), "--repo-id", "alice/tiny", "--space", "alice/demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    space = out[out.index(f"to {hub_env.url}/spaces/alice/demo in one commit:"):]
    for path in ("app.py", "requirements.txt", "README.md", "hf_transfer/predict.py", "examples/00-"):
        assert f"\n  {path}" in space, path
    assert "models:\n- alice/tiny" in space and "sdk: gradio" in space and "__pycache__" not in space
    assert hub_env.requests == []


def test_space_push_updates_in_place_and_explains_what_it_cannot_do(
    trained_run: Path, hub_env: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model_dir = copy_of(trained_run, tmp_path / "tiny")

    def push_space(space: str, *extra: str) -> int:
        return push.main(["--model-dir", str(model_dir), "--repo-id", "alice/tiny", "--space", space, *extra])

    def refused(space: str, *extra: str) -> str:
        assert push_space(space, *extra) == 2
        err = capsys.readouterr().err  # upload progress bars first, when the model was pushed
        assert err.strip().splitlines()[-1].startswith("hf_transfer: error: ") and "Traceback" not in err
        return err

    assert "a Space serves its model's main branch" in refused("alice/demo", "--revision", "dev")
    assert "--space 'alice/bad name' is not a repo id like USER/NAME" in refused("alice/bad name")
    assert "names a dataset repo, but this pushes a space: use --space alice/demo" in refused("datasets/alice/demo")
    assert hub_env.requests == []  # refused before any request

    assert push_space("alice/demo") == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Pushed its demo Space to {hub_env.url}/spaces/alice/demo"
    space = hub_env.repos[("space", "alice/demo")]
    commits = len(space.commits)
    assert push_space("alice/demo") == 0  # nothing changed: the Space gets no new commit
    assert len(space.commits) == commits

    assert "No permission: user alice (token from HF_TOKEN) may not write to space repo bob/demo" in refused("bob/demo")
    HfApi().create_repo("alice/streamlit", repo_type="space", space_sdk="streamlit")
    assert "space repo alice/streamlit already exists as a streamlit Space" in refused("alice/streamlit")
