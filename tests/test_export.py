"""``python -m hf_transfer.export``: any checkpoint of a run as a complete model repo folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_transfer.card import card_problems
from hf_transfer.export import main, pick_checkpoint

MODEL_REPO_FILES = {
    "model.safetensors", "config.json", "README.md", "training_config.yaml", "metrics.json", "metrics.jsonl",
    "run_info.json", "curves.png", "confusion_matrix.png",
}


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_last_checkpoint_exports_with_its_own_scores(trained_run: Path, tmp_path: Path) -> None:
    run = _copy(trained_run, tmp_path)
    output = tmp_path / "exports" / "last"
    assert main(["--run-dir", str(run), "--checkpoint", "last", "--output", str(output), "--license", "mit"]) == 0
    assert {p.name for p in output.iterdir()} == MODEL_REPO_FILES
    assert [p.name for p in output.parent.iterdir()] == ["last"]  # no staging folder left behind

    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    exported, saved = load_file(output / "model.safetensors"), load_file(latest / "model.safetensors")
    assert exported.keys() == saved.keys() and all((exported[k] == saved[k]).all() for k in saved)
    last_epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    val = json.loads((output / "metrics.json").read_text())["val"]
    assert val["accuracy"] == pytest.approx(last_epoch["val_accuracy"])  # scored again: the last epoch's numbers
    assert val["loss"] == pytest.approx(last_epoch["val_loss"], rel=1e-5)

    info = json.loads((output / "run_info.json").read_text())
    assert info["checkpoint"] == {"kind": "last", "name": latest.name, "epoch": 2, "step": 20}
    assert info["weights"]["kind"] == "scratch"  # the run's record, not the export's scoring setup
    card = (output / "README.md").read_text()
    assert "license: mit" in card and f"the last checkpoint ({latest.name}, after epoch 2" in card
    assert card_problems(output) == []
    chosen = pick_checkpoint(run, str(latest))  # the same checkpoint named by its folder
    assert chosen.weights == latest / "model.safetensors" and chosen.record["kind"] == "chosen"


def test_best_export_in_place_completes_a_run_that_lost_its_export(trained_run: Path, tmp_path: Path) -> None:
    run = _copy(trained_run, tmp_path)
    original = json.loads((run / "metrics.json").read_text())
    for name in ("model.safetensors", "config.json", "README.md", "metrics.json", "run_info.json"):
        (run / name).unlink()
    assert main(["--run-dir", str(run)]) == 0
    assert MODEL_REPO_FILES <= {p.name for p in run.iterdir()}
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    exported, best = load_file(run / "model.safetensors"), load_file(run / "checkpoints" / "best.safetensors")
    assert all((exported[k] == best[k]).all() for k in best)
    val = json.loads((run / "metrics.json").read_text())["val"]
    assert val.pop("loss") == pytest.approx(original["val"].pop("loss"), rel=1e-5)
    assert val == original["val"]  # the same weights on the same data: the same counts and scores
    assert json.loads((run / "run_info.json").read_text())["checkpoint"]["kind"] == "best"
    assert card_problems(run) == []


def test_export_errors_name_the_problem_and_leave_nothing_behind(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _copy(trained_run, tmp_path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    cases = {
        ("--run-dir", str(tmp_path)): "is not a training run: it has no training_config.yaml",
        ("--run-dir", str(run), "--checkpoint", "newest"): "--checkpoint 'newest' is not best, last, or a checkpoint folder",
        ("--run-dir", str(run), "--output", str(occupied)): f"--output {occupied} exists and is not an empty folder",
    }
    for args, message in cases.items():
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err

    config = run / "training_config.yaml"
    config.write_text(config.read_text().replace("fashion-mnist-mini", "moved-away"))
    assert main(["--run-dir", str(run), "--output", str(tmp_path / "new")]) == 2
    assert "data.path" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.export-*"))
