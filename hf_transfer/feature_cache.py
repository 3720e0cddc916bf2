"""Cached activations of the frozen part of the model: computed once, reused every epoch and every run.

While the first segments of the model are frozen and the training images are the same every epoch
(``augment.policy`` flip or none), what those segments compute is the same every epoch too. It is
computed once per split without autograd and stored in ``cache_dir()/features`` under a key made of
everything it depends on (architecture and boundary, the frozen weights, the transform, the dataset
fingerprint, the views and the precision), so a rerun, a resumed run or a ``compare`` of head variants
skips the extraction, and a change to any of them misses the cache. The training split is computed in
bf16 where that stays close to fp32 and stored in fp16; the validation split, whose scores pick the
best epoch and are reported, in fp32. With horizontal flips, the mirrored images are cached too and
each epoch picks one view per image, exactly as the uncached pipeline would (``FlipSchedule``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from .segments import Segment, evaluating, run_segments
from .transforms import FlipSchedule, SharedEpoch
from .weights import cache_dir

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when what a cache file holds changes
FP16_MAX = 65504.0
# Relative L2 error of reduced-precision activations accepted for the cache. Measured on
# efficientnet_lite0's pooled features in CPU bf16: 0.07-0.08, and a linear probe trained on them scored
# the same validation accuracy and loss (0.7074 vs 0.7077) as on fp32 features.
MAX_REDUCED_ERROR = 0.1
CHECK_IMAGES = 16  # images of the first batch that measure it


def features_dir() -> Path:
    return cache_dir() / "features"


def prefix_state_hash(model: torch.nn.Module, prefix: Sequence[Segment]) -> str:
    """sha256 of the parameters and buffers of the frozen segments: the weights the cache depends on."""
    parameters = {name for segment in prefix for name in segment.parameters}
    modules = {name.rpartition(".")[0] for name in parameters}
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key in parameters or key.rpartition(".")[0] in modules:
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """One file name for everything the cached tensors depend on."""
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_cached(path: Path, key: str) -> Optional[dict[str, torch.Tensor]]:
    """The tensors stored under ``key``, or None when absent or unreadable (then they are recomputed)."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        logger.warning("Feature cache %s is unreadable (%s); computing it again", path, e)
        return None
    if set(tensors) != {"features", "labels"} or len(tensors["features"]) % max(len(tensors["labels"]), 1):
        logger.warning("Feature cache %s does not hold what key %s describes; computing it again", path, key)
        return None
    return tensors


def store(path: Path, tensors: dict[str, torch.Tensor], description: dict[str, Any]) -> None:
    """Write atomically: a killed run leaves either the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={"description": json.dumps(description, default=str)})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def reduced_precision(device: torch.device) -> Optional[torch.dtype]:
    """The dtype extraction can run the frozen stages in: bf16 (fp16 on older GPUs) on CUDA, bf16 on CPUs
    that compute it natively (AVX512-BF16 or AMX), none elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        except (AttributeError, RuntimeError):
            return None
    return None


def _run(prefix: Sequence[Segment], x: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        out = run_segments(list(prefix), x).float()
    return out.clone()  # a normal tensor again: the cached activations feed training


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got - exact).norm() / exact.norm().clamp_min(1e-12))


def extract(
    model: torch.nn.Module,
    prefix: Sequence[Segment],
    loader: DataLoader,
    views: int,
    device: torch.device,
    dtype: Optional[torch.dtype] = None,
    half: bool = True,
) -> dict[str, torch.Tensor]:
    """Run the frozen segments over every image (and its mirror when ``views`` is 2), in eval mode, in
    ``dtype`` when its output for the first ``CHECK_IMAGES`` images stays within ``MAX_REDUCED_ERROR`` of
    full precision, else in fp32; with ``half``, stored in fp16 where the values fit."""
    outputs: list[list[torch.Tensor]] = [[] for _ in range(views)]
    labels = []
    with evaluating(model):
        for batch in loader:
            pixels = batch["pixel_values"].to(device)
            for view in range(views):
                x = pixels.flip(-1) if view else pixels
                out = _run(prefix, x, dtype)
                if dtype is not None and not labels and not view:  # first batch: is the reduced precision safe?
                    error = relative_error(out[:CHECK_IMAGES], _run(prefix, x[:CHECK_IMAGES], None))
                    if error > MAX_REDUCED_ERROR:
                        logger.info("%s differs from fp32 by %.3g here: extracting in fp32", dtype, error)
                        dtype, out = None, _run(prefix, x, None)
                    else:
                        checked = len(out[:CHECK_IMAGES])
                        logger.info("Extracting in %s (relative error %.2g against fp32 on %d images)", dtype, error, checked)
                outputs[view].append(out.cpu())
            labels.append(torch.as_tensor(batch["labels"]))
    features = torch.cat([torch.cat(view) for view in outputs])
    # half the memory and disk where the values fit; activations past fp16's range stay fp32
    if half and features.numel() and features.abs().max() < FP16_MAX:
        features = features.half()
    return {"features": features.contiguous(), "labels": torch.cat(labels).long()}


def cached_split(
    model: torch.nn.Module,
    prefix: Sequence[Segment],
    key_parts: dict[str, Any],
    make_loader: Callable[[], DataLoader],
    views: int,
    device: torch.device,
    dtype: Optional[torch.dtype] = None,
    exact: bool = False,
) -> dict[str, torch.Tensor]:
    """The split's cached activations: from disk when the key matches, else extracted and stored.
    ``key_parts`` must hold the frozen weights' hash (``prefix_state_hash``); ``exact`` extracts and
    keeps fp32 whatever ``dtype`` says."""
    if exact:
        dtype = None
    parts = {**key_parts, "views": views, "dtype": str(dtype), "storage": "fp32" if exact else "fp16"}
    key = cache_key(parts)
    path = features_dir() / f"{key}.safetensors"
    tensors = load_cached(path, key)
    if tensors is not None:
        logger.info("Feature cache hit for %s (%s): %s", parts.get("split"), path, tuple(tensors["features"].shape))
        return tensors
    logger.info("Computing %s activations of the frozen stages once (%d view(s)) into %s", parts.get("split"), views, path)
    tensors = extract(model, prefix, make_loader(), views, device, dtype, half=not exact)
    store(path, tensors, parts)
    return tensors


def identity_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``CachedFeatures.__getitems__`` returns whole batches: nothing to collate."""
    return batch


class CachedFeatures(torch.utils.data.Dataset):
    """Cached activations as a dataset the training loop consumes like images: whole batches per
    index list (no per-sample Python), and the view of each image chosen by the epoch's flips."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        flips: Optional[FlipSchedule] = None,
        epoch: Optional[SharedEpoch] = None,
    ) -> None:
        self.features, self.labels = tensors["features"], tensors["labels"]
        self.flips, self.epoch = flips, epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        images = torch.as_tensor(indices, dtype=torch.long)
        rows = images  # the first len(labels) rows hold the images, the rest their mirrors
        if self.flips is not None and len(self.features) > len(self.labels):
            rows = images + len(self.labels) * self.flips.mask(int(self.epoch or 0))[images].long()
        return {"pixel_values": self.features[rows].float(), "labels": self.labels[images]}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}
