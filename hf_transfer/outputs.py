"""The run's output directory: refuse to clobber, resume or overwrite on request, and log lines."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from .config import OutputConfig
from .errors import CheckpointError

CONFIG_FILE = "training_config.yaml"
METRICS_LOG = "metrics.jsonl"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
CURVES_PLOT = "curves.png"
CONFUSION_PLOT = "confusion_matrix.png"


def check_output_dir(config: OutputConfig) -> Path:
    """Decide, before any work, what happens to ``output.dir``; raise when it holds a run that
    neither ``output.resume`` nor ``output.overwrite`` allows touching."""
    root = Path(config.dir).expanduser()
    if config.resume and config.overwrite:
        raise CheckpointError("output.resume and output.overwrite exclude each other; choose one.")
    has_files = root.is_dir() and any(root.iterdir())
    if config.resume and not (root / CHECKPOINTS).is_dir():
        raise CheckpointError(
            f"output.resume is set but {root} holds no checkpoint to resume from. "
            "Drop --output.resume to start a new run there."
        )
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"output.dir {root} is a file; choose a folder.")
    if has_files and not (config.resume or config.overwrite):
        raise CheckpointError(
            f"Output directory {root} is not empty. Pass --output.resume to continue the run in it, "
            "--output.overwrite to replace it, or choose another --output.dir."
        )
    return root


def reset_output_dir(root: Path, overwrite: bool) -> None:
    """Create ``root``, emptying it first when overwriting (main process only)."""
    if overwrite and root.is_dir():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


def write_metrics_log(root: Path, records: Iterable[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` from the run's history: one JSON line per completed epoch."""
    lines = "".join(json.dumps(record) + "\n" for record in records)
    write_atomic(root / METRICS_LOG, lines.encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename: never half a file."""
    partial = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
