"""Single-label classification metrics from ranked predictions, as an `evaluate` module.

Each prediction is the list of class ids ranked best first (``logits.topk(k).indices``), so one
pass gives accuracy, macro-F1 and top-k accuracy. Shipped with hf_transfer and loaded by path, so
it works without reaching the Hugging Face Hub.
"""

import datasets
import evaluate
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy, macro-F1 and top-k accuracy of single-label classification.",
            citation="",
            inputs_description=(
                "predictions: per sample, class ids ranked best first (at least one); "
                "references: the true class id; top_k: k of the top-k accuracy (0 to skip it); "
                "num_classes: with it, also balanced accuracy, per-class precision/recall/F1/support "
                "and the confusion matrix (rows: true class, columns: predicted class)."
            ),
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, top_k=5, num_classes=None):
        best = [ranked[0] for ranked in predictions]
        results = {
            "accuracy": float(accuracy_score(references, best)),
            "f1_macro": float(f1_score(references, best, average="macro", zero_division=0)),
        }
        if top_k:
            hits = sum(reference in ranked[:top_k] for ranked, reference in zip(predictions, references))
            results[f"top{top_k}_accuracy"] = hits / len(references)
        if num_classes:
            labels = list(range(num_classes))
            precision, recall, f1, support = precision_recall_fscore_support(
                references, best, labels=labels, zero_division=0
            )
            results["balanced_accuracy"] = float(balanced_accuracy_score(references, best))
            results["precision"], results["recall"] = precision.tolist(), recall.tolist()
            results["f1"], results["support"] = f1.tolist(), support.tolist()
            results["confusion_matrix"] = confusion_matrix(references, best, labels=labels).tolist()
        return results
