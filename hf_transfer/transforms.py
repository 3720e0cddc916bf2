"""Image preprocessing: timm's own data config and transforms, applied lazily to `datasets` rows.

Training randomness is seeded per (run seed, epoch, row index) rather than drawn from a process-wide
generator, so the augmented batch a sample ends up in is the same whatever the number of DataLoader
workers or processes, and a run resumed in the middle of an epoch sees exactly the images it would
have seen without the interruption.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision import transforms as tv

from .config import AugmentConfig, DataConfig

INDEX_COLUMN = "__index__"  # row number added to the training split, the key of per-sample seeds


def resolve_input_config(model: torch.nn.Module, data: DataConfig) -> dict[str, Any]:
    """timm's input config (input_size, interpolation, mean, std, crop_pct, crop_mode) for ``model``,
    with the user's image size, crop and interpolation taking precedence over the pretrained config."""
    args = {"img_size": data.image_size, "crop_pct": data.crop_pct, "interpolation": data.interpolation}
    return resolve_data_config({k: v for k, v in args.items() if v is not None}, model=model)


def build_transform(input_config: dict[str, Any], augment: Optional[AugmentConfig] = None) -> Callable:
    """timm's eval transform (resize by crop_pct, center crop), or, when ``augment`` is given with
    ``policy: standard``, its train transform: random resized crop, flips, optional rotation, colour
    jitter, auto-augment and random erasing. Policies ``flip`` and ``none`` train on the eval transform
    (the flips are applied by ``BatchTransform`` from a ``FlipSchedule``)."""
    if augment is None or augment.policy != "standard":
        return create_transform(**input_config, is_training=False)
    transform = create_transform(
        **{k: v for k, v in input_config.items() if k not in ("crop_pct", "crop_mode")},
        is_training=True,
        scale=tuple(augment.scale),
        ratio=tuple(augment.ratio),
        hflip=augment.hflip,
        vflip=augment.vflip,
        color_jitter=augment.color_jitter,
        auto_augment=augment.auto_augment,
        re_prob=augment.random_erasing,
    )
    if augment.rotation:
        # rotate the whole image before the random crop so the crop rarely sees the filled corners
        rotation = tv.RandomRotation(augment.rotation, interpolation=tv.InterpolationMode.BILINEAR)
        transform.transforms.insert(0, rotation)
    return transform


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: 16-bit and float images are rescaled rather than clipped, and
    transparent pixels are composited on white rather than left with whatever colour they hide."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode != "F" and array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / high), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class SharedEpoch:
    """The current epoch, in shared memory so that persistent DataLoader workers see updates."""

    def __init__(self) -> None:
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value.fill_(epoch)

    def __int__(self) -> int:
        return int(self._value)


class FlipSchedule:
    """Which training images are mirrored in which epoch (``augment.policy: flip``): one seeded draw
    per epoch for the whole split, shared by the image pipeline and the feature cache so that both
    train on the same views."""

    def __init__(self, seed: int, probability: float, size: int) -> None:
        self.seed, self.probability, self.size = seed, probability, size
        self._epoch: Optional[int] = None
        self._mask = torch.zeros(size, dtype=torch.bool)

    def mask(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(hash((self.seed, epoch)) & 0xFFFFFFFF)
            self._mask = torch.rand(self.size, generator=generator) < self.probability
            self._epoch = epoch
        return self._mask


class BatchTransform:
    """The ``Dataset.with_transform`` callable: rows -> ``pixel_values`` tensors and ``labels``.

    With ``seed`` and ``epoch`` (random training augmentations), each row's randomness is seeded from
    (seed, epoch, row index); without a seed, the transform is deterministic anyway.
    With ``flips``, the rows the schedule picks for this epoch are mirrored after the transform.
    """

    def __init__(
        self,
        transform: Callable,
        image_column: str,
        label_column: str,
        seed: Optional[int] = None,
        epoch: Optional[SharedEpoch] = None,
        flips: Optional[FlipSchedule] = None,
    ) -> None:
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.seed = seed
        self.epoch = epoch
        self.flips = flips

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = [to_rgb(image) for image in batch[self.image_column]]
        epoch = int(self.epoch) if self.epoch is not None else 0
        if self.seed is None:
            pixels = [self.transform(image) for image in images]
        else:
            pixels = []
            for image, index in zip(images, batch[INDEX_COLUMN]):
                with seeded(hash((self.seed, epoch, index)) & 0xFFFFFFFF):
                    pixels.append(self.transform(image))
        if self.flips is not None:
            mirrored = self.flips.mask(epoch)
            pixels = [p.flip(-1) if mirrored[i] else p for p, i in zip(pixels, batch[INDEX_COLUMN])]
        return {"pixel_values": pixels, "labels": batch[self.label_column]}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch CPU randomness for one sample, restoring the outer state after."""
    states = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.default_generator.set_state(states[2])
