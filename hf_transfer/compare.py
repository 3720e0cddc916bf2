"""``python -m hf_transfer.compare --config X``: train several strategies on the same data, seed and
budget, then write ``comparison.md``, ``comparison.csv`` and ``comparison.png`` (seed 003's experiment
as a command).

The runs are ``compare.runs`` in the config (name -> overrides), by default the four strategies. Each
run is an ordinary training run in ``output.dir/NAME``: resumable, with its own model and metrics.
Command-line overrides apply to every run, after the run's own.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from .cli import config_parser, run_config_command
from .config import STRATEGIES, CompareConfig, Config, load_config
from .errors import ConfigError
from .outputs import CONFIG_FILE, METRICS_LOG, check_output_dir, write_atomic
from .plots import plot_comparison

logger = logging.getLogger(__name__)

TABLE_FILE, CSV_FILE, PLOT_FILE = "comparison.md", "comparison.csv", "comparison.png"


@dataclass
class Row:
    """One run's line of the table."""

    run: str
    strategy: str
    learning_rates: str
    best_val_accuracy: float
    val_f1_macro: float
    val_tta_accuracy: Optional[float]
    best_epoch: int
    epochs: int
    wall_time_s: float
    train_images_per_s: float
    trainable_params_start: int
    trainable_params_end: int


def run_configs(
    path: Optional[str], overrides: Sequence[str], names: Sequence[str] = ()
) -> tuple[Path, dict[str, Config]]:
    """The comparison's folder (``output.dir``) and the validated config of every selected run, each
    training into its own ``output.dir/NAME``."""
    base = load_config(path, overrides)
    runs = base.compare.runs or {strategy: [f"model.strategy={strategy}"] for strategy in STRATEGIES}
    unknown = [name for name in names if name not in runs]
    if unknown:
        raise ConfigError(f"--runs {' '.join(unknown)}: not in compare.runs. Runs: {', '.join(runs)}.")
    configs = {}
    for name in names or runs:
        if "/" in name or name in ("", ".", ".."):
            raise ConfigError(f"compare.runs name {name!r} must be usable as a folder name.")
        try:
            config = load_config(path, [*runs[name], *overrides, f"output.dir={Path(base.output.dir) / name}"])
        except ConfigError as e:
            raise ConfigError(f"compare.runs.{name}: {e}") from None
        configs[name] = replace(config, compare=CompareConfig())
    return Path(base.output.dir), configs


def compare(configs: dict[str, Config], root: Path) -> list[Row]:
    """Train every run in turn (resuming those with checkpoints when ``output.resume`` is set) and
    write the table, CSV and plots into ``root``."""
    from .training import train  # slow imports, after every config is known good

    for config in configs.values():
        config.output.resume = config.output.resume and (Path(config.output.dir) / "checkpoints").is_dir()
        check_output_dir(config.output)  # refuse before training anything, not after the first runs
    rows, histories = [], {}
    for name, config in configs.items():
        logger.info("Comparison run %s (%d of %d)", name, len(rows) + 1, len(configs))
        started = time.perf_counter()
        results = train(config)
        run_dir = Path(config.output.dir)
        histories[name] = [json.loads(line) for line in (run_dir / METRICS_LOG).read_text().splitlines()]
        rows.append(table_row(name, config, results, histories[name], time.perf_counter() - started))
    if os.environ.get("RANK", "0") == "0":
        write_comparison(rows, histories, next(iter(configs.values())), root)
    return rows


