"""Strategies and gradual unfreezing: freeze states per epoch, stage learning rates, BatchNorm
statistics, test-time augmentation, resume mid-schedule and two processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_transfer.config import ModelConfig, TrainConfig, load_config
from hf_transfer.errors import ConfigError, TrainingInterrupted
from hf_transfer.freezing import apply_freeze_state, parameter_stages, train_mode
from hf_transfer.model import create_model
from hf_transfer.optim import build_optimizer, build_scheduler, lr_multiplier, stage_lrs
from hf_transfer.training import train
from hf_transfer.weights import EFFICIENTNET_LITE0_PACKAGE, resolve_weights_file

from conftest import REPO, tiny_config, tiny_overrides

# What trains in each family, written out by hand: the head, then the last block group (timm's
# group_matcher puts the final norm / conv_head with the last blocks).
HEADS = {
    "test_resnet": (("fc.",), ("layer4.",)),
    "test_efficientnet": (("classifier.",), ("blocks.4.", "conv_head.", "bn2.")),
    "test_convnext": (("head.",), ("stages.3.",)),
    "test_vit": (("head.",), ("blocks.5.", "norm.")),
}


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_freeze_state_follows_the_unfreeze_schedule_epoch_by_epoch(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = dict(model__name=name, model__strategy="feature_extraction", model__unfreeze="{1: 1, 2: all}")
    config = tiny_config(tmp_path, train__epochs=3, data__max_train_samples=32, data__max_val_samples=16, **overrides)
    with caplog.at_level(logging.INFO, logger="hf_transfer.freezing"):
        train(config)
    model = create_model(ModelConfig(name=name, pretrained=False), 10, image_size=32)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    head, last_blocks = HEADS[name]
    expected = [
        sum(size for n, size in sizes.items() if n.startswith(head)),
        sum(size for n, size in sizes.items() if n.startswith(head + last_blocks)),
        sum(sizes.values()),
    ]
    assert [record["trainable_params"] for record in _history(tmp_path / "run")] == expected
    announced = [r.getMessage() for r in caplog.records if "trainable" in r.getMessage()]
    assert len(announced) == 2 and f"{expected[1]:,} trainable" in announced[0] and "0 frozen" in announced[1]


def test_partial_trains_the_last_stages_and_scratch_ignores_pretrained_weights(tmp_path: Path) -> None:
    config = load_config(None, tiny_overrides(tmp_path, model__strategy="partial", model__trainable_stages=2))
    model = create_model(config.model, 10)
    stages = parameter_stages(model)
    apply_freeze_state(model, stages, config.model, epoch=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(model.named_parameters()) if n.startswith(("fc.", "layer4.", "layer3."))}
    scratch = load_config(None, [*tiny_overrides(tmp_path), "model.strategy=scratch", "model.pretrained=true", "model.weights=x"])
    assert scratch.model.pretrained is False and scratch.model.weights is None


def test_stage_lrs_give_the_head_lr_then_backbone_lr_decaying_by_stage() -> None:
    seed = stage_lrs(6, TrainConfig(lr=1e-3, backbone_lr=1e-5))
    assert seed == pytest.approx([1e-5] * 5 + [1e-3])
    decayed = stage_lrs(4, TrainConfig(lr=1e-2, layer_decay=0.5))
    assert decayed == pytest.approx([1.25e-3, 2.5e-3, 5e-3, 1e-2])
    both = stage_lrs(4, TrainConfig(lr=1e-2, backbone_lr=1e-4, layer_decay=0.1))
    assert both == pytest.approx([1e-6, 1e-5, 1e-4, 1e-2])


def test_unfreezing_adds_stage_lrs_and_schedule_continues() -> None:
    """Plain SGD makes every update exactly -lr * grad: frozen stages must not move, a stage unfrozen
    mid-run must move at its own base LR times the schedule's current factor."""
    torch.manual_seed(0)
    config = ModelConfig(name="test_resnet", pretrained=False, strategy="feature_extraction", unfreeze={1: 1})
    train_config = TrainConfig(epochs=3, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.1, backbone_lr=0.01)
    model = create_model(config, 3)
    stages = parameter_stages(model)
    optimizer = build_optimizer(model, stages, train_config)
    scheduler = build_scheduler(optimizer, train_config, steps_per_epoch=2)
    factor = lr_multiplier(train_config, steps_per_epoch=2)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    step = 0
    for epoch, moving in ((0, 1), (1, 2)):
        apply_freeze_state(model, stages, config, epoch)
        for _ in range(2):
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            model.eval()  # no BatchNorm statistics in the way of the exact check
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for index, stage in enumerate(stages):
                lr = (0.1 if index == len(stages) - 1 else 0.01) * factor(step)
                for name in stage:
                    delta = dict(model.named_parameters())[name].detach() - before[name]
                    if index >= len(stages) - moving:
                        assert torch.allclose(delta, -lr * grads[name], atol=1e-7), (epoch, name)
                    else:
                        assert name not in grads and torch.equal(delta, torch.zeros_like(delta)), (epoch, name)
            step += 1
    assert [g["lr"] for g in optimizer.param_groups if g["name"].startswith("stage4")] == [pytest.approx(0.01 * factor(4))] * 2


