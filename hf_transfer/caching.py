"""When a run trains on cached activations of its frozen stages, and what each epoch then feeds the model.

Per epoch, after the freeze state is applied: if the first segments of the model are frozen and
caching applies (``train.cache_features``, ``augment.policy``, one process, frozen BatchNorm
statistics), the train and validation splits are fed as cached activations at the first trainable
segment, and only the segments from there on run. An unfreeze that moves that boundary builds the
cache at the new one; when every stage trains, the epoch runs full forward passes on images. The
cache is computed by a copy of the model with its BatchNorms folded (folding.py) when that copy
reproduces the model, and the final validation scores reuse the cached validation split.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import psutil
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from .config import Config
from .data import Splits
from .feature_cache import (
    CachedFeatures, cached_split, features_dir, identity_collate, prefix_state_hash, reduced_precision,
)
from .folding import folded_copy
from .loaders import Loaders, make_loader, train_sampler
from .segments import (
    Segment, Suffix, covers_model, evaluating, first_trainable, matches_forward, model_segments, run_segments,
)
from .transforms import FlipSchedule

logger = logging.getLogger(__name__)

POLICY = "augment.policy standard draws new random crops every epoch"


@dataclass
class EpochInputs:
    """What an epoch runs: the forward to call and the loaders that feed it."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    train: DataLoader
    val: DataLoader
    boundary: Optional[str] = None  # the segment the cached activations enter; None: images
    weights: Optional[str] = None  # hash of the frozen weights the activations were computed with


def checked_segments(model: torch.nn.Module, input_size: tuple[int, ...]) -> Optional[list[Segment]]:
    """The model's segments when they account for every parameter and reproduce its forward."""
    segments = model_segments(model)
    if not covers_model(model, segments):
        logger.info("Feature caching is off: %s's segments do not cover all its parameters", type(model).__name__)
        return None
    probe = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    if not matches_forward(model, segments, probe):
        logger.warning("Feature caching is off: %s's forward does not match its segments", type(model).__name__)
        return None
    return segments


def blocker(config: Config, num_processes: int) -> Optional[str]:
    """Why this run cannot train on cached activations, or None when it can."""
    if config.train.cache_features == "never":
        return "train.cache_features is never"
    if num_processes > 1:
        return f"the run has {num_processes} processes (the cache is built and used by one)"
    if config.model.bn_policy == "train":
        return "model.bn_policy train updates the frozen BatchNorm statistics at every step"
    if config.augment.policy == "standard" and config.train.cache_features == "auto":
        return POLICY
    return None


