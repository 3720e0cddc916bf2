"""The model card: generated from the run's records, parsed by huggingface_hub, rendered as Markdown."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from html.parser import HTMLParser
from pathlib import Path

import markdown
import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_transfer.card import card_problems, wilson_interval, write_model_card
from hf_transfer.config import ModelConfig, load_config
from hf_transfer.data import load_splits
from hf_transfer.run_info import weights_record
from hf_transfer.weights import EFFICIENTNET_LITE0_PACKAGE, resolve_weights_file


class _Tables(HTMLParser):
    """Cell counts of each row of each table, and the image sources, of rendered HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[int]] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(0)
        elif tag in ("td", "th"):
            self.tables[-1][-1] += 1
        elif tag == "img":
            self.images.append(dict(attrs)["src"])


def test_card_metadata_is_what_the_hub_parses(trained_run: Path) -> None:
    card = ModelCard.load(trained_run / "README.md")
    metrics = json.loads((trained_run / "metrics.json").read_text())
    data = card.data.to_dict()
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == ("timm", "image-classification", "unknown")
    assert {"image-classification", "timm", "test_resnet"} <= set(data["tags"])
    assert "base_model" not in data and "datasets" not in data  # trained from scratch, on a local folder
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "test_resnet trained on fashion-mnist-mini"
    scores = {(r.dataset_split, r.metric_type): r.metric_value for r in results}
    assert scores == {
        ("validation", "accuracy"): round(metrics["val"]["accuracy"], 4),
        ("validation", "f1"): round(metrics["val"]["f1_macro"], 4),
    }
    assert {(r.task_type, r.dataset_type, r.dataset_name) for r in results} == {
        ("image-classification", "imagefolder", "fashion-mnist-mini")
    }
    assert card_problems(trained_run) == []


def test_card_renders_as_markdown_with_whole_tables_and_the_plots(trained_run: Path) -> None:
    text = ModelCard.load(trained_run / "README.md").text
    assert "{{" not in text and "{%" not in text
    html = markdown.markdown(text, extensions=["tables", "fenced_code"])
    parsed = _Tables()
    parsed.feed(html)
    assert len(parsed.tables) == 6  # classes, splits, settings, results, per class, reproducibility
    for rows in parsed.tables:
        assert len(set(rows)) == 1, rows  # every row has as many cells as the header
    assert parsed.tables[0] == [2] * 11  # header + 10 classes
    assert parsed.images == ["confusion_matrix.png", "curves.png"]
    for heading in ("Task", "Data", "Training", "Results", "How to use", "Limitations", "Reproducibility"):
        assert f"<h2>{heading}</h2>" in html
    assert html.count("<pre><code") == 3  # timm, transformers, hf_transfer predict


def test_card_content_comes_from_the_run_records(trained_run: Path) -> None:
    text = (trained_run / "README.md").read_text()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    info = json.loads((trained_run / "run_info.json").read_text())
    config = load_config(trained_run / "training_config.yaml")
    for name, row in metrics["val"]["per_class"].items():
        assert f"| {name} | {row['precision']:.2f} | {row['recall']:.2f} | {row['f1']:.2f} | {row['support']} |" in text
    assert f"| validation | 40 | {metrics['val']['accuracy']:.1%} |" in text
    assert f"epoch {metrics['best_epoch']} of 2" in text
    assert f"torch {metadata.version('torch')}," in text and "| seed | 42 |" in text
    # the recorded fingerprints are those of the data a new load of the same config gives
    splits = load_splits(config.data, config.train.seed)
    assert info["data"]["splits"]["train"]["fingerprint"] == splits.train._fingerprint
    assert info["data"]["splits"]["validation"]["fingerprint"] == splits.val._fingerprint
    assert f"train `{splits.train._fingerprint}`" in text
    assert str(config.data.path) not in text + json.dumps(info)  # only the folder name is published


def test_weights_source_is_recorded_honestly() -> None:
    package = weights_record(ModelConfig(name="efficientnet_lite0", weights=EFFICIENTNET_LITE0_PACKAGE))
    assert package["kind"] == "package" and "base_model" not in package
    assert EFFICIENTNET_LITE0_PACKAGE in package["description"] and "ra_in1k" not in package["description"]
    from hf_transfer.checkpoint import sha256_file

    assert package["sha256"] == sha256_file(resolve_weights_file(EFFICIENTNET_LITE0_PACKAGE, "efficientnet_lite0"))

    timm_hub = weights_record(ModelConfig(name="resnet50.a1_in1k"))
    assert (timm_hub["base_model"], timm_hub["license"]) == ("timm/resnet50.a1_in1k", "apache-2.0")
    hub = weights_record(ModelConfig(name="hf-hub:someone/their-model@v2"))
    assert hub["base_model"] == "someone/their-model"
    scratch = weights_record(ModelConfig(name="resnet50.a1_in1k", pretrained=False))
    assert scratch["kind"] == "scratch" and "base_model" not in scratch


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda t: t.replace("license: unknown\n", ""), "the front matter has no 'license'"),
        (lambda t: t.replace("  - task:\n", "  - tusk:\n", 1), "model-index"),
        (lambda t: t.replace("](curves.png)", "](plots/curves.png)"), "links to plots/curves.png, which is not in"),
        (lambda t: t.replace("library_name: timm\n", "library_name: [timm\n"), "YAML front matter does not parse"),
        (lambda t: t.replace("pipeline_tag:", "base_model: not a repo id\npipeline_tag:"), "base_model 'not a repo id'"),
    ],
)
def test_card_problems_name_the_defect(trained_run: Path, tmp_path: Path, edit, problem: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(trained_run, folder, ignore=shutil.ignore_patterns("checkpoints"))
    card = folder / "README.md"
    edited = edit(card.read_text())
    assert edited != card.read_text()
    card.write_text(edited)
    problems = card_problems(folder)
    assert any(problem in p for p in problems), problems


def test_wilson_interval_matches_the_textbook_value() -> None:
    low, high = wilson_interval(0.5, 100)
    assert (round(low, 3), round(high, 3)) == (0.404, 0.596)
    assert wilson_interval(1.0, 10)[1] == 1.0 and wilson_interval(0.0, 10)[0] == 0.0


def test_card_of_a_hub_dataset_and_hub_weights_names_both(trained_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(trained_run, folder, ignore=shutil.ignore_patterns("checkpoints"))
    info = json.loads((folder / "run_info.json").read_text())
    info["data"].update(source="hub", id="AI-Lab-Makerere/beans", revision="4e3b0e3")
    info["weights"] = weights_record(ModelConfig(name="resnet50.a1_in1k"))
    (folder / "run_info.json").write_text(json.dumps(info))
    write_model_card(folder)
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert (data["base_model"], data["license"], data["datasets"]) == ("timm/resnet50.a1_in1k", "apache-2.0", ["AI-Lab-Makerere/beans"])
    assert {(r.dataset_type, r.dataset_revision) for r in card.data.eval_results} == {("AI-Lab-Makerere/beans", "4e3b0e3")}
    assert "test_resnet fine-tuned on AI-Lab-Makerere/beans" in card.text
    assert card_problems(folder) == []
