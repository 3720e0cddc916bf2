"""The model card (``README.md``) of an exported model, generated from what the run recorded.

Everything in it comes from the files beside it: ``config.json`` (classes, preprocessing, head),
``metrics.json`` (results), ``training_config.yaml`` (settings) and ``run_info.json`` (data
fingerprints, weights source, versions). Metadata goes through huggingface_hub's ``ModelCardData``
and ``EvalResult``, so the front matter and its ``model-index`` are in the form the Hub parses.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData, RepoCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import validate_repo_id

from . import __version__
from .errors import ModelError
from .loading import CONFIG_FILE, HEAD_KEY
from .outputs import CONFIG_FILE as TRAINING_CONFIG_FILE
from .outputs import CONFUSION_PLOT, CURVES_PLOT, METRICS_FILE, write_atomic
from .run_info import RUN_INFO_FILE, read_run_info

CARD_FILE = "README.md"
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
REPO_ID_PLACEHOLDER = "<user>/<model-name>"  # in the usage snippets until the model is pushed
REQUIRED_METADATA = ("library_name", "pipeline_tag", "license")
TAGS = ["image-classification", "timm", "transfer-learning", "hf-transfer-learning"]
PRECISIONS = {"no": "float32", "fp16": "float16 mixed precision", "bf16": "bfloat16 mixed precision"}
STRATEGIES = {
    "feature_extraction": "Feature extraction: the pretrained backbone stayed frozen (its BatchNorm statistics too) "
    "and only the new head trained.",
    "full": "Full fine-tuning: every layer trained, starting from the pretrained weights.",
}


def write_model_card(model_dir: Path) -> Path:
    """Generate ``README.md`` in ``model_dir`` (atomically) and return its path."""
    path = model_dir / CARD_FILE
    write_atomic(path, str(build_model_card(model_dir)).encode("utf-8"))
    return path


def build_model_card(model_dir: Path) -> ModelCard:
    """The card of the exported model in ``model_dir``, from the records written beside it."""
    config, metrics, training, info = _read_records(model_dir)
    data = info["data"]
    weights = info["weights"]
    architecture = config["architecture"]
    scratch = weights["kind"] == "scratch"
    title = f"{architecture} {'trained' if scratch else 'fine-tuned'} on {data['id']}"
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=info.get("license") or weights.get("license") or "unknown",
        tags=TAGS + [architecture],
        base_model=weights.get("base_model"),
        datasets=[data["id"]] if data["source"] == "hub" else None,
        metrics=["accuracy", "f1"],
        model_name=title,
        eval_results=_eval_results(metrics, data),
    )
    head = config.get(HEAD_KEY)
    names = config["label_names"]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        version=__version__,
        title=title,
        summary=_summary(names, weights, data),
        classes=[_cell(name) for name in names],
        data_sentence=_data_sentence(data),
        splits=[{"role": role, **split, "split": _cell(split["split"])} for role, split in data["splits"].items()],
        strategy_sentence=_strategy_sentence(training, weights, head),
        settings=_settings(training, metrics, info, config),
        weights_sentence=_weights_sentence(metrics, info.get("checkpoint")),
        results=[_result_row(split, metrics[split]) for split in ("val", "test") if split in metrics],
        per_class=_per_class_rows(metrics["val"]),
        plots=[(alt, file) for alt, file in (("Confusion matrix", CONFUSION_PLOT), ("Learning curves", CURVES_PLOT)) if (model_dir / file).is_file()],
        linear_head=head is None,
        head_hidden=(head or {}).get("hidden_dim"),
        repo_id=REPO_ID_PLACEHOLDER,
        limitations=_limitations(names, metrics, data, config, head),
        reproducibility=_reproducibility(info),
    )


def fill_repo_id(text: str, repo_id: str) -> str:
    """The card with the usage snippets pointing at ``repo_id`` instead of the placeholder."""
    return text.replace(REPO_ID_PLACEHOLDER, repo_id)


def card_problems(model_dir: Path) -> list[str]:
    """What keeps ``model_dir/README.md`` from being a valid model card, checked locally: the YAML front
    matter parses, its ``model-index`` parses into huggingface_hub ``EvalResult``s, the metadata survives a
    ``ModelCardData`` round trip, the keys the Hub needs are there, ``base_model`` is a repo id, and every
    file the text links to is in the folder. An empty list means none found."""
    path = model_dir / CARD_FILE
    if not path.is_file():
        return [f"{path} is missing; generate it with `python -m hf_transfer.export --run-dir RUN_DIR`"]
    try:
        card = RepoCard(path.read_text(encoding="utf-8"))  # the plain front matter, model-index unparsed
    except (ValueError, yaml.YAMLError) as e:
        return [f"{path}: the YAML front matter does not parse: {e}"]
    metadata = card.data.to_dict()
    problems = [f"{path}: the front matter has no {key!r}" for key in REQUIRED_METADATA if not metadata.get(key)]
    try:
        if "model-index" in metadata:
            model_index_to_eval_results(metadata["model-index"])
        if ModelCardData(**metadata).to_dict() != metadata:
            problems.append(f"{path}: the front matter changes when huggingface_hub reads and writes it again")
    except (KeyError, TypeError, ValueError) as e:
        problems.append(f"{path}: the model-index does not parse into evaluation results: {e!r}")
    base_models = metadata.get("base_model") or []
    for base_model in [base_models] if isinstance(base_models, str) else base_models:
        try:
            validate_repo_id(base_model)
        except HFValidationError as e:
            problems.append(f"{path}: base_model {base_model!r} is not a Hub repo id: {e}")
    for link in re.findall(r"\]\(([^)\s]+)\)", card.text):
        if not re.match(r"^([a-z]+:|#|/)", link) and not (model_dir / link).is_file():
            problems.append(f"{path} links to {link}, which is not in {model_dir}")
    return problems


def _read_records(model_dir: Path) -> tuple[dict, dict, dict, dict]:
    """(config.json, metrics.json, training_config.yaml, run_info.json) of an export."""
    missing = [name for name in (CONFIG_FILE, METRICS_FILE, TRAINING_CONFIG_FILE, RUN_INFO_FILE) if not (model_dir / name).is_file()]
    if missing:
        raise ModelError(
            f"Cannot write the model card of {model_dir}: {', '.join(missing)} missing. "
            "Export the run with `python -m hf_transfer.export --run-dir RUN_DIR` to write them."
        )
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    metrics = json.loads((model_dir / METRICS_FILE).read_text())
    training = yaml.safe_load((model_dir / TRAINING_CONFIG_FILE).read_text())
    return config, metrics, training, read_run_info(model_dir)


def _eval_results(metrics: dict, data: dict) -> list[EvalResult]:
    """Accuracy and macro F1 on the validation (and test) split, as model-index entries."""
    results = []
    for key in ("val", "test"):
        if key not in metrics:
            continue
        split = data["splits"]["validation" if key == "val" else "test"]["split"]
        dataset = {
            "task_type": "image-classification",
            "task_name": "Image Classification",
            "dataset_type": data["id"] if data["source"] == "hub" else "imagefolder",
            "dataset_name": data["id"],
            "dataset_config": data.get("name"),
            "dataset_split": split,
            "dataset_revision": data.get("revision"),
        }
        results.append(EvalResult(**dataset, metric_type="accuracy", metric_name=f"{split} accuracy", metric_value=round(metrics[key]["accuracy"], 4)))
        results.append(
            EvalResult(**dataset, metric_type="f1", metric_name=f"{split} macro F1", metric_args={"average": "macro"}, metric_value=round(metrics[key]["f1_macro"], 4))
        )
    return results


def _summary(names: list[str], weights: dict, data: dict) -> str:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    start = "trained from random initialisation" if weights["kind"] == "scratch" else f"fine-tuned from {weights['description']}"
    return f"An image classifier for {len(names)} classes ({_cell(shown)}), {start}, on {_data_name(data)}, with hf_transfer."


def _data_name(data: dict) -> str:
    if data["source"] == "hub":
        return f"the Hub dataset [{data['id']}](https://huggingface.co/datasets/{data['id']})"
    return f"the local image folder `{data['id']}`"


def _data_sentence(data: dict) -> str:
    details = [f"configuration `{data['name']}`" if data.get("name") else "", f"revision `{data['revision']}`" if data.get("revision") else ""]
    extra = ", ".join(d for d in details if d)
    return (
        f"Trained on {_data_name(data)}{f' ({extra})' if extra else ''}, loaded with 🤗 datasets. "
        "The fingerprints identify the exact rows of each split."
    )


def _strategy_sentence(training: dict, weights: dict, head: Optional[dict]) -> str:
    model = training["model"]
    if weights["kind"] == "scratch":
        text = "Trained from scratch: every layer started from random initialisation."
    else:
        text = STRATEGIES.get(model["strategy"], f"Strategy `{model['strategy']}`.")
    head_text = (
        f" The head is an MLP (Linear → ReLU → Dropout {model['head_dropout']} → Linear, {head['hidden_dim']} hidden units)."
        if head
        else " The head is a new linear classifier."
    )
    return text + head_text


def _settings(training: dict, metrics: dict, info: dict, config: dict) -> list[tuple[str, str]]:
    """Hyperparameters, preprocessing and augmentation as (setting, value) rows."""
    model, train, augment = training["model"], training["train"], training["augment"]
    pretrained_cfg = config["pretrained_cfg"]
    optimizer = f"{train['optimizer']}, lr {train['lr']:g}, weight decay {train['weight_decay']:g}"
    if train["optimizer"] == "sgd":
        optimizer += f", momentum {train['momentum']:g} (Nesterov)"
    schedule = train["scheduler"] + (f", {train['warmup_epochs']:g} warm-up epochs" if train["warmup_epochs"] else "")
    if train["scheduler"] == "step":
        schedule += f", ×{train['step_gamma']:g} every {train['step_epochs']} epochs"
    epochs = f"{metrics['epochs_completed']} of {train['epochs']}"
    if metrics.get("stopped_early"):
        epochs += f" (early stopping after {train['early_stopping_patience']} epochs without improvement)"
    size = pretrained_cfg["input_size"]
    augmentations = [f"random resized crop, scale {augment['scale']}, ratio [{augment['ratio'][0]:.2f}, {augment['ratio'][1]:.2f}]"]
    augmentations += [f"{name} {augment[key]:g}" for key, name in (("hflip", "horizontal flip p"), ("vflip", "vertical flip p"), ("rotation", "rotation ±°"), ("random_erasing", "random erasing p")) if augment.get(key)]
    augmentations += [f"{name} {augment[key]}" for key, name in (("color_jitter", "colour jitter"), ("auto_augment", "auto-augment")) if augment.get(key)]
    hardware = info["hardware"]
    steps = train["grad_accum_steps"]
    accumulation = f", {steps} accumulation steps" if steps > 1 else ""
    return [
        ("architecture", f"`{config['architecture']}` (timm), {model['drop_path_rate']:g} drop path"),
        ("starting weights", _cell(info["weights"]["description"])),
        ("epochs", epochs),
        ("batch size", f"{train['batch_size']} (global){accumulation}"),
        ("optimizer", optimizer),
        ("learning-rate schedule", schedule),
        ("label smoothing", f"{train['label_smoothing']:g}"),
        ("gradient clipping", "none" if train["grad_clip"] is None else f"max norm {train['grad_clip']:g}"),
        ("model selection", f"best validation {metrics['best_metric']}"),
        ("input", f"{size[1]}×{size[2]} px, {pretrained_cfg['interpolation']} resize, crop_pct {pretrained_cfg.get('crop_pct')}, {pretrained_cfg.get('crop_mode', 'center')} crop"),
        ("normalisation", f"mean {_floats(pretrained_cfg['mean'])}, std {_floats(pretrained_cfg['std'])}"),
        ("augmentation", "; ".join(augmentations)),
        ("precision", PRECISIONS.get(hardware["mixed_precision"], hardware["mixed_precision"])),
        ("training time", f"{metrics['train_time_s']:.0f} s on {hardware['processes']} {hardware['device']} process{'es' if hardware['processes'] > 1 else ''}"),
    ]


def _weights_sentence(metrics: dict, checkpoint: Optional[dict]) -> str:
    if checkpoint and checkpoint["kind"] != "best":
        return (
            f"These weights are the {checkpoint['kind']} checkpoint ({_cell(checkpoint['name'])}, after epoch {checkpoint['epoch']}, "
            f"optimizer step {checkpoint['step']}); the best validation {metrics['best_metric']} was at epoch {metrics['best_epoch']}. "
            "Every score below is of these weights."
        )
    return (
        f"These weights are those of epoch {metrics['best_epoch']} of {metrics['epochs_completed']}, "
        f"the best validation {metrics['best_metric']}. Every score below is of these weights."
    )


def _result_row(split: str, scores: dict) -> list[str]:
    top5 = _percent(scores["top5_accuracy"]) if "top5_accuracy" in scores else "–"
    return [
        "validation" if split == "val" else "test",
        str(scores["num_samples"]),
        _percent(scores["accuracy"]),
        _percent(scores["balanced_accuracy"]),
        f"{scores['f1_macro']:.3f}",
        top5,
        f"{scores['loss']:.4f}",
    ]


def _per_class_rows(scores: dict) -> list[list[str]]:
    return [
        [_cell(name), f"{row['precision']:.2f}", f"{row['recall']:.2f}", f"{row['f1']:.2f}", str(row["support"])]
        for name, row in scores["per_class"].items()
    ]


def _limitations(names: list[str], metrics: dict, data: dict, config: dict, head: Optional[dict]) -> list[str]:
    val = metrics["val"]
    low, high = wilson_interval(val["accuracy"], val["num_samples"])
    size = config["pretrained_cfg"]["input_size"]
    weakest = [item for item in sorted(val["per_class"].items(), key=lambda item: item[1]["recall"]) if item[1]["recall"] < 1][:3]
    items = [
        f"It knows only these {len(names)} classes and gives every image one of them, also images of none of them; "
        "a low top probability is the sign of such an input.",
        f"It learned from {metrics['num_train']} images of {_data_name(data)}. Expect lower accuracy on images unlike "
        f"those (other cameras, lighting, backgrounds or framing); every input is resized to {size[1]}×{size[2]} pixels.",
        f"With {val['num_samples']} validation images, the 95 % interval of the validation accuracy is "
        f"{low:.1%} to {high:.1%} (Wilson score interval).",
    ]
    if weakest:
        items.append("The weakest classes on validation (recall): " + ", ".join(f"{_cell(name)} {row['recall']:.2f}" for name, row in weakest) + ".")
    if "test" in metrics:
        items.append("The validation split chose the epoch, so its score is slightly optimistic; the test split was scored once, with these weights.")
    else:
        items.append(
            "The validation split chose the epoch, so its score is slightly optimistic, and there is no separate test "
            "split: check the model on images of your own before relying on it."
        )
    if head:
        items.append("Only hf_transfer loads it (MLP head); timm and transformers need a model trained with the linear head.")
    return items


def _reproducibility(info: dict) -> list[tuple[str, str]]:
    data, weights = info["data"], info["weights"]
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items() if version)
    fingerprints = ", ".join(f"{role} `{split['fingerprint']}`" for role, split in data["splits"].items())
    source = f"Hub dataset `{data['id']}`" if data["source"] == "hub" else f"local folder `{data['id']}`"
    if data["source"] == "hub":
        source += f", configuration `{data.get('name')}`, revision `{data.get('revision') or 'main at training time'}`"
    starting = _cell(weights["description"]) + (f", sha256 `{weights['sha256']}`" if weights.get("sha256") else "")
    return [
        ("seed", str(info["seed"])),
        ("hf_transfer", info["hf_transfer_version"]),
        ("packages", packages),
        ("data", _cell(source)),
        ("dataset fingerprints", fingerprints),
        ("starting weights", starting),
        ("hardware", f"{info['hardware']['device']}, {info['hardware']['processes']} process(es)"),
        ("recorded", info["created"]),
    ]


def wilson_interval(proportion: float, count: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion measured on ``count`` samples (95 % for z = 1.96)."""
    if count == 0:
        return 0.0, 1.0
    denominator = 1 + z * z / count
    centre = (proportion + z * z / (2 * count)) / denominator
    spread = z * math.sqrt(proportion * (1 - proportion) / count + z * z / (4 * count * count)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _floats(values: Any) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
