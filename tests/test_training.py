"""End-to-end training runs on tiny models: outputs, export, resume, early stopping, processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.data import create_transform, resolve_data_config

from hf_transfer.data import load_splits
from hf_transfer.errors import CheckpointError
from hf_transfer.training import train

from conftest import REPO, tiny_config, tiny_overrides


def _run_cli(args: list[str], timeout: int = 300, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + ["train.py", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_training_exports_a_model_timm_loads_with_the_reported_accuracy(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, train__epochs=2)
    results = train(config)
    out = Path(config.output.dir)
    for name in ("model.safetensors", "config.json", "training_config.yaml", "metrics.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644  # shareable, not owner-only
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == [1, 2]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(results))

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    exported = json.loads((out / "config.json").read_text())
    assert exported["label_names"] == results["label_names"] and exported["num_classes"] == 10
    assert exported["pretrained_cfg"]["input_size"] == [3, 32, 32]
    transform = create_transform(**resolve_data_config(model=model))
    val = load_splits(config.data, config.train.seed).val
    images = torch.stack([transform(row["image"].convert("RGB")) for row in val])
    with torch.no_grad():
        predictions = model(images).argmax(-1)
    accuracy = (predictions == torch.tensor(val["label"])).float().mean().item()
    assert accuracy == pytest.approx(results["val"]["accuracy"], abs=1 / len(val))
    assert results["val"]["num_samples"] == len(val) == 40


def test_an_existing_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path) -> None:
    train(tiny_config(tmp_path))
    with pytest.raises(CheckpointError, match=r"is not empty.*--output.resume.*--output.overwrite"):
        train(tiny_config(tmp_path))
    first = load_file(tmp_path / "run" / "model.safetensors")
    results = train(tiny_config(tmp_path, output__overwrite=True, train__seed=7))
    assert results["epochs_completed"] == 1
    assert not all(torch.equal(v, load_file(tmp_path / "run" / "model.safetensors")[k]) for k, v in first.items())
    with pytest.raises(CheckpointError, match="holds no checkpoint to resume"):
        train(tiny_config(tmp_path / "elsewhere", output__resume=True))


def test_resuming_a_finished_run_with_more_epochs_continues_it(tmp_path: Path) -> None:
    train(tiny_config(tmp_path, train__epochs=1, train__scheduler="constant"))
    results = train(tiny_config(tmp_path, train__epochs=2, train__scheduler="constant", output__resume=True))
    history = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert results["epochs_completed"] == 2 and len(history) == 2


def test_early_stopping_ends_the_run_when_the_metric_stalls(tmp_path: Path) -> None:
    results = train(tiny_config(tmp_path, train__epochs=5, train__lr=1e-12, train__early_stopping_patience=1))
    assert results["stopped_early"] and results["epochs_completed"] == 2 and results["best_epoch"] == 1


def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    train(tiny_config(tmp_path, train__batch_size=16, train__grad_accum_steps=2))  # 80 images: 5 batches of 16
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert state["global_step"] == 5  # micro-batches of 8: 10 forward passes, 5 optimizer steps


def test_tensorboard_tracker_writes_events(tmp_path: Path) -> None:
    train(tiny_config(tmp_path, output__tensorboard=True))
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))


def _slow_run_args(tmp_path: Path, name: str, **overrides) -> list[str]:
    settings = dict(train__epochs=2, train__batch_size=8, output__checkpoint_every=2, data__max_train_samples=96)
    settings.update(overrides)
    return [f"--{o}" for o in tiny_overrides(tmp_path / name, **settings)]


def test_resume_after_sigterm_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    reference = _run_cli(_slow_run_args(tmp_path, "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]

    interrupted_args = _slow_run_args(tmp_path, "interrupted")
    process = subprocess.Popen([sys.executable, "train.py", *interrupted_args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "interrupted" / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints / "latest").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "--output.resume" in stderr
    state = json.loads((checkpoints / (checkpoints / "latest").read_text() / "trainer_state.json").read_text())
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 12  # stopped inside the first epoch

    resumed = _run_cli([*interrupted_args, "--output.resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((tmp_path / "reference" / "run" / "metrics.json").read_text())
    actual = json.loads((tmp_path / "interrupted" / "run" / "metrics.json").read_text())
    assert actual["val"] == expected["val"] and actual["best_epoch"] == expected["best_epoch"]
    weights = load_file(tmp_path / "interrupted" / "run" / "model.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in load_file(tmp_path / "reference" / "run" / "model.safetensors").items())


def test_two_processes_match_one_and_count_every_validation_image_once(tmp_path: Path) -> None:
    args = _slow_run_args(tmp_path, "two", model__strategy="feature_extraction", output__checkpoint_every=None)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    two = _run_cli([*args, "--data.max_val_samples", "41"], launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run_cli([*_slow_run_args(tmp_path, "one", model__strategy="feature_extraction", output__checkpoint_every=None), "--data.max_val_samples", "41"])
    assert one.returncode == 0, one.stderr[-3000:]
    metrics_two = json.loads((tmp_path / "two" / "run" / "metrics.json").read_text())
    metrics_one = json.loads((tmp_path / "one" / "run" / "metrics.json").read_text())
    assert (metrics_two["num_processes"], metrics_one["num_processes"]) == (2, 1)
    assert metrics_two["val"]["num_samples"] == metrics_one["val"]["num_samples"] == 41  # odd: no padding counted
    for key in ("accuracy", "f1_macro", "loss"):
        assert metrics_two["val"][key] == pytest.approx(metrics_one["val"][key], abs=1e-4)
    assert sorted(os.listdir(tmp_path / "two" / "run")) == sorted(os.listdir(tmp_path / "one" / "run"))


def test_the_cpu_process_count_is_read_from_the_accelerate_command_line() -> None:
    from hf_transfer.launch import requested_cpu_processes

    python = ["/usr/bin/python3"]
    assert requested_cpu_processes([*python, "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "3", "train.py", "--x", "1"]) == 3
    assert requested_cpu_processes([*python, "-m", "accelerate.commands.launch", "--cpu", "--num-processes=2", "train.py"]) == 2
    assert requested_cpu_processes([*python, "/venv/bin/accelerate", "launch", "--num_processes", "2", "train.py"]) == 1  # GPUs
    assert requested_cpu_processes(["bash", "-c", "python train.py"]) == 1


def test_compiled_model_trains_like_the_eager_one_and_exports_plain_weights(tmp_path: Path) -> None:
    """``train.compile`` (torch.compile through accelerate): the freeze state, evaluation and export see
    the model itself, not the compiled wrapper."""
    settings = dict(train__epochs=2, data__max_train_samples=32, data__max_val_samples=16, model__strategy="partial")
    eager = train(tiny_config(tmp_path / "eager", **settings))
    compiled = train(tiny_config(tmp_path / "compiled", train__compile=True, **settings))
    assert compiled["val"]["loss"] == pytest.approx(eager["val"]["loss"], rel=1e-3)
    history = [json.loads(line) for line in (tmp_path / "compiled" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < history[0]["trainable_params"] < sum(p.numel() for p in timm.create_model("test_resnet").parameters())
    weights = load_file(tmp_path / "compiled" / "run" / "model.safetensors")
    assert weights.keys() == load_file(tmp_path / "eager" / "run" / "model.safetensors").keys()