def test_bn_policy_decides_which_statistics_move() -> None:
    def running_means_after_a_step(policy: str) -> tuple[bool, bool]:
        torch.manual_seed(0)
        model = create_model(ModelConfig(name="test_resnet", pretrained=False), 3)
        stages = parameter_stages(model)
        apply_freeze_state(model, stages, ModelConfig(name="test_resnet", strategy="partial"), epoch=0)
        frozen, trainable = model.bn1.running_mean.clone(), model.layer4[0].bn1.running_mean.clone()
        train_mode(model, policy)
        model(torch.randn(4, 3, 32, 32) * 3 + 1)
        return not torch.equal(frozen, model.bn1.running_mean), not torch.equal(trainable, model.layer4[0].bn1.running_mean)

    assert running_means_after_a_step("eval_frozen") == (False, True)
    assert running_means_after_a_step("train") == (True, True)
    assert running_means_after_a_step("eval") == (False, False)


def test_frozen_pretrained_batchnorm_statistics_are_unchanged_after_an_epoch(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        model__name="efficientnet_lite0",
        model__pretrained=True,
        model__weights=EFFICIENTNET_LITE0_PACKAGE,
        model__strategy="partial",
        data__max_train_samples=32,
        data__max_val_samples=16,
        train__lr=1e-3,
    )
    train(config)
    pretrained = load_file(resolve_weights_file(EFFICIENTNET_LITE0_PACKAGE, "efficientnet_lite0"))
    trained = load_file(tmp_path / "run" / "model.safetensors")
    statistics = [k for k in pretrained if k.endswith(("running_mean", "running_var"))]
    in_trained_stage = [k for k in statistics if k.startswith(("blocks.6.", "bn2."))]
    frozen = [k for k in statistics if k not in in_trained_stage]
    assert len(frozen) > 40 and all(torch.equal(trained[k], pretrained[k]) for k in frozen)
    assert all(not torch.equal(trained[k], pretrained[k]) for k in in_trained_stage)
    weights = [k for k in pretrained if k.endswith("weight") and not k.startswith(("blocks.6.", "bn2.", "conv_head", "classifier"))]
    assert all(torch.equal(trained[k], pretrained[k]) for k in weights)


def _mirror_symmetric_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("validation", 10)):
        for index, name in enumerate(("dark", "light")):
            (root / split / name).mkdir(parents=True)
            for number in range(count):
                half = np.clip(rng.normal(60 + 120 * index, 40, (32, 16, 3)), 0, 255).astype("uint8")
                Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(root / split / name / f"{number}.png")
    return root


def test_flip_tta_metrics_equal_plain_metrics_on_mirror_symmetric_images(tmp_path: Path) -> None:
    data = _mirror_symmetric_folder(tmp_path / "data")
    overrides = dict(data__max_train_samples=None, data__max_val_samples=None, data__crop_pct=1.0)  # a centred crop
    config = tiny_config(tmp_path, data__path=str(data), train__tta="flip", **overrides)
    results = train(config)
    plain, flipped = results["val"], results["val_tta"]
    assert flipped["tta"] == "flip" and flipped["num_samples"] == plain["num_samples"] == 20
    assert flipped["confusion_matrix"] == plain["confusion_matrix"]
    assert flipped["loss"] == pytest.approx(plain["loss"], abs=1e-5)
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(stored) >= {"val", "val_tta"}


