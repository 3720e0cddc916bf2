"""Optimizer groups, LR schedules, and checkpoints that survive damage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from hf_transfer.checkpoint import RunState, latest_checkpoint, load_checkpoint, save_checkpoint
from hf_transfer.config import ModelConfig, TrainConfig
from hf_transfer.errors import CheckpointError
from hf_transfer.freezing import parameter_stages
from hf_transfer.model import create_model
from hf_transfer.optim import build_optimizer, build_scheduler, lr_multiplier
from hf_transfer.tta import tta_logits


def test_every_parameter_is_in_one_group_and_biases_are_not_decayed() -> None:
    model = create_model(ModelConfig(name="test_resnet", pretrained=False), 3)
    stages = parameter_stages(model)
    optimizer = build_optimizer(model, stages, TrainConfig(weight_decay=0.05))
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(model.parameters()))
    for group in optimizer.param_groups:
        assert group["weight_decay"] == (0.0 if group["name"].endswith("no_decay") else 0.05)
        assert all((p.ndim <= 1) == group["name"].endswith("no_decay") for p in group["params"])
    assert optimizer.param_groups[-1]["name"].startswith(f"stage{len(stages) - 1}")


def test_warmup_then_cosine_reaches_zero_and_step_decays() -> None:
    cosine = lr_multiplier(TrainConfig(epochs=4, warmup_epochs=1, scheduler="cosine"), steps_per_epoch=10)
    assert cosine(0) == pytest.approx(1 / 11) and cosine(9) == pytest.approx(10 / 11)
    assert cosine(10) == pytest.approx(1.0) and cosine(25) == pytest.approx(0.5) and cosine(40) == pytest.approx(0.0)
    step = lr_multiplier(TrainConfig(epochs=10, scheduler="step", step_epochs=3, step_gamma=0.5), steps_per_epoch=10)
    assert [step(s) for s in (0, 29, 30, 60)] == [1.0, 1.0, 0.5, 0.25]
    constant = lr_multiplier(TrainConfig(scheduler="constant"), steps_per_epoch=10)
    assert constant(0) == constant(1000) == 1.0


def _accelerated(tmp_path: Path) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer]:
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(model, [["weight", "bias"]], TrainConfig())
    scheduler = build_scheduler(optimizer, TrainConfig(), steps_per_epoch=5)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, model, optimizer


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    accelerator, model, _ = _accelerated(tmp_path)
    root = tmp_path / "checkpoints"
    first = save_checkpoint(accelerator, root, RunState(label_names=["a", "b"], global_step=1), keep=2)
    with torch.no_grad():
        model.weight.add_(1.0)
    second = save_checkpoint(accelerator, root, RunState(label_names=["a", "b"], global_step=2), keep=2)
    assert latest_checkpoint(root) == second
    weights = second / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # torn write
    assert latest_checkpoint(root) == first
    (root / "latest").write_text("step-999999999")  # pointer to nothing
    assert latest_checkpoint(root) == first
    state = load_checkpoint(accelerator, first)
    assert state.global_step == 1


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_good_one(tmp_path: Path) -> None:
    accelerator, _, _ = _accelerated(tmp_path)
    root = tmp_path / "checkpoints"
    good = save_checkpoint(accelerator, root, RunState(label_names=["a"], global_step=1))
    (root / ".partial-step-000000002").write_text("a file where the folder should go")
    with pytest.raises(CheckpointError, match=rf"last good checkpoint {good} is kept"):
        save_checkpoint(accelerator, root, RunState(label_names=["a"], global_step=2))
    assert latest_checkpoint(root) == good


def test_flip_tta_is_exact_on_mirror_symmetric_images() -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="test_resnet", pretrained=False), 3).eval()
    half = torch.randn(2, 3, 32, 16)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    with torch.no_grad():
        plain = model(symmetric).log_softmax(-1)
        flipped = tta_logits(model, symmetric, "flip")
        zoomed = tta_logits(model, symmetric, "flip_zoom")
    assert torch.allclose(plain, flipped, atol=1e-5)
    assert not torch.allclose(plain, zoomed, atol=1e-3) and torch.allclose(zoomed.exp().sum(-1), torch.ones(2))
