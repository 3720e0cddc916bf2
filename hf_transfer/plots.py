"""PNG figures of a run: learning curves and the confusion matrix (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: works on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .outputs import write_atomic  # noqa: E402


def plot_curves(history: Sequence[dict[str, Any]], path: Path, best_epoch: Optional[int] = None) -> None:
    """Loss and accuracy per epoch, train against validation, best epoch marked."""
    epochs = [record["epoch"] for record in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.plot(epochs, [r[f"train_{metric}"] for r in history], marker="o", label="train")
        axis.plot(epochs, [r[f"val_{metric}"] for r in history], marker="o", label="validation")
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        axis.set(title=metric.capitalize(), xlabel="epoch", ylabel=metric)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    axes[1].set_ylim(0, 1)
    _save(figure, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: Path) -> None:
    """Counts of true (rows) against predicted (columns) classes, shaded by row share."""
    size = len(label_names)
    figure, axis = plt.subplots(figsize=(2.5 + 0.55 * size, 2 + 0.5 * size), constrained_layout=True)
    totals = [max(1, sum(row)) for row in matrix]
    shares = [[count / total for count in row] for row, total in zip(matrix, totals)]
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axis.text(j, i, str(count), ha="center", va="center", fontsize=8, color="white" if shares[i][j] > 0.5 else "black")
    axis.set_xticks(range(size), label_names, rotation=45, ha="right")
    axis.set_yticks(range(size), label_names)
    axis.set(xlabel="predicted", ylabel="true", title="Confusion matrix (validation)")
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


def plot_lr_sweep(lrs: Sequence[float], losses: Sequence[float], suggestion: float, trainable: int, path: Path) -> None:
    """The LR finder's smoothed loss against the (log-scaled) learning rate, the suggestion marked."""
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    axis.plot(lrs, losses)
    axis.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    axis.set_xscale("log")
    axis.set(
        title=f"LR finder ({trainable:,} trainable parameters)",
        xlabel="learning rate (train.lr, the head's)",
        ylabel="training loss (smoothed)",
    )
    axis.grid(alpha=0.3, which="both")
    axis.set_ylim(top=losses[0] + 1.5 * (losses[0] - min(losses)) + 0.05 * losses[0])  # divergence runs off the top
    axis.legend()
    _save(figure, path)


COMPARISON_PANELS = (("train_loss", "train loss"), ("train_accuracy", "train accuracy"), ("val_accuracy", "validation accuracy"))


def plot_comparison(histories: dict[str, Sequence[dict[str, Any]]], path: Path) -> None:
    """Train loss, train accuracy and validation accuracy per epoch, one line per run, side by side."""
    figure, axes = plt.subplots(1, len(COMPARISON_PANELS), figsize=(15, 4.6), layout="constrained")
    for axis, (key, title) in zip(axes, COMPARISON_PANELS):
        for name, history in histories.items():
            axis.plot([r["epoch"] for r in history], [r[key] for r in history], marker="o", markersize=3, label=name)
        axis.set(title=title.capitalize(), xlabel="epoch", ylabel=title)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if key.endswith("accuracy"):
            axis.set_ylim(0, 1)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(histories), 6))
    _save(figure, path)
