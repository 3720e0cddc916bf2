"""``python -m hf_transfer.predict --model DIR_OR_REPO IMAGE...``: classify image files with an exported model.

Images are decoded exactly as training decoded them (the `datasets` Image feature, which applies the
EXIF orientation) and preprocessed with the model's own evaluation transform from config.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import datasets
import torch
from accelerate import PartialState
from PIL import Image

from .cli import run_command
from .errors import DataError
from .loading import LoadedModel, load_model
from .transforms import to_rgb
from .tta import TTA_MODES, tta_logits

logger = logging.getLogger(__name__)

BATCH_SIZE = 32


@dataclass
class Prediction:
    """The ``top_k`` most probable classes of one image, most probable first."""

    image: str
    labels: list[str]
    scores: list[float]  # probabilities


def predict_images(
    loaded: LoadedModel, paths: Sequence[Path], top_k: int = 5, tta: str = "none"
) -> list[Prediction]:
    """Class probabilities of each image, averaged over test-time augmentation views when ``tta`` asks."""
    if top_k < 1:
        raise DataError(f"--top-k must be at least 1, not {top_k}.")
    if tta not in TTA_MODES:
        raise DataError(f"--tta {tta!r} is not one of {', '.join(TTA_MODES)}.")
    for path in paths:  # every name checked before any work
        if not Path(path).is_file():
            raise DataError(f"Image {path} does not exist or is not a file.")
    k = min(top_k, len(loaded.label_names))
    device = next(loaded.model.parameters()).device
    predictions = []
    for start in range(0, len(paths), BATCH_SIZE):
        batch = paths[start : start + BATCH_SIZE]
        pixels = torch.stack([loaded.transform(read_image(Path(path))) for path in batch]).to(device)
        with torch.inference_mode():
            probabilities = tta_logits(loaded.model, pixels, tta).float().softmax(-1).cpu()
        scores, indices = probabilities.topk(k, dim=-1)
        for path, row_scores, row_indices in zip(batch, scores.tolist(), indices.tolist()):
            predictions.append(Prediction(str(path), [loaded.label_names[i] for i in row_indices], row_scores))
    return predictions


def read_image(path: Path) -> Image.Image:
    """The image file decoded as the training data was (EXIF orientation applied), in RGB. Like the training
    data check, images over PIL's ``MAX_IMAGE_PIXELS`` are refused as decompression bombs, before decoding."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as header:  # reads the header only
            width, height = header.size
        too_large = bool(limit) and width * height > limit
        image = None if too_large else datasets.Image().decode_example({"path": str(path), "bytes": None})
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"Cannot read image {path}: {e}. Give image files PIL can open (JPEG, PNG, WebP, ...).") from None
    if image is None:
        raise DataError(
            f"Image {path} is too large: {width}×{height} pixels is over the limit of {limit:,} pixels that guards "
            "against decompression bombs. Resize it and try again."
        )
    return to_rgb(image)


def format_table(predictions: Sequence[Prediction]) -> str:
    """One block per image: rank, label and probability, aligned."""
    width = max(len(label) for p in predictions for label in p.labels)
    lines = []
    for prediction in predictions:
        lines.append(prediction.image)
        for rank, (label, score) in enumerate(zip(prediction.labels, prediction.scores), 1):
            lines.append(f"  {rank:>2}  {label:<{width}}  {score:7.2%}")
    return "\n".join(lines)


def to_json(predictions: Sequence[Prediction]) -> str:
    """``[{"image": ..., "predictions": [{"label": ..., "score": ...}, ...]}, ...]`` (the pipeline's keys)."""
    records = [
        {"image": p.image, "predictions": [{"label": label, "score": score} for label, score in zip(p.labels, p.scores)]}
        for p in predictions
    ]
    return json.dumps(records, indent=2)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hf_transfer.predict",
        description="Classify images with a model exported by hf_transfer (a local folder or a Hub repo).",
    )
    parser.add_argument("--model", required=True, help="export folder, or Hub repo id OWNER/NAME[@REVISION]")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    parser.add_argument("--top-k", type=int, default=5, help="classes to show per image [5]")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation [none]")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; 0 on success, 2 on a user error (printed without a traceback)."""

    def command() -> None:
        args = parse_args(argv)
        loaded = load_model(args.model, PartialState().device)  # CUDA, MPS or CPU, as training would
        predictions = predict_images(loaded, args.images, args.top_k, args.tta)
        print(to_json(predictions) if args.json else format_table(predictions))

    return run_command(command, logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
