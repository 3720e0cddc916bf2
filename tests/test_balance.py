"""Class imbalance: inverse-frequency loss weights and the balanced sampler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader, TensorDataset

from hf_transfer.balance import BalancedSampler, class_weights
from hf_transfer.parts import build_parts

from conftest import tiny_config, write_imagefolder

IMBALANCED = [0] * 90 + [1] * 10


def test_class_weights_are_inverse_label_frequencies() -> None:
    weights = class_weights([0] * 6 + [1] * 2, num_classes=3)  # class 2 has no image
    assert weights.tolist() == pytest.approx([8 / (3 * 6), 8 / (3 * 2), 0.0])
    assert class_weights([0, 1, 2, 0, 1, 2], num_classes=3).tolist() == [1.0, 1.0, 1.0]


def test_balanced_sampler_draws_classes_equally_and_the_same_draw_per_epoch() -> None:
    sampler = BalancedSampler(IMBALANCED, num_classes=2, seed=0)
    draws = {}
    for epoch in range(20):
        sampler.set_epoch(epoch)
        draws[epoch] = list(sampler)
    minority = sum(IMBALANCED[i] for draw in draws.values() for i in draw) / (20 * len(IMBALANCED))
    assert len(draws[0]) == len(IMBALANCED) and 0.45 < minority < 0.55  # 0.1 without balancing
    again = BalancedSampler(IMBALANCED, num_classes=2, seed=0)
    again.set_epoch(7)
    assert list(again) == draws[7] != draws[8]


def test_balanced_batches_are_the_same_for_one_or_two_processes() -> None:
    """accelerate's split_batches hands each process its half of every batch the sampler makes."""

    def loader(processes: int, index: int):
        plain = DataLoader(
            TensorDataset(torch.arange(len(IMBALANCED))),
            batch_size=8,
            drop_last=True,  # as the training loader
            sampler=BalancedSampler(IMBALANCED, num_classes=2, seed=3),
        )
        prepared = prepare_data_loader(plain, num_processes=processes, process_index=index, split_batches=True, put_on_device=False)
        prepared.set_epoch(5)
        return [batch[0].tolist() for batch in prepared]

    one, first, second = loader(1, 0), loader(2, 0), loader(2, 1)
    assert len(one) == 12 and one == [a + b for a, b in zip(first, second)]


def test_build_parts_weights_the_loss_and_balances_the_training_batches(tmp_path: Path) -> None:
    data = write_imagefolder(tmp_path / "data", {"train": {"many": 30, "few": 6}, "validation": {"many": 4, "few": 4}})
    config = tiny_config(
        tmp_path, data__path=str(data), data__max_train_samples=None, train__class_weights="auto", train__sampler="balanced"
    )
    parts = build_parts(config, Accelerator(cpu=True))
    names = parts.splits.label_names
    expected = {"many": 36 / (2 * 30), "few": 36 / (2 * 6)}
    assert parts.criterion.weight.tolist() == pytest.approx([expected[name] for name in names])
    drawn: Counter = Counter()
    for epoch in range(5):
        parts.loaders.train.sampler.set_epoch(epoch)
        drawn.update(names[label] for batch in parts.loaders.train for label in batch["labels"].tolist())
    assert sum(drawn.values()) == 5 * 32 and drawn["few"] >= 60  # 80 expected; 27 without balancing
