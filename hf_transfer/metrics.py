"""Validation metrics computed with the `evaluate` module shipped in ``metric_modules/``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

METRIC_MODULES = Path(__file__).parent / "metric_modules"
TOP_K = 5


@lru_cache(maxsize=None)
def load_metric(name: str = "classification"):
    """The local `evaluate` module ``name``, kept in memory (no cache files, safe across processes)."""
    import evaluate  # imported here: it is slow to import and only needed once metrics are computed

    return evaluate.load(str(METRIC_MODULES / name), keep_in_memory=True)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, f1_macro, top5_accuracy (when there are more than 5 classes), loss and the count."""
    logits, labels = logits.float(), labels.long()
    num_classes = logits.shape[-1]
    k = TOP_K if num_classes > TOP_K else 1
    ranked = logits.topk(k, dim=-1).indices
    results = load_metric().compute(
        predictions=ranked.tolist(), references=labels.tolist(), top_k=TOP_K if k == TOP_K else 0
    )
    results["loss"] = F.cross_entropy(logits, labels).item()
    results["num_samples"] = int(labels.numel())
    return results


def class_report(logits: torch.Tensor, labels: torch.Tensor, label_names: list[str]) -> dict:
    """Balanced accuracy, per-class precision/recall/F1/support keyed by class name, and the
    confusion matrix (rows: true class, columns: predicted class, in ``label_names`` order)."""
    ranked = logits.float().argmax(-1, keepdim=True)
    results = load_metric().compute(
        predictions=ranked.tolist(), references=labels.long().tolist(), top_k=0, num_classes=len(label_names)
    )
    per_class = {
        name: {key: results[key][index] for key in ("precision", "recall", "f1", "support")}
        for index, name in enumerate(label_names)
    }
    return {
        "balanced_accuracy": results["balanced_accuracy"],
        "per_class": per_class,
        "confusion_matrix": results["confusion_matrix"],
    }