def table_row(name: str, config: Config, results: dict, history: list[dict], wall_time: float) -> Row:
    """A run's results as a table row."""
    model, train = config.model, config.train
    stages = model.trainable_stages or 1
    strategy = model.strategy + (f" ({stages} stage{'s' * (stages > 1)})" if model.strategy == "partial" else "")
    if model.unfreeze:
        strategy += ", unfreeze " + ", ".join(f"{stages} at epoch {epoch}" for epoch, stages in sorted(model.unfreeze.items()))
    rates = f"{train.lr:.2g}"
    if train.backbone_lr is not None:
        rates += f", backbone {train.backbone_lr:.2g}"
    if train.layer_decay is not None:
        rates += f", decay {train.layer_decay:g}/stage"
    return Row(
        run=name,
        strategy=strategy,
        learning_rates=rates,
        best_val_accuracy=results["val"]["accuracy"],
        val_f1_macro=results["val"]["f1_macro"],
        val_tta_accuracy=results["val_tta"]["accuracy"] if "val_tta" in results else None,
        best_epoch=results["best_epoch"],
        epochs=results["epochs_completed"],
        wall_time_s=round(wall_time, 1),
        train_images_per_s=round(statistics.median(r["train_images_per_s"] for r in history), 1),
        trainable_params_start=history[0]["trainable_params"],
        trainable_params_end=history[-1]["trainable_params"],
    )


def write_comparison(rows: list[Row], histories: dict[str, list[dict]], config: Config, root: Path) -> None:
    """``comparison.md`` (setup, table, plot), ``comparison.csv`` and ``comparison.png``."""
    root.mkdir(parents=True, exist_ok=True)
    plot_comparison(histories, root / PLOT_FILE)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    write_atomic(root / CSV_FILE, buffer.getvalue().encode())
    write_atomic(root / TABLE_FILE, markdown(rows, config).encode())
    logger.info("Comparison of %d runs written to %s", len(rows), root / TABLE_FILE)


def markdown(rows: list[Row], config: Config) -> str:
    """The comparison as Markdown: what was held equal, the table, and the plot."""
    data, train = config.data, config.train
    tta = any(row.val_tta_accuracy is not None for row in rows)
    header = ["run", "strategy", "learning rates", "best val accuracy", "val macro-F1"]
    header += [f"val accuracy with {train.tta} TTA"] if tta else []
    header += ["best epoch / epochs", "wall time", "train images/s (median epoch)", "trainable parameters"]
    lines = [
        "# Strategy comparison",
        "",
        f"`{config.model.name}` on `{data.path}` at {f'{data.image_size} px' if data.image_size else 'its input size'}, "
        f"{train.epochs} epochs, "
        f"batch {train.batch_size}, {train.optimizer}, {train.scheduler} schedule, seed {train.seed}; "
        f"each run's config is `NAME/{CONFIG_FILE}`. Measured on {machine()}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [row.run, row.strategy, row.learning_rates, f"{row.best_val_accuracy:.3f}", f"{row.val_f1_macro:.3f}"]
        cells += [f"{row.val_tta_accuracy:.3f}" if row.val_tta_accuracy is not None else "–"] if tta else []
        cells += [f"{row.best_epoch} / {row.epochs}", f"{row.wall_time_s:.0f} s", f"{row.train_images_per_s:.1f}"]
        cells += [_parameters(row.trainable_params_start, row.trainable_params_end)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![train loss, train accuracy and validation accuracy per epoch]({PLOT_FILE})", ""]
    return "\n".join(lines)


def machine() -> str:
    """The accelerator, or the CPU and its cores, that the timings come from."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.processor() or platform.machine()} CPU, {cores} cores"


def _parameters(start: int, end: int) -> str:
    return f"{start:,}" if start == end else f"{start:,} → {end:,}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m hf_transfer.compare``; returns the process exit code."""
    parser = config_parser("Train several strategies on the same data, seed and budget; write a table and plots.")
    parser.add_argument("--runs", nargs="+", default=(), metavar="NAME", help="only these runs of compare.runs")

    def command(args: argparse.Namespace, overrides: list[str]) -> None:
        root, configs = run_configs(args.config, overrides, args.runs)
        compare(configs, root)
        print(f"Comparison: {root / TABLE_FILE}, {root / CSV_FILE}, {root / PLOT_FILE}")

    return run_config_command(parser, argv, command)


if __name__ == "__main__":
    raise SystemExit(main())
