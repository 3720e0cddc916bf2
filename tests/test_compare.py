"""``python -m hf_transfer.compare``: several strategies, one table, one figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hf_transfer.compare import main

from conftest import tiny_overrides


def _compare_config(tmp_path: Path, runs: dict[str, list[str]]) -> Path:
    settings: dict = {"compare": {"runs": runs}}
    for override in tiny_overrides(tmp_path, train__epochs=2, data__max_train_samples=32, data__max_val_samples=16):
        key, value = override.split("=", 1)
        section, name = key.split(".")
        settings.setdefault(section, {})[name] = yaml.safe_load(value)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def test_compare_writes_a_table_csv_and_plot_with_one_line_per_run(tmp_path: Path) -> None:
    runs = {
        "head": ["model.strategy=feature_extraction"],
        "last_stage": ["model.strategy=partial", "train.backbone_lr=1e-3"],
        "gradual": ["model.strategy=feature_extraction", "model.unfreeze={1: all}"],
    }
    assert main(["--config", str(_compare_config(tmp_path, runs)), "--train.tta", "flip"]) == 0
    root = tmp_path / "run"
    with open(root / "comparison.csv", newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert list(rows) == list(runs)
    for name, row in rows.items():
        metrics = json.loads((root / name / "metrics.json").read_text())
        history = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        assert float(row["best_val_accuracy"]) == metrics["val"]["accuracy"]
        assert float(row["val_tta_accuracy"]) == metrics["val_tta"]["accuracy"]
        assert int(row["epochs"]) == 2 and int(row["trainable_params_end"]) == history[-1]["trainable_params"]
    assert int(rows["head"]["trainable_params_start"]) < int(rows["last_stage"]["trainable_params_start"])
    assert rows["gradual"]["trainable_params_start"] == rows["head"]["trainable_params_start"]
    assert int(rows["gradual"]["trainable_params_end"]) > int(rows["last_stage"]["trainable_params_end"])
    table = (root / "comparison.md").read_text()
    assert "| run | strategy | learning rates | best val accuracy | val macro-F1 | val accuracy with flip TTA |" in table
    assert "partial (1 stage)" in table and "0.01, backbone 0.001" in table and "all at epoch 1" in table
    with Image.open(root / "comparison.png") as image:
        assert image.size[0] > 1000


def test_compare_checks_every_run_before_training_any(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = {"fine": ["model.strategy=full"], "broken": ["model.strategy=feature_extraction", "train.lr=-1"]}
    path = _compare_config(tmp_path, runs)
    assert main(["--config", str(path)]) == 2
    assert "compare.runs.broken:" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main(["--config", str(path), "--runs", "fine", "missing"]) == 2
    assert "--runs missing: not in compare.runs. Runs: fine, broken" in capsys.readouterr().err
