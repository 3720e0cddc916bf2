"""A trained model as a Hub model repo on disk, and ``python -m hf_transfer.export`` for any checkpoint.

timm writes ``model.safetensors`` and ``config.json`` (``save_for_hf``), with ``label_names`` and a
``pretrained_cfg`` describing the evaluation preprocessing actually used, so the folder loads with
``timm.create_model("local-dir:…")`` and transformers' TimmWrapper. The command re-scores the chosen
checkpoint on the run's data with training's own ``finish`` so that metrics, plots and the model card
describe the exported weights. Files are written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import secrets
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import load_file
from timm.models import save_for_hf
from torch import nn

from .card import write_model_card
from .checkpoint import BEST_WEIGHTS, RunState, latest_checkpoint, read_state, verify
from .cli import run_command
from .config import load_config
from .errors import CheckpointError
from .outputs import CHECKPOINTS, CONFIG_FILE, write_atomic, write_metrics_log
from .run_info import RUN_INFO_FILE, read_run_info, write_run_info

logger = logging.getLogger(__name__)

EXPORT_FILES = ("model.safetensors", "config.json")
CHECKPOINT_WEIGHTS = "model.safetensors"  # the model in an accelerate save_state folder


def export_model(
    model: nn.Module,
    directory: Path,
    label_names: list[str],
    input_config: dict[str, Any],
    head: Optional[dict[str, Any]] = None,
) -> None:
    """Write ``model`` (unwrapped, on any device) into ``directory`` in timm's Hub format.

    ``head`` describes a non-timm head (the MLP head) under the ``hf_transfer_head`` config key;
    such a model needs :func:`hf_transfer.predict` style loading, not plain timm.
    """
    directory.mkdir(parents=True, exist_ok=True)
    model_config: dict[str, Any] = {"label_names": list(label_names)}
    if head:
        model_config["hf_transfer_head"] = head
    # the pretrained_cfg timm writes must describe the preprocessing this model was trained with
    model.pretrained_cfg = {**model.pretrained_cfg, **input_config}
    model.to(memory_format=torch.contiguous_format)  # safetensors stores packed tensors (training may use NHWC)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as staging:
        save_for_hf(model, staging, model_config=model_config, safe_serialization=True)
        _drop_num_classes_arg(Path(staging) / "config.json")
        for name in EXPORT_FILES:
            os.chmod(Path(staging) / name, 0o644)  # safetensors writes 0600; an export is meant to be shared
            os.replace(Path(staging) / name, directory / name)


def _drop_num_classes_arg(config_path: Path) -> None:
    """Remove ``num_classes`` from ``model_args``: transformers' TimmWrapper passes both
    ``num_classes=num_labels`` and ``**model_args`` to timm and fails on the duplicate, while timm
    reads the class count from the top-level ``num_classes`` anyway."""
    config = json.loads(config_path.read_text())
    model_args = config.get("model_args", {})
    model_args.pop("num_classes", None)
    if not model_args:
        config.pop("model_args", None)
    config_path.write_text(json.dumps(config, indent=2))


@dataclasses.dataclass
class Checkpoint:
    """Weights of a run to export and the run state they belong to."""

    weights: Path
    state: RunState
    record: dict[str, Any]  # for run_info.json and the card: kind, name, epoch, step


def export_run(run_dir: Path, checkpoint: str = "best", output: Optional[Path] = None, license: Optional[str] = None) -> Path:
    """Export ``checkpoint`` (best, last, or a checkpoint folder) of the run in ``run_dir`` as a complete model
    repo folder in ``output`` (default: the run folder itself) and return it. The weights are scored again on
    the run's validation (and test) data, so the data must still be where the run found it."""
    from .training import build_accelerator, finish, prepare  # training imports this module

    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a training run: it has no {CONFIG_FILE}. Pass the output.dir of a run as --run-dir.")
    config = load_config(config_path)
    chosen = pick_checkpoint(run_dir, checkpoint)
    output = output or run_dir
    in_place = output.resolve() == run_dir.resolve()
    if not in_place and output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CheckpointError(f"--output {output} exists and is not an empty folder; choose a new folder or remove it.")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = (run_dir if in_place else output.parent) / f".{output.name}.export-{secrets.token_hex(4)}"
    staging.mkdir()  # not mkdtemp: the folder becomes the export, with the usual permissions
    try:
        # the checkpoint replaces every weight: no need to fetch the pretrained ones again
        scoring = dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, pretrained=False),
            output=dataclasses.replace(config.output, dir=str(staging), tensorboard=False, resume=False, overwrite=False),
        )
        accelerator = build_accelerator(scoring, staging)
        run = prepare(scoring, accelerator, staging)
        if chosen.state.label_names != run.splits.label_names:
            raise CheckpointError(
                f"{chosen.weights} was trained on classes {chosen.state.label_names}, but the data at "
                f"{config.data.path} now has {run.splits.label_names}; export needs the run's data to score the weights."
            )
        try:
            accelerator.unwrap_model(run.model, keep_torch_compile=False).load_state_dict(load_file(chosen.weights))
        except (RuntimeError, OSError) as e:
            raise CheckpointError(f"{chosen.weights} does not fit the model of {config_path}: {e}") from e
        shutil.copyfile(config_path, staging / CONFIG_FILE)
        finish(run, chosen.state)
        write_metrics_log(staging, chosen.state.history)
        info = read_run_info(run_dir)  # the record made when the run finished, with its package versions
        if not info:  # a run that stopped before finishing: record it now, with the run's own config
            write_run_info(staging, config, run.splits, accelerator)
            info = read_run_info(staging)
        info.update({"checkpoint": chosen.record, **({"license": license} if license else {})})
        write_atomic(staging / RUN_INFO_FILE, json.dumps(info, indent=2).encode())
        write_model_card(staging)
        _move_into_place(staging, output, in_place)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def pick_checkpoint(run_dir: Path, checkpoint: str) -> Checkpoint:
    """``best`` (the best epoch's weights), ``last`` (the newest complete checkpoint) or a checkpoint folder."""
    root = run_dir / CHECKPOINTS
    if checkpoint in ("best", "last"):
        latest = latest_checkpoint(root)
        if latest is None:
            raise CheckpointError(f"{root} holds no complete checkpoint; the run must finish at least one epoch or checkpoint.")
        state = read_state(latest)
        if checkpoint == "last":
            record = {"kind": "last", "name": latest.name, "epoch": state.epoch, "step": state.global_step}
            return Checkpoint(latest / CHECKPOINT_WEIGHTS, state, record)
        if not (root / BEST_WEIGHTS).is_file():
            raise CheckpointError(f"{root / BEST_WEIGHTS} is missing; export --checkpoint last instead.")
        return Checkpoint(root / BEST_WEIGHTS, state, {"kind": "best", "epoch": state.best_epoch})
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"--checkpoint {checkpoint!r} is not best, last, or a checkpoint folder (like {root}/step-000000100).")
    problem = verify(folder)
    if problem is not None:
        raise CheckpointError(f"Checkpoint {folder} is incomplete or damaged: {problem}.")
    state = read_state(folder)
    return Checkpoint(folder / CHECKPOINT_WEIGHTS, state, {"kind": "chosen", "name": folder.name, "epoch": state.epoch, "step": state.global_step})


