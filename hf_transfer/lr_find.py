"""The learning-rate finder (fastai's ``lr_find``): train a throwaway copy of the run's model for a
few steps while the learning rate grows exponentially, and suggest one from where the loss falls.

The sweep runs under the first epoch's freeze state, stage learning rates, loss and precision, so the
suggestion fits the run's start: ``train.lr`` (the head's learning rate) moves, the backbone stages
follow ``train.layer_decay`` or keep ``train.backbone_lr``. ``train.lr: auto`` runs it before
training; ``python -m hf_transfer.lr_find --config X`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from .cli import config_parser, run_config_command
from .config import Config, load_config
from .errors import HfTransferError
from .freezing import train_mode
from .launch import wants_cpu
from .model import count_parameters
from .optim import build_optimizer, stage_lrs
from .outputs import write_atomic
from .parts import Parts, build_parts
from .plots import plot_lr_sweep

logger = logging.getLogger(__name__)

SWEEP_FILE = "lr_find.json"
SWEEP_PLOT = "lr_find.png"
START_LR, END_LR, STEPS = 1e-7, 10.0, 100
SMOOTHING = 0.9  # of the loss's exponential moving average
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum


@dataclass
class Sweep:
    lrs: list[float]  # head learning rate at each step
    losses: list[float]  # smoothed (debiased moving average) training loss after each step
    suggestion: float
    trainable_parameters: int


def find_lr(config: Config, accelerator: Accelerator, steps: int = STEPS) -> Sweep:
    """Sweep a freshly built model of ``config`` (seeded like the run) and suggest a learning rate."""
    set_seed(config.train.seed)
    return lr_sweep(build_parts(config, accelerator), config, accelerator, steps)


def lr_sweep(parts: Parts, config: Config, accelerator: Accelerator, steps: int = STEPS) -> Sweep:
    """``steps`` optimizer steps from START_LR to END_LR (geometric), stopping early when the loss
    diverges. Every process sweeps the whole global batch, so the result does not depend on how many
    there are. ``parts.model`` is trained: pass one you will throw away."""
    model = parts.model.to(accelerator.device)
    optimizer = build_optimizer(model, parts.stages, replace(config.train, lr=START_LR))
    accumulation = config.train.grad_accum_steps
    batches = _forever(parts.loaders.train)
    train_mode(model, config.model.bn_policy)
    lrs, losses, average = [], [], 0.0
    for step in range(steps):
        lr = START_LR * (END_LR / START_LR) ** (step / max(1, steps - 1))
        for group, group_lr in zip(optimizer.param_groups, _group_lrs(optimizer, parts, config, lr)):
            group["lr"] = group_lr
        loss = 0.0
        for _ in range(accumulation):
            batch = next(batches)
            with accelerator.autocast():
                logits = model(batch["pixel_values"].to(accelerator.device))
                micro_loss = parts.criterion(logits, batch["labels"].to(accelerator.device)) / accumulation
            micro_loss.backward()
            loss += micro_loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        if not math.isfinite(smoothed) or (losses and smoothed > DIVERGED * min(losses)):
            break
        lrs.append(lr)
        losses.append(smoothed)
    if not lrs:
        raise HfTransferError(
            f"The LR sweep's first loss ({loss}) is not finite: the model diverges even at lr {START_LR}. "
            "Check the data, and train.mixed_precision (try no)."
        )
    return Sweep(lrs, losses, valley(lrs, losses), count_parameters(model)[0])


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's "valley" suggestion: the middle of the longest stretch over which the loss keeps
    falling (the longest decreasing subsequence), which is more robust to noise than the steepest point."""
    assert lrs and len(lrs) == len(losses), "a sweep has at least one step"
    longest = [1] * len(losses)  # length of the longest decreasing subsequence ending at each step
    for i in range(1, len(losses)):
        longest[i] = 1 + max((longest[j] for j in range(i) if losses[j] > losses[i]), default=0)
    end = max(range(len(losses)), key=lambda i: (longest[i], -i))
    start = end - longest[end] + 1  # as fastai: the subsequence is taken to be about contiguous
    return lrs[start + (end - start) // 2]


def resolve_lr(config: Config, accelerator: Accelerator, root: Path) -> Config:
    """``config`` with ``train.lr: auto`` replaced by the finder's suggestion, whose sweep and plot
    are saved in ``root``; a resumed run reuses the suggestion saved there."""
    if config.train.lr != "auto":
        return config
    saved = root / SWEEP_FILE
    if config.output.resume and saved.is_file():
        lr = json.loads(saved.read_text())["suggestion"]
    else:
        sweep = find_lr(config, accelerator)
        if accelerator.is_main_process:
            save_sweep(sweep, root)
        lr = sweep.suggestion
    lr = broadcast_object_list([lr])[0]  # every process trains with the main process's choice
    logger.info("train.lr auto: the LR finder suggests %.3g (plot: %s)", lr, root / SWEEP_PLOT)
    return replace(config, train=replace(config.train, lr=lr))


def save_sweep(sweep: Sweep, folder: Path) -> None:
    """``lr_find.json`` (the sweep) and ``lr_find.png`` (loss against learning rate, suggestion marked)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / SWEEP_FILE, json.dumps(asdict(sweep), indent=1).encode())
    plot_lr_sweep(sweep.lrs, sweep.losses, sweep.suggestion, sweep.trainable_parameters, folder / SWEEP_PLOT)


def _group_lrs(optimizer: torch.optim.Optimizer, parts: Parts, config: Config, lr: float) -> list[float]:
    lrs = stage_lrs(len(parts.stages), replace(config.train, lr=lr))
    return [lrs[group["stage"]] for group in optimizer.param_groups]


def _forever(loader: torch.utils.data.DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hf_transfer.lr_find --config X [--steps N] [--out DIR] [--section.key VALUE ...]``."""
    parser = config_parser("Suggest a learning rate for a config with an exponential LR sweep (fastai's lr_find).")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps of the sweep [{STEPS}]")
    parser.add_argument("--out", help="folder for lr_find.png and lr_find.json [OUTPUT_DIR-lr_find]")

    def command(args: argparse.Namespace, overrides: list[str]) -> None:
        config = load_config(args.config, overrides)
        out = Path(args.out or f"{config.output.dir.rstrip('/')}-lr_find")
        sweep = find_lr(config, Accelerator(cpu=wants_cpu()), args.steps)
        save_sweep(sweep, out)
        print(f"Suggested learning rate: {sweep.suggestion:.2g} (use --train.lr {sweep.suggestion:.2g}); plot: {out / SWEEP_PLOT}")

    return run_config_command(parser, argv, command)


if __name__ == "__main__":
    raise SystemExit(main())
