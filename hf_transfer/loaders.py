"""DataLoaders over the prepared splits, with workers and memory pinning chosen for the machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler

from .balance import BalancedSampler
from .config import Config
from .data import Splits
from .transforms import INDEX_COLUMN, BatchTransform, FlipSchedule, SharedEpoch, build_transform


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: Optional[DataLoader]
    epoch: SharedEpoch  # set before each training epoch; seeds that epoch's augmentations
    eval_transform: BatchTransform  # rows -> tensors the way evaluation (and the feature cache) sees them
    workers: int


def build_loaders(splits: Splits, input_config: dict[str, Any], config: Config, device: torch.device) -> Loaders:
    """Training loader (augmented, shuffled, seeded per sample) and evaluation loaders."""
    epoch = SharedEpoch()
    seed = config.train.seed
    random_transform = config.augment.policy == "standard"  # the others are deterministic: no per-sample seeds
    train_transform = BatchTransform(
        build_transform(input_config, config.augment), splits.image_column, splits.label_column,
        seed if random_transform else None, epoch, flip_schedule(config, len(splits.train)),
    )
    eval_transform = BatchTransform(build_transform(input_config), splits.image_column, splits.label_column)
    train_set = with_row_index(splits.train).with_transform(train_transform)
    workers = default_num_workers(device) if config.data.num_workers is None else config.data.num_workers

    def loader(dataset: Dataset, training: bool, sampler: Optional[Sampler] = None) -> DataLoader:
        return make_loader(dataset, config, device, training, workers, sampler)

    return Loaders(
        train=loader(train_set, training=True, sampler=train_sampler(splits, config)),
        val=loader(splits.val.with_transform(eval_transform), training=False),
        test=loader(splits.test.with_transform(eval_transform), training=False) if splits.test else None,
        epoch=epoch,
        eval_transform=eval_transform,
        workers=workers,
    )


def make_loader(
    dataset: Any,
    config: Config,
    device: torch.device,
    training: bool,
    workers: int,
    sampler: Optional[Sampler] = None,
    collate_fn: Optional[Callable] = None,
) -> DataLoader:
    """A loader of the run's batch size: training ones shuffled by a seeded generator (or ``sampler``)
    and without a last partial batch; evaluation ones in order, at the evaluation batch size."""
    batch_size = config.train.batch_size // config.train.grad_accum_steps
    if not training:
        batch_size = config.train.eval_batch_size or 2 * config.train.batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=training and sampler is None,
        sampler=sampler,
        drop_last=training and len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.train.seed),  # never draws from the global RNG
        collate_fn=collate_fn,
    )


def flip_schedule(config: Config, size: int) -> Optional[FlipSchedule]:
    """The mirrored training images per epoch under ``augment.policy: flip``; None otherwise."""
    if config.augment.policy != "flip" or not config.augment.hflip:
        return None
    return FlipSchedule(config.train.seed, config.augment.hflip, size)


def train_sampler(splits: Splits, config: Config) -> Optional[Sampler]:
    """``train.sampler: balanced``: classes drawn equally often; else None (a seeded shuffle)."""
    if config.train.sampler != "balanced":
        return None
    return BalancedSampler(splits.train[splits.label_column], splits.num_classes, config.train.seed)


def with_row_index(dataset: Dataset) -> Dataset:
    """Add the row number column that keys per-sample augmentation seeds."""
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))


def default_num_workers(device: torch.device) -> int:
    """Half the cores of this process's share of the machine (at most 8) when an accelerator runs the
    model; on CPU, where the model already keeps every core busy, one worker per 8 cores (none below 8:
    on 2 cores a worker made a 10-epoch cached feature-extraction run 0.5 to 2 s slower)."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = cores // processes
    return min(8, share // 8 if device.type == "cpu" else share // 2)
