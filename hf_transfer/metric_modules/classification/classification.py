"""Single-label classification metrics from ranked predictions, as an `evaluate` module.

Each prediction is the list of class ids ranked best first (``logits.topk(k).indices``), so one
pass gives accuracy, macro-F1 and top-k accuracy. Shipped with hf_transfer and loaded by path, so
it works without reaching the Hugging Face Hub.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score


class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy, macro-F1 and top-k accuracy of single-label classification.",
            citation="",
            inputs_description=(
                "predictions: per sample, class ids ranked best first (at least one); "
                "references: the true class id; top_k: k of the top-k accuracy (0 to skip it)."
            ),
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, top_k=5):
        best = [ranked[0] for ranked in predictions]
        results = {
            "accuracy": float(accuracy_score(references, best)),
            "f1_macro": float(f1_score(references, best, average="macro", zero_division=0)),
        }
        if top_k:
            hits = sum(reference in ranked[:top_k] for ranked, reference in zip(predictions, references))
            results[f"top{top_k}_accuracy"] = hits / len(references)
        return results