def test_stage_counts_beyond_the_model_are_refused_with_the_models_count(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'model.unfreeze' entry \{2: 9\}.*test_resnet has 5 .*Use at most 5"):
        train(tiny_config(tmp_path, train__epochs=3, model__strategy="partial", model__unfreeze="{1: 2, 2: 9}"))
    with pytest.raises(ConfigError, match=r"entry \{3: all\}: the epoch must be between 1 and train.epochs - 1 = 2"):
        tiny_config(tmp_path, train__epochs=3, model__strategy="feature_extraction", model__unfreeze="{3: all}")


def _interrupt_once_unfrozen(checkpoints: Path, sent: threading.Event) -> None:
    """Send SIGTERM to this process once a mid-epoch checkpoint shows the run past its unfreeze."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        latest = checkpoints / "latest"
        if latest.is_file():
            state = checkpoints / latest.read_text().strip() / "trainer_state.json"
            progress = json.loads(state.read_text()) if state.is_file() else {"epoch": 0}
            if progress["epoch"] >= 1 and progress["step_in_epoch"] > 0:
                sent.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return
        time.sleep(0.01)


@pytest.mark.parametrize("policy", ["standard", "flip"])  # flip: epochs 1-2 train on cached activations
def test_resume_mid_schedule_lands_in_the_same_freeze_state_and_matches(tmp_path: Path, policy: str) -> None:
    settings = dict(
        augment__policy=policy,
        train__epochs=3,
        train__batch_size=8,
        data__max_train_samples=64,
        output__checkpoint_every=2,
        model__strategy="feature_extraction",
        model__unfreeze="{1: 1, 2: all}",
    )
    reference = train(tiny_config(tmp_path / "reference", **settings))

    config = tiny_config(tmp_path / "interrupted", **settings)
    checkpoints = tmp_path / "interrupted" / "run" / "checkpoints"
    sent = threading.Event()
    watcher = threading.Thread(target=_interrupt_once_unfrozen, args=(checkpoints, sent), daemon=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a signal sent after the run ends is harmless
    try:
        watcher.start()
        with pytest.raises(TrainingInterrupted):
            train(config)
    finally:
        watcher.join()
        signal.signal(signal.SIGTERM, previous)
    assert sent.is_set()
    state = json.loads((checkpoints / (checkpoints / "latest").read_text() / "trainer_state.json").read_text())
    assert state["epoch"] >= 1 and 2 < state["step_in_epoch"] < 8  # stopped inside an epoch after the unfreeze

    resumed = train(tiny_config(tmp_path / "interrupted", **settings, output__resume=True))
    assert resumed["val"] == reference["val"] and resumed["best_epoch"] == reference["best_epoch"]
    history, expected = _history(tmp_path / "interrupted" / "run"), _history(tmp_path / "reference" / "run")
    assert [r["trainable_params"] for r in history] == [r["trainable_params"] for r in expected]
    assert [r["val_loss"] for r in history] == [r["val_loss"] for r in expected]
    assert [r["inputs"] for r in history] == [r["inputs"] for r in expected]
    weights = load_file(tmp_path / "interrupted" / "run" / "model.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in load_file(tmp_path / "reference" / "run" / "model.safetensors").items())


def test_two_processes_unfreeze_in_step_with_one(tmp_path: Path) -> None:
    """Under DDP, stages unfrozen mid-run must have their gradients averaged across processes (and
    stages still frozen must not move): the two-process run then matches the one-process run. ViT has
    no BatchNorm, whose per-process batch statistics would otherwise differ; SGD, unlike Adam, does not
    blow rounding noise in near-zero gradients up to full-size steps."""
    settings = dict(
        train__optimizer="sgd",
        model__name="test_vit",
        model__strategy="feature_extraction",
        model__unfreeze="{1: 2}",
        train__epochs=2,
        train__batch_size=8,
        data__max_train_samples=48,
    )
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "train.py"]
    args = [f"--{o}" for o in tiny_overrides(tmp_path / "two", **settings)]
    two = subprocess.run(launcher + args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = train(tiny_config(tmp_path / "one", **settings))
    metrics_two = json.loads((tmp_path / "two" / "run" / "metrics.json").read_text())
    assert metrics_two["num_processes"] == 2 and "Unfreeze schedule on 2 processes" in two.stderr
    assert metrics_two["val"]["loss"] == pytest.approx(one["val"]["loss"], abs=1e-4)
    history = _history(tmp_path / "two" / "run")
    assert [r["trainable_params"] for r in history] == [r["trainable_params"] for r in _history(tmp_path / "one" / "run")]
    assert history[0]["trainable_params"] < history[1]["trainable_params"]
    weights_two = load_file(tmp_path / "two" / "run" / "model.safetensors")
    weights_one = load_file(tmp_path / "one" / "run" / "model.safetensors")
    for name, tensor in weights_one.items():
        assert torch.allclose(weights_two[name], tensor, atol=1e-5), name
