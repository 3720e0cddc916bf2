"""Cached activations of frozen stages: the split model equals the model, cached training equals
uncached training, the cache is reused, and every part of its key invalidates it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_transfer import caching, feature_cache
from hf_transfer.config import ModelConfig
from hf_transfer.feature_cache import features_dir
from hf_transfer.freezing import parameter_stages, set_trainable_stages
from hf_transfer.model import create_model
from hf_transfer.segments import Suffix, covers_model, first_trainable, matches_forward, model_segments, run_segments
from hf_transfer.training import train

from conftest import MINI, tiny_config

FAMILIES = ["test_efficientnet", "test_resnet", "test_convnext", "test_vit", "test_byobnet"]
FAST = dict(data__max_train_samples=48, data__max_val_samples=24, augment__policy="flip", train__epochs=2)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _cache_files() -> set[Path]:
    return set(features_dir().glob("*.safetensors")) if features_dir().is_dir() else set()


def _split_of(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()["description"])["split"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_boundary_of_the_split_model_gives_the_models_logits(name: str) -> None:
    model = create_model(ModelConfig(name=name, pretrained=False), 10, image_size=32).eval()
    segments = model_segments(model)
    x = torch.randn(3, 3, 32, 32)
    assert covers_model(model, segments) and matches_forward(model, segments, x)
    expected = model(x)
    for boundary in range(1, len(segments)):
        cached = run_segments(segments[:boundary], x)
        got = Suffix(model, segments, boundary, dropout=0.5)(cached)  # eval mode: no dropout
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext", "test_vit"])
def test_the_boundary_is_the_first_segment_with_a_trainable_parameter(name: str) -> None:
    model = create_model(ModelConfig(name=name, pretrained=False), 10, image_size=32)
    segments, stages = model_segments(model), parameter_stages(model)
    for count in range(1, len(stages)):
        set_trainable_stages(model, stages, count)
        boundary = first_trainable(model, segments)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert not trainable.intersection(n for s in segments[:boundary] for n in s.parameters)
        assert trainable.intersection(segments[boundary].parameters)


@pytest.mark.parametrize(
    "model_settings",
    [
        dict(model__name="test_efficientnet", model__strategy="feature_extraction"),
        dict(model__name="test_resnet", model__strategy="partial", model__trainable_stages=1, model__head="mlp"),
    ],
)
def test_cached_training_equals_training_on_images(
    tmp_path: Path, model_settings: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feature_cache, "FP16_MAX", 0.0)  # stored in fp32: the same numbers as on images
    settings = {**FAST, **model_settings, "train__mixed_precision": "no"}  # and computed in fp32
    cached = train(tiny_config(tmp_path / "cached", **settings))
    images = train(tiny_config(tmp_path / "images", train__cache_features="never", **settings))
    cached_history, image_history = _history(tmp_path / "cached" / "run"), _history(tmp_path / "images" / "run")
    assert all(r["inputs"].startswith("cached activations at") for r in cached_history)
    assert all(r["inputs"] == "images" for r in image_history)
    for ours, theirs in zip(cached_history, image_history):  # fp16 storage of the activations: close, not equal
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), key
    assert cached["val"]["loss"] == pytest.approx(images["val"]["loss"], rel=1e-4)


def test_half_precision_storage_stays_close_to_training_on_images(tmp_path: Path) -> None:
    settings = dict(FAST, data__max_train_samples=40, model__name="test_resnet", model__strategy="partial")
    settings["model__trainable_stages"] = 1  # a subset no other test caches: this run writes its own files
    settings["train__mixed_precision"] = "no"  # fp16 storage alone
    before = _cache_files()
    cached = train(tiny_config(tmp_path / "cached", **settings))
    images = train(tiny_config(tmp_path / "images", train__cache_features="never", **settings))
    written = {_split_of(path): load_file(str(path))["features"].dtype for path in _cache_files() - before}
    assert written["train"] == torch.float16
    # validation activations are kept in fp32 (this run's may have been written by another test)
    assert {load_file(str(path))["features"].dtype for path in _cache_files() if _split_of(path) == "validation"} == {
        torch.float32
    }
    assert cached["val"]["loss"] == pytest.approx(images["val"]["loss"], rel=1e-2)
    assert cached["val"]["accuracy"] == pytest.approx(images["val"]["accuracy"], abs=0.05)


def test_a_rerun_reuses_the_cache_and_every_key_part_invalidates_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(MINI, data)
    settings = dict(FAST, data__path=str(data), model__name="test_efficientnet", model__strategy="feature_extraction")

    def run(name: str, **changes) -> set[Path]:
        before = _cache_files()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hf_transfer.feature_cache"):
            train(tiny_config(tmp_path / name, **{**settings, **changes}))
        return _cache_files() - before

    assert len(run("first")) == 2  # train and validation
    assert run("again") == set() and "Feature cache hit for train" in caplog.text
    assert run("head_variant", model__head="mlp", train__lr=0.05) == set()  # same frozen stages: reused
    assert len(run("size", data__image_size=40)) == 2  # transform
    assert len(run("model", model__name="test_efficientnet_gn")) == 2  # architecture and weights
    assert len(run("boundary", model__strategy="partial", model__trainable_stages=1)) == 2
    assert len(run("no_flip", augment__policy="none")) == 1  # one view of train; validation unchanged
    image = next((data / "train").rglob("*.png"))
    Image.open(image).rotate(90).save(image)
    assert len(run("data")) >= 1  # the dataset fingerprint


def test_other_weights_miss_the_cache(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = create_model(ModelConfig(name="test_efficientnet", pretrained=False), 10, image_size=32)
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    settings = dict(
        FAST, model__name="test_efficientnet", model__strategy="feature_extraction", model__pretrained=True,
        model__weights=str(weights),
    )
    before = _cache_files()
    train(tiny_config(tmp_path / "a", **settings))
    first = _cache_files() - before
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.01)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    train(tiny_config(tmp_path / "b", **settings))
    assert len(_cache_files() - before - first) == 2


def test_unfreezing_moves_the_cache_boundary_then_returns_to_images(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path, **dict(FAST, train__epochs=3), model__name="test_efficientnet",
        model__strategy="feature_extraction", model__unfreeze="{1: 1, 2: all}",
    )
    train(config)
    assert [r["inputs"] for r in _history(tmp_path / "run")] == [
        "cached activations at classifier", "cached activations at blocks.4", "images",
    ]


def test_a_damaged_cache_file_is_computed_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = dict(FAST, model__name="test_resnet", model__strategy="feature_extraction")
    first = train(tiny_config(tmp_path / "a", **settings))
    assert _cache_files()
    for path in _cache_files():
        path.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="hf_transfer.feature_cache"):
        again = train(tiny_config(tmp_path / "b", **settings))
    assert "is unreadable" in caplog.text
    assert again["val"]["loss"] == pytest.approx(first["val"]["loss"], abs=1e-6)


def test_standard_augmentation_keeps_images_and_says_what_caching_would_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dict(FAST, augment__policy="standard", model__name="test_resnet", model__strategy="feature_extraction")
    with caplog.at_level(logging.INFO, logger="hf_transfer.caching"):
        train(tiny_config(tmp_path, **settings))
    assert all(r["inputs"] == "images" for r in _history(tmp_path / "run"))
    assert "With augment.policy flip their output would be computed once and cached" in caplog.text


def test_activations_too_large_for_free_memory_train_on_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from collections import namedtuple

    import psutil

    memory = namedtuple("Memory", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(available=1000))  # bytes
    with caplog.at_level(logging.WARNING, logger="hf_transfer.caching"):
        train(tiny_config(tmp_path, **FAST, model__name="test_resnet", model__strategy="feature_extraction"))
    assert all(r["inputs"] == "images" for r in _history(tmp_path / "run"))
    assert "more than half the free memory" in caplog.text and "train.cache_features: never" in caplog.text


@pytest.mark.parametrize("limit, used", [(1.0, "Extracting in torch.bfloat16"), (0.0, "extracting in fp32")])
def test_reduced_precision_extraction_only_where_it_stays_close_to_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, limit: float, used: str
) -> None:
    monkeypatch.setattr(feature_cache, "MAX_REDUCED_ERROR", limit)
    monkeypatch.setattr(caching, "reduced_precision", lambda device: torch.bfloat16)  # whatever this CPU has
    samples = 44 if limit else 46  # each case extracts its own cache
    settings = dict(FAST, data__max_train_samples=samples, model__name="test_resnet", model__strategy="feature_extraction")
    with caplog.at_level(logging.INFO, logger="hf_transfer.feature_cache"):
        train(tiny_config(tmp_path, **settings))
    assert used in caplog.text


def test_reported_validation_scores_are_the_exported_models_on_the_images(tmp_path: Path) -> None:
    """The final scores come from the cached validation activations (no second pass over the images):
    they must equal what the exported model gives on the validation images, even though the training
    activations were computed in bf16."""
    from hf_transfer.data import load_splits
    from hf_transfer.loading import load_model

    config = tiny_config(tmp_path, **FAST, model__name="test_efficientnet", model__strategy="feature_extraction")
    results = train(config)
    loaded = load_model(tmp_path / "run")
    val = load_splits(config.data, config.train.seed).val
    pixels = torch.stack([loaded.transform(image.convert("RGB")) for image in val["image"]])
    with torch.inference_mode():
        logits = loaded.model(pixels)
    labels = torch.tensor(val["label"])
    assert results["val"]["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)
    assert results["val"]["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())


def test_final_scores_use_the_cache_only_while_the_frozen_weights_are_the_ones_it_was_computed_with(
    tmp_path: Path,
) -> None:
    from hf_transfer.training import build_accelerator, prepare

    config = tiny_config(tmp_path, **FAST, model__name="test_resnet", model__strategy="feature_extraction")
    run = prepare(config, build_accelerator(config, tmp_path), tmp_path)
    inputs = run.caching.inputs(run.images)
    assert inputs.boundary == "classifier" and run.caching.scoring_inputs() is inputs
    frozen = next(p for p in run.model.parameters() if not p.requires_grad)
    with torch.no_grad():
        frozen.add_(1e-3)
    assert run.caching.scoring_inputs() is None  # scored on the images instead
