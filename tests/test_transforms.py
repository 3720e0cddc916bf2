"""Transforms: timm's preprocessing per backbone, RGB conversion of any mode, seeded augmentation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as tv

from hf_transfer.config import AugmentConfig, DataConfig
from hf_transfer.transforms import INDEX_COLUMN, BatchTransform, SharedEpoch, build_transform, resolve_input_config, to_rgb


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"])
def test_eval_transform_follows_the_backbone_config(name: str) -> None:
    model = timm.create_model(name, pretrained=False)
    config = resolve_input_config(model, DataConfig(path="x"))
    cfg = model.pretrained_cfg
    assert config["input_size"] == cfg["input_size"] and config["interpolation"] == cfg["interpolation"]
    assert tuple(config["mean"]) == tuple(cfg["mean"]) and config["crop_pct"] == cfg["crop_pct"]
    transform = build_transform(config)
    resize, crop = transform.transforms[0], transform.transforms[1]
    size = cfg["input_size"][-1]
    assert isinstance(crop, tv.CenterCrop) and crop.size == (size, size)
    assert resize.size == int(size / cfg["crop_pct"])  # resize by crop_pct, then center crop
    assert transform(Image.new("RGB", (300, 200))).shape == (3, size, size)


def test_user_size_crop_and_interpolation_take_precedence() -> None:
    model = timm.create_model("test_resnet", pretrained=False)
    config = resolve_input_config(model, DataConfig(path="x", image_size=48, crop_pct=1.0, interpolation="bilinear"))
    assert (config["input_size"], config["crop_pct"], config["interpolation"]) == ((3, 48, 48), 1.0, "bilinear")
    assert build_transform(config)(Image.new("RGB", (64, 64))).shape == (3, 48, 48)


def test_train_transform_has_the_seed_augmentations() -> None:
    model = timm.create_model("test_resnet", pretrained=False)
    config = resolve_input_config(model, DataConfig(path="x", image_size=32))
    augment = AugmentConfig(scale=[0.8, 1.0], rotation=15, random_erasing=0.25, auto_augment="rand-m9-mstd0.5")
    names = [type(t).__name__ for t in build_transform(config, augment).transforms]
    assert names[:3] == ["RandomRotation", "RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    assert "RandAugment" in names and "RandomErasing" in names
    crop = build_transform(config, augment).transforms[1]
    assert crop.scale == (0.8, 1.0) and crop.size == (32, 32)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Image.new("L", (4, 4), 128), (128, 128, 128)),
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),  # transparent -> white, not black
        (lambda: Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),
        (lambda: Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), (255, 255, 255)),  # 16-bit rescaled
        (lambda: Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)), (128, 128, 128)),
        (lambda: Image.fromarray(np.full((4, 4), 100.0, dtype=np.float32)), (100, 100, 100)),
    ],
)
def test_any_image_mode_becomes_8_bit_rgb(make, expected: tuple[int, int, int]) -> None:
    image = to_rgb(make())
    assert image.mode == "RGB" and image.getpixel((1, 1)) == expected


def test_palette_image_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def _batch(indices: list[int]) -> dict:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(4)]
    return {"image": [images[i] for i in indices], "label": indices, INDEX_COLUMN: indices}


def test_augmentation_depends_only_on_seed_epoch_and_row() -> None:
    model = timm.create_model("test_resnet", pretrained=False)
    config = resolve_input_config(model, DataConfig(path="x", image_size=32))
    epoch = SharedEpoch()
    transform = BatchTransform(build_transform(config, AugmentConfig(rotation=20)), "image", "label", seed=3, epoch=epoch)
    first = transform(_batch([0, 1, 2, 3]))["pixel_values"]
    torch.manual_seed(123), random.seed(9)  # the global RNG state does not matter ...
    reordered = transform(_batch([2, 0]))["pixel_values"]  # ... nor the batch a row lands in
    assert torch.equal(reordered[0], first[2]) and torch.equal(reordered[1], first[0])
    epoch.set(1)
    assert not torch.equal(transform(_batch([0]))["pixel_values"][0], first[0])  # a new epoch, new draws
    state = torch.get_rng_state()
    transform(_batch([1]))
    assert torch.equal(state, torch.get_rng_state())  # and the global RNG is left untouched
