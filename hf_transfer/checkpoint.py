"""Resumable training state on disk, written so that a crash never costs the last good checkpoint.

Each checkpoint is accelerate's ``save_state`` (model, optimizer, scheduler, RNG states) plus our
``trainer_state.json``, written into a temporary folder, listed with sizes and SHA-256 in a
manifest, renamed into place, and only then named in ``latest``. Loading verifies the manifest and
falls back to an older complete checkpoint when the newest one is damaged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from .errors import CheckpointError
from .outputs import write_atomic

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
BEST_WEIGHTS = "best.safetensors"
PREFIX = "step-"


@dataclass
class RunState:
    """Progress of a run beyond what accelerate saves: where in the schedule, and the best so far."""

    label_names: list[str]
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done in the epoch under way
    global_step: int = 0
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    epochs_without_improvement: int = 0
    partial_epoch: dict[str, float] = field(default_factory=dict)  # running sums of the epoch under way
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch


def save_checkpoint(accelerator: Accelerator, root: Path, state: RunState, keep: int = 1) -> Path:
    """Save a resumable checkpoint of the run (call on every process) and return its folder."""
    name = f"{PREFIX}{state.global_step:09d}"
    final, partial = root / name, root / f".partial-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial), safe_serialization=True)
        accelerator.wait_for_everyone()  # every process has written its RNG state
        if accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
            write_atomic(partial / MANIFEST_FILE, json.dumps(_manifest(partial), indent=1).encode())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            write_atomic(root / LATEST_FILE, name.encode())
            _prune(root, keep)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError from its zip writer
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        previous = latest_checkpoint(root)
        kept = f"the last good checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
        free_mb = shutil.disk_usage(root).free / 1e6
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise CheckpointError(
            f"Could not write the checkpoint {final} ({reason}); {free_mb:.1f} MB are free on that disk and "
            f"{kept}. Free disk space (or choose another output.dir) and resume with --output.resume."
        ) from e
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete, verified checkpoint under ``root``, or None."""
    candidates = sorted(root.glob(f"{PREFIX}*"), reverse=True)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    for candidate in candidates:
        problem = verify(candidate)
        if problem is None:
            return candidate
        logger.warning("Skipping damaged checkpoint %s: %s", candidate, problem)
    return None


def load_checkpoint(accelerator: Accelerator, folder: Path) -> RunState:
    """Restore model, optimizer, scheduler and RNG states from ``folder``; return the run state."""
    accelerator.load_state(str(folder))
    return RunState(**json.loads((folder / STATE_FILE).read_text()))


def verify(folder: Path) -> Optional[str]:
    """None when every file in the manifest is present with its size and hash, else the problem."""
    try:
        expected = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"no readable manifest ({e})"
    for name, (size, digest) in expected.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size or _sha256(path) != digest:
            return f"{name} is missing or altered"
    return None


def save_best_weights(model: torch.nn.Module, root: Path, epoch: int, metric: float) -> None:
    """Keep the weights of the best epoch so far (safetensors, atomic)."""
    root.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    partial = root / f".{BEST_WEIGHTS}.tmp{os.getpid()}"
    save_file(state, str(partial), metadata={"epoch": str(epoch), "metric": repr(metric)})
    os.replace(partial, root / BEST_WEIGHTS)


def _manifest(folder: Path) -> dict[str, list]:
    return {
        str(path.relative_to(folder)): [path.stat().st_size, _sha256(path)]
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prune(root: Path, keep: int) -> None:
    for old in sorted(root.glob(f"{PREFIX}*"), reverse=True)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
