"""The learning-rate finder: suggestion rule, command, and ``train.lr: auto``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from hf_transfer.lr_find import main, valley
from hf_transfer.training import train

from conftest import tiny_config, tiny_overrides


def test_valley_suggests_the_middle_of_the_longest_descent_despite_noise() -> None:
    lrs = np.logspace(-7, 1, 81)
    exponent = np.log10(lrs)
    clean = np.where(exponent < -4, 2.3, np.where(exponent < -1, 2.3 - 0.6 * (exponent + 4), 0.5 + 3 * (exponent + 1) ** 2))
    noisy = clean + np.random.default_rng(0).normal(0, 0.01, clean.shape)
    suggestion = valley(lrs.tolist(), noisy.tolist())
    assert 10**-3.5 < suggestion < 10**-1.5  # the descent runs from 1e-4 to 1e-1


def test_lr_find_command_sweeps_exponentially_and_writes_plot_and_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [f"--{o}" for o in tiny_overrides(tmp_path, model__strategy="feature_extraction")]
    assert main([*args, "--steps", "40", "--out", str(tmp_path / "finder")]) == 0
    sweep = json.loads((tmp_path / "finder" / "lr_find.json").read_text())
    ratios = np.diff(np.log(sweep["lrs"]))
    assert len(sweep["lrs"]) > 20 and np.allclose(ratios, ratios[0]) and sweep["lrs"][0] == pytest.approx(1e-7)
    assert all(np.isfinite(sweep["losses"])) and sweep["suggestion"] in sweep["lrs"]
    assert sweep["trainable_parameters"] == 970  # the head of test_resnet for 10 classes: frozen as configured
    assert f"{sweep['suggestion']:.2g}" in capsys.readouterr().out
    with Image.open(tmp_path / "finder" / "lr_find.png") as image:
        assert image.size[0] > 500
    assert not (tmp_path / "run").exists()  # the run's own folder stays free for training


def test_auto_lr_trains_with_the_suggestion_and_a_resumed_run_reuses_it(tmp_path: Path) -> None:
    train(tiny_config(tmp_path, train__lr="auto", train__scheduler="constant"))
    run = tmp_path / "run"
    suggestion = json.loads((run / "lr_find.json").read_text())["suggestion"]
    assert yaml.safe_load((run / "training_config.yaml").read_text())["train"]["lr"] == suggestion
    head_lr = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["lr"]["stage5"]
    assert head_lr == pytest.approx(suggestion)
    sweep_time = (run / "lr_find.json").stat().st_mtime_ns
    train(tiny_config(tmp_path, train__lr="auto", train__scheduler="constant", train__epochs=2, output__resume=True))
    assert (run / "lr_find.json").stat().st_mtime_ns == sweep_time
    assert yaml.safe_load((run / "training_config.yaml").read_text())["train"]["lr"] == suggestion
