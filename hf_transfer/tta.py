"""Test-time augmentation: average the model's probabilities over views of each image (seed 004).

Views are made from the already preprocessed batch, so evaluation and prediction share one code path
whatever the input pipeline: ``flip`` adds the horizontal mirror, ``flip_zoom`` also a centre crop
zoomed back to full size and its mirror.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "flip_zoom")
ZOOM = 0.8  # share of each side kept by the zoomed view


def tta_views(pixel_values: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The batch as the model sees it under ``mode``: original first, then its augmented copies."""
    if mode not in TTA_MODES:
        raise ValueError(f"TTA mode {mode!r} is not one of {', '.join(TTA_MODES)}")
    views = [pixel_values]
    if mode in ("flip", "flip_zoom"):
        views.append(pixel_values.flip(-1))
    if mode == "flip_zoom":
        height, width = pixel_values.shape[-2:]
        top, left = round(height * (1 - ZOOM) / 2), round(width * (1 - ZOOM) / 2)
        crop = pixel_values[..., top : height - top, left : width - left]
        zoomed = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
        views += [zoomed, zoomed.flip(-1)]
    return views


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Log of the mean class probabilities over the views; plain logits when ``mode`` is ``none``.

    Log-probabilities keep argmax, top-k and cross-entropy meaningful for callers that expect logits.
    """
    if mode == "none":
        return model(pixel_values)
    probabilities = torch.stack([model(view).float().softmax(-1) for view in tta_views(pixel_values, mode)])
    return probabilities.mean(0).log()