class FeatureCaching:
    """Chooses each epoch's inputs, building a cache whenever the frozen/trainable boundary moves."""

    def __init__(
        self,
        config: Config,
        accelerator: Accelerator,
        model: torch.nn.Module,
        splits: Splits,
        input_config: dict[str, Any],
        loaders: Loaders,
    ) -> None:
        self.config, self.accelerator, self.model = config, accelerator, model
        self.splits, self.input_config, self.loaders = splits, input_config, loaders
        self.blocked = blocker(config, accelerator.num_processes)
        if self.blocked and self.blocked != POLICY:
            logger.info("Feature caching is off: %s", self.blocked)
        usable = self.blocked in (None, POLICY)  # the policy case still estimates what caching would save
        self.segments = checked_segments(model, tuple(input_config["input_size"])) if usable else None
        self.current: Optional[EpochInputs] = None
        if config.augment.policy == "standard" and config.train.cache_features == "always" and not self.blocked:
            logger.warning(
                "train.cache_features always with augment.policy standard: the cached training images are "
                "the eval transform's (and their mirrors when augment.hflip > 0); the random crops, rotation "
                "and colour augmentations of augment.* are not applied"
            )

    @property
    def views(self) -> int:
        return 2 if self.config.augment.policy != "none" and self.config.augment.hflip > 0 else 1

    def inputs(self, images: EpochInputs) -> EpochInputs:
        """The cached inputs for the current freeze state, or ``images`` when caching does not apply."""
        if self.blocked or self.segments is None:
            return images
        boundary = first_trainable(self.model, self.segments)
        if boundary == 0:
            if self.current is not None:
                logger.info("Every stage trains now: full forward passes on images")
            self.current = None
            return images
        if self.current is None or self.current.boundary != self.segments[boundary].name:
            problem = self._too_large(boundary)
            if problem:
                logger.warning("Feature caching is off for this epoch: %s", problem)
                self.current = None
                return images
            self.current = self._build(boundary)
        return self.current

    def _too_large(self, boundary: int) -> Optional[str]:
        """Why the activations at ``boundary`` should not be cached: more than half the free memory
        (they are held in memory while training) or half the free disk."""
        probe = torch.zeros(1, *self.input_config["input_size"], device=self.accelerator.device)
        with evaluating(self.model), torch.no_grad():
            per_image = run_segments(self.segments[:boundary], probe).numel() * 2  # fp16; validation fp32
        needed = per_image * (len(self.splits.train) * self.views + 2 * len(self.splits.val))
        folder = features_dir()
        while not folder.exists():
            folder = folder.parent
        memory, disk = psutil.virtual_memory().available, shutil.disk_usage(folder).free
        if needed <= memory / 2 and needed <= disk / 2:
            return None
        return (
            f"the activations at {self.segments[boundary].name} would take {needed / 2**30:.1f} GiB, more than half "
            f"the free memory ({memory / 2**30:.1f} GiB) or disk ({disk / 2**30:.1f} GiB at {folder}). Freeze more "
            "stages, lower data.image_size, or set train.cache_features: never to silence this."
        )

    def _build(self, boundary: int) -> EpochInputs:
        prefix = self.segments[:boundary]
        started = time.perf_counter()
        weights = prefix_state_hash(self.model, prefix)
        probe = torch.randn(2, *self.input_config["input_size"], device=self.accelerator.device)
        runner = folded_copy(self.model, probe)  # the frozen stages run faster with BatchNorm folded
        runs = prefix if runner is self.model else model_segments(runner)[:boundary]
        tensors = {
            name: self._split(name, split, runner, runs, weights)
            for name, split in (("train", self.splits.train), ("validation", self.splits.val))
        }
        logger.info(
            "Training on cached activations at %s (stages before it are frozen): ready in %.1f s",
            self.segments[boundary].name, time.perf_counter() - started,
        )
        # the image pipeline's schedule under policy flip (loaders.flip_schedule), and also used with
        # train.cache_features always under policy standard
        flips = None
        if self.views == 2:
            flips = FlipSchedule(self.config.train.seed, self.config.augment.hflip, len(self.splits.train))
        train = CachedFeatures(tensors["train"], flips, self.loaders.epoch)
        device = self.accelerator.device

        def loader(dataset: CachedFeatures, training: bool) -> DataLoader:
            sampler = train_sampler(self.splits, self.config) if training else None
            built = make_loader(dataset, self.config, device, training, 0, sampler, identity_collate)
            return self.accelerator.prepare(built)

        suffix = Suffix(self.model, self.segments, boundary, self.config.model.head_dropout)

        def forward(x: torch.Tensor) -> torch.Tensor:
            with self.accelerator.autocast():
                return suffix(x)

        return EpochInputs(forward, loader(train, True), loader(CachedFeatures(tensors["validation"]), False),
                           self.segments[boundary].name, weights)

    def scoring_inputs(self) -> Optional[EpochInputs]:
        """The last epoch's cached inputs while the frozen stages still hold the weights they were
        computed with, so that the final validation scores need no second pass over the images; None
        otherwise. Loading the best epoch's weights keeps them: stages only ever unfreeze, so the
        stages before the last boundary were frozen in every epoch (the hash checks it)."""
        current = self.current
        if current is None or self.segments is None:
            return None
        boundary = [segment.name for segment in self.segments].index(current.boundary)
        if prefix_state_hash(self.model, self.segments[:boundary]) != current.weights:
            return None
        return current

    def _split(
        self, name: str, split: Any, runner: torch.nn.Module, prefix: list[Segment], weights: str
    ) -> dict[str, torch.Tensor]:
        """A split's cached activations, computed by ``prefix`` (segments of ``runner``: the model or its
        folded copy); validation in fp32, since its scores pick the best epoch and are the ones reported."""
        key = {
            "model": self.config.model.name,
            "segments": [segment.name for segment in prefix],
            "transform": repr(self.loaders.eval_transform.transform),
            "input": self.input_config,
            "data": split._fingerprint,
            "split": name,
            "columns": [self.splits.image_column, self.splits.label_column],
            "weights": weights,
        }
        views = self.views if name == "train" else 1

        def extraction_loader() -> DataLoader:
            dataset = split.with_transform(self.loaders.eval_transform)
            return make_loader(dataset, self.config, self.accelerator.device, False, self.loaders.workers)

        device = self.accelerator.device
        return cached_split(
            runner, prefix, key, extraction_loader, views, device, self._extraction_dtype(), exact=name == "validation"
        )

    def _extraction_dtype(self) -> Optional[torch.dtype]:
        """``train.mixed_precision`` auto: the device's fast reduced precision (checked against fp32 on
        the first images); fp16/bf16: that one; no: full precision."""
        requested = self.config.train.mixed_precision
        if requested == "auto":
            return reduced_precision(self.accelerator.device)
        return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[requested]

    def report_savings(self, epoch_seconds: float) -> None:
        """Random augmentation kept the cache off: say what it would have saved (after the first epoch)."""
        if self.blocked != POLICY or self.segments is None:
            return
        boundary = first_trainable(self.model, self.segments)
        if boundary == 0:
            return
        pixels = next(iter(self.loaders.val))["pixel_values"][: self.config.train.batch_size]
        try:
            with evaluating(self.model):
                started = time.perf_counter()
                with torch.no_grad(), self.accelerator.autocast():
                    cached = run_segments(self.segments[:boundary], pixels)
                frozen = time.perf_counter() - started
                started = time.perf_counter()
                with self.accelerator.autocast():
                    Suffix(self.model, self.segments, boundary, 0.0)(cached).float().logsumexp(-1).sum().backward()
                trainable = time.perf_counter() - started
        finally:
            for parameter in self.model.parameters():
                parameter.grad = None
        share = frozen / (frozen + trainable)
        logger.info(
            "The frozen stages (before %s) are about %.0f%% of each training step and are recomputed every "
            "epoch because %s. With augment.policy flip their output would be computed once and cached, "
            "making epochs after the first about %.0fx faster than this one (%.1f s), at the cost of the "
            "random crops.",
            self.segments[boundary].name, 100 * share, POLICY, 1 / max(1 - share, 1e-3), epoch_seconds,
        )
