"""Class imbalance: loss weights from label frequencies, and a sampler that draws classes equally.

Both read the labels of the training split only. The sampler is seeded by (seed, epoch) rather than
by a generator that carries state from epoch to epoch, so every process (accelerate then hands each
its slice of every batch) and a resumed run draw exactly the same indices.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def label_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Images per class, in class-index order (zero for a class the split lacks)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``N / (K * n_c)`` per class (scikit-learn's "balanced"): 1.0 everywhere for balanced data, and
    each class contributes the same total weight to the loss. A class without images gets weight 0."""
    counts = label_counts(labels, num_classes)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class BalancedSampler(WeightedRandomSampler):
    """Draws ``len(labels)`` indices per epoch with replacement, every class with the same probability."""

    def __init__(self, labels: Sequence[int], num_classes: int, seed: int) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        per_class = 1.0 / np.maximum(label_counts(labels, num_classes), 1)
        super().__init__(per_class[labels].tolist(), num_samples=len(labels), replacement=True, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's ``DataLoader.set_epoch``: a new draw each epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(self.seed * 100_003 + self.epoch)
        return super().__iter__()
