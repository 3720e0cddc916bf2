"""The seed-style baseline: how the tutorials train, kept plain on purpose.

torchvision ImageFolder, PIL transforms recomputed every epoch, fp32, a hand-written loop, no
caching. Layers are frozen by name, the way the tutorials do it. The benchmark runs this and
hf_transfer on the same data, weights, epochs and batch size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torchvision import datasets, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def seed_transforms(size: int) -> tuple[transforms.Compose, transforms.Compose]:
    """Seed 000's augmentations, scaled to ``size``: random resized crop, rotation, flip; eval resize + crop."""
    resize = int(size * 256 / 224)
    train = transforms.Compose([
        transforms.RandomResizedCrop(resize, scale=(0.8, 1.0)),
        transforms.RandomRotation(15),
        transforms.RandomHorizontalFlip(),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    evaluation = transforms.Compose([
        transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(MEAN, STD)
    ])
    return train, evaluation


def seed_model(weights: Path, num_classes: int, trainable: tuple[str, ...]) -> nn.Module:
    """efficientnet_lite0 with the given weights, a new classifier, and only modules named in
    ``trainable`` (prefixes, e.g. ("classifier",) or ("blocks.6", "conv_head", "bn2", "classifier")) left trainable."""
    model = timm.create_model("efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(trainable)
    return model


def run_seed_loop(
    train_dir: Path, test_dir: Path, weights: Path, trainable: tuple[str, ...], epochs: int, size: int, batch_size: int = 32,
    lr: float = 1e-3, workers: int = 2, seed: int = 0,
) -> dict[str, Any]:
    """Train and evaluate the tutorial way; per-epoch images/s, wall time and held-out accuracy, and the
    trained model with its test loader (for repeated evaluation timings)."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    train_tf, eval_tf = seed_transforms(size)
    train_set = datasets.ImageFolder(str(train_dir), transform=train_tf)
    test_set = datasets.ImageFolder(str(test_dir), transform=eval_tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers)
    model = seed_model(weights, len(train_set.classes), trainable)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    criterion = nn.CrossEntropyLoss()
    epoch_rates = []
    for _ in range(epochs):
        model.train()
        epoch_start, seen = time.perf_counter(), 0
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            seen += labels.numel()
        epoch_rates.append(seen / (time.perf_counter() - epoch_start))
    train_time = time.perf_counter() - started
    accuracy, eval_rate = evaluate_seed_style(model, test_loader)
    return {
        "train_images_per_s": epoch_rates,
        "train_wall_s": train_time,
        "eval_images_per_s": eval_rate,
        "heldout_accuracy": accuracy,
        "wall_s": time.perf_counter() - started,
        "model": model,
        "test_loader": test_loader,
    }


def evaluate_seed_style(model: nn.Module, test_loader: torch.utils.data.DataLoader) -> tuple[float, float]:
    """(accuracy, images/s) of the tutorial evaluation loop."""
    model.eval()
    correct, seen, started = 0, 0, time.perf_counter()
    with torch.no_grad():
        for images, labels in test_loader:
            correct += (model(images).argmax(1) == labels).sum().item()
            seen += labels.numel()
    return correct / seen, seen / (time.perf_counter() - started)