def _move_into_place(staging: Path, output: Path, in_place: bool) -> None:
    """A new folder appears whole (one rename); in the run folder each file is replaced by a rename."""
    if in_place:
        for path in sorted(staging.iterdir()):
            os.replace(path, output / path.name)
        return
    if output.is_dir():
        output.rmdir()  # empty, checked before the work
    os.replace(staging, output)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hf_transfer.export",
        description="Export a checkpoint of a training run as a Hub model repo folder: weights, config.json, "
        "model card, training config, metrics and plots.",
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="the output.dir of a training run")
    parser.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint folder of the run")
    parser.add_argument("--output", type=Path, help="folder to create [the run folder itself]")
    parser.add_argument("--license", help="license id for the model card, e.g. apache-2.0 or mit [the base weights' license, else unknown]")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; 0 on success, 2 on a user error (printed without a traceback)."""

    def command() -> None:
        args = parse_args(argv)
        output = export_run(args.run_dir.expanduser(), args.checkpoint, args.output and args.output.expanduser(), args.license)
        print(f"Exported {args.checkpoint} checkpoint of {args.run_dir} to {output}")
        print(f"Publish it with: python -m hf_transfer.push --model-dir {output} --repo-id USER/NAME")

    return run_command(command)


if __name__ == "__main__":
    raise SystemExit(main())
