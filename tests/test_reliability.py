"""What happens when things go wrong: bad images, bad folders, untrusted files, interruptions,
killed processes, a full disk, secrets, and where caches go."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from hf_transfer.checkpoint import MANIFEST_FILE, latest_checkpoint, verify
from hf_transfer.config import DataConfig
from hf_transfer.data import load_splits
from hf_transfer.errors import CheckpointError, DataError
from hf_transfer.training import train

from conftest import REPO, tiny_config, tiny_overrides, write_imagefolder


def _plant_bad_images(root: Path) -> dict[str, str]:
    """Unreadable files among good ones; returns file name -> expected reason."""
    folder = root / "train" / "a"
    good = folder / "a_0.png"
    jpeg = folder / "truncated.jpg"
    Image.open(good).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    Image.new("1", (12000, 12000)).save(folder / "bomb.png")  # 144 MP: over PIL's limit, a few KB on disk
    return {"truncated.jpg": "corrupt image", "empty.png": "empty file", "notes.jpg": "not an image file", "bomb.png": "decompression bomb"}


def test_unreadable_images_stop_the_run_before_work_listing_each_file(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "imgs", {"train": {"a": 6, "b": 6}, "validation": {"a": 2, "b": 2}})
    expected = _plant_bad_images(root)
    with pytest.raises(DataError) as error:
        load_splits(DataConfig(path=str(root)), seed=0)
    message = str(error.value)
    assert "4 unreadable image(s) in the train split" in message and "data.on_bad_image: skip" in message
    for name, reason in expected.items():
        assert f"{name}: {reason}" in message


def test_a_pixel_limit_from_the_config_flags_large_images(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "imgs", {"train": {"a": 3, "b": 3}, "validation": {"a": 1, "b": 1}}, size=24)
    with pytest.raises(DataError, match="decompression bomb"):
        load_splits(DataConfig(path=str(root), max_image_pixels=100), seed=0)
    assert len(load_splits(DataConfig(path=str(root)), seed=0).train) == 6  # the default limit is restored


def test_unreadable_images_are_skipped_and_counted_when_asked(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "imgs", {"train": {"a": 8, "b": 8}, "validation": {"a": 4, "b": 4}})
    expected = _plant_bad_images(root)
    results = train(tiny_config(tmp_path, data__path=root, data__on_bad_image="skip", data__max_train_samples=None))
    skipped = results["skipped_images"]["train"]
    assert sorted(Path(f).name for f in skipped) == sorted(expected)
    assert results["num_train"] == 16
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_images"]["train"] == skipped


def test_cmyk_16_bit_palette_and_alpha_images_train(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("validation", 2)):
        for label in ("x", "y"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                rgb = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
                rgb.convert("CMYK").save(folder / f"cmyk{i}.jpg")
                Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(folder / f"gray16_{i}.png")
                rgb.convert("P").save(folder / f"palette{i}.png")
                rgb.convert("RGBA").save(folder / f"alpha{i}.png")
                rgb.convert("LA").save(folder / f"gray_alpha{i}.png")
    modes = {Image.open(p).mode for p in root.rglob("*.*")}
    assert {"CMYK", "I;16", "P", "RGBA", "LA"} <= modes
    results = train(tiny_config(tmp_path, data__path=root, data__max_train_samples=None, data__max_val_samples=None))
    assert results["num_train"] == 40 and results["val"]["num_samples"] == 20


def test_an_empty_class_folder_is_reported(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "imgs", {"train": {"a": 3, "b": 3}, "validation": {"a": 1, "b": 1}})
    (root / "train" / "c").mkdir()
    (root / "validation" / "c").mkdir()
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    with pytest.raises(DataError, match=r"Class folder\(s\) without images in .*imgs: c\. Add images"):
        load_splits(DataConfig(path=str(root)), seed=0)


def test_resuming_with_data_of_other_classes_is_refused(tmp_path: Path) -> None:
    three = write_imagefolder(tmp_path / "three", {"train": {"a": 6, "b": 6, "c": 6}, "validation": {"a": 2, "b": 2, "c": 2}})
    two = write_imagefolder(tmp_path / "two", {"train": {"a": 6, "b": 6}, "validation": {"a": 2, "b": 2}})
    train(tiny_config(tmp_path, data__path=three, data__max_train_samples=None))
    with pytest.raises(CheckpointError, match=r"trained on classes \['a', 'b', 'c'\].*data has \['a', 'b'\]"):
        train(tiny_config(tmp_path, data__path=two, data__max_train_samples=None, output__resume=True, train__epochs=2))


def test_a_checkpoint_with_a_code_running_pickle_is_refused(tmp_path: Path) -> None:
    train(tiny_config(tmp_path))
    folder = latest_checkpoint(tmp_path / "run" / "checkpoints")

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"state": Exploit()}, folder / "optimizer.bin")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest.pop("optimizer.bin")  # a forged manifest that no longer lists the file
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert verify(folder) is None
    with pytest.raises(CheckpointError, match="pickled code, refused"):
        train(tiny_config(tmp_path, output__resume=True, train__epochs=2))
    assert not (tmp_path / "pwned").exists()


def _cli(args: list[str], cwd: Path = REPO, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, stderr=subprocess.PIPE, text=True, **kwargs)


def _args(tmp_path: Path, **overrides) -> list[str]:
    settings = dict(train__epochs=2, train__batch_size=8, data__max_train_samples=96, output__checkpoint_every=1)
    settings.update(overrides)
    return [f"--{o}" for o in tiny_overrides(tmp_path, **settings)]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), "the run ended or stalled before writing " + str(path)


def test_sigint_saves_a_resumable_checkpoint_and_exits_130(tmp_path: Path) -> None:
    process = _cli(_args(tmp_path))
    _wait_for(tmp_path / "run" / "checkpoints" / "latest", process)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr[-2000:]
    assert "Stopped by SIGINT" in stderr and "Traceback" not in stderr
    resumed = _cli([*_args(tmp_path), "--output.resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_completed"] == 2


def test_sigkill_while_checkpointing_never_costs_the_last_good_checkpoint(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    args = _args(tmp_path, train__epochs=3)
    for attempt, delay in enumerate((0.0, 0.25)):
        process = _cli([*args, "--output.resume"] if attempt else args)
        _wait_for(checkpoints / "latest", process)
        time.sleep(delay)  # steps checkpoint constantly: the kill often lands inside a write
        process.kill()
        process.wait(timeout=60)
        good = latest_checkpoint(checkpoints)
        assert good is not None and verify(good) is None
    resumed = _cli([*args, "--output.resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_completed"] == 3
    assert not list(checkpoints.glob(".partial-*"))  # torn writes were cleaned up


def test_a_full_disk_fails_clearly_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespaces here (unshare -m needs root): cannot make a small disk")
    kept = tmp_path / "kept"
    args = " ".join(f"'{a}'" for a in _args(mount, train__epochs=2, output__checkpoint_every=None))
    script = (
        f"mount -t tmpfs -o size=9m tmpfs {mount} && "
        f"{sys.executable} {REPO / 'train.py'} {args}; code=$?; cp -r {mount}/run {kept}; exit $code"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Could not write the checkpoint" in result.stderr and "MB are free on that disk" in result.stderr
    assert "last good checkpoint" in result.stderr and "--output.resume" in result.stderr
    good = latest_checkpoint(kept / "checkpoints")
    assert good is not None and verify(good) is None
    assert json.loads((good / "trainer_state.json").read_text())["epoch"] == 1


def test_a_planted_token_appears_in_no_output_or_log(tmp_path: Path) -> None:
    token = "hf_PLANTEDsecret0123456789"
    env = {**os.environ, "HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token}
    process = _cli([*_args(tmp_path, train__epochs=1, output__tensorboard=True), "--train.lr", "1e-2"], env=env)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 0, stderr[-2000:]
    assert token not in stderr
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_caches_and_outputs_stay_out_of_the_working_directory(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    data = shutil.copytree(REPO / "data" / "fashion-mnist-mini" / "validation", workdir / "images")
    args = _args(tmp_path, train__epochs=1, data__path="images", output__dir="out", output__checkpoint_every=None)
    process = _cli(args, cwd=workdir)
    assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    assert sorted(p.name for p in workdir.iterdir()) == ["images", "out"]
    assert not [p for p in data.rglob("*") if p.suffix != ".png" and p.is_file()]


def test_a_killed_worker_process_ends_a_distributed_run_instead_of_hanging(tmp_path: Path) -> None:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    process = subprocess.Popen([*launcher, "train.py", *_args(tmp_path, train__epochs=20)], cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(tmp_path / "run" / "checkpoints" / "latest", process)
        workers = psutil.Process(process.pid).children(recursive=True)
        ranks = {w.environ().get("RANK"): w for w in workers if "train.py" in " ".join(w.cmdline())}
        assert {"0", "1"} <= set(ranks), ranks
        ranks["1"].kill()
        started = time.monotonic()
        stderr = process.communicate(timeout=120)[1]
        assert process.returncode != 0 and time.monotonic() - started < 120
        assert "exitcode" in stderr and ("-9" in stderr or "SIGKILL" in stderr), stderr[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
