"""``python -m hf_transfer.predict`` and the model loader, against plain timm on real images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image
from timm.data import create_transform, resolve_data_config

from hf_transfer.data import load_splits
from hf_transfer.errors import ModelError
from hf_transfer.loading import load_model
from hf_transfer.predict import main
from hf_transfer.training import train

from conftest import tiny_config, validation_images, write_imagefolder


def _timm_probabilities(folder: Path, images: list[Path], flip: bool = False) -> torch.Tensor:
    """What plain timm computes for the export, independently of hf_transfer's loader and transforms."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    pixels = torch.stack([transform(Image.open(path).convert("RGB")) for path in images])
    with torch.no_grad():
        probabilities = model(pixels).softmax(-1)
        if flip:
            probabilities = (probabilities + model(pixels.flip(-1)).softmax(-1)) / 2
    return probabilities


def test_json_output_ranks_the_classes_timm_ranks(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    images = validation_images(2)
    assert main(["--model", str(trained_run), *map(str, images), "--top-k", "3", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    expected = _timm_probabilities(trained_run, images)
    names = json.loads((trained_run / "config.json").read_text())["label_names"]
    assert [record["image"] for record in records] == [str(path) for path in images]
    for record, row in zip(records, expected):
        scores, indices = row.topk(3)
        assert [p["label"] for p in record["predictions"]] == [names[i] for i in indices]
        assert [p["score"] for p in record["predictions"]] == pytest.approx(scores.tolist(), abs=1e-5)
    assert len({record["predictions"][0]["label"] for record in records}) > 1  # a model that tells classes apart


def test_table_output_and_flip_tta_average_the_mirrored_view(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    images = validation_images(1)[:3]
    assert main(["--model", str(trained_run), *map(str, images), "--top-k", "1", "--tta", "flip"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0::2] == [str(path) for path in images]
    expected = _timm_probabilities(trained_run, images, flip=True)
    names = json.loads((trained_run / "config.json").read_text())["label_names"]
    for line, row in zip(lines[1::2], expected):
        rank, label, percent = line.split()
        assert (rank, label) == ("1", names[int(row.argmax())])
        assert float(percent.rstrip("%")) == pytest.approx(100 * float(row.max()), abs=0.01)


def test_bad_images_and_models_are_named_without_a_traceback(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = str(validation_images(1)[0])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((broken / "config.json").read_text())
    del config["label_names"]
    (broken / "config.json").write_text(json.dumps(config))
    cases = {
        ("--model", str(trained_run), str(tmp_path / "missing.jpg")): f"Image {tmp_path / 'missing.jpg'} does not exist",
        ("--model", str(trained_run), str(not_an_image)): f"Cannot read image {not_an_image}",
        ("--model", str(tmp_path / "nowhere" / "model"), image): "neither a local folder nor a Hub model repo id",
        ("--model", str(tmp_path), image): f"{tmp_path / 'config.json'} is missing",
        ("--model", str(broken), image): f"{broken / 'config.json'}: has no label_names",
        ("--model", str(trained_run), image, "--top-k", "0"): "--top-k must be at least 1",
    }
    for args, message in cases.items():
        assert main(list(args)) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)


def test_weights_that_do_not_fit_the_config_are_reported(trained_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(trained_run, folder, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "test_efficientnet"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"model.safetensors does not load into the 'test_efficientnet' model"):
        load_model(folder)


def test_mlp_head_model_loads_with_hf_transfer_only_and_its_card_reports_the_test_split(tmp_path: Path) -> None:
    data = write_imagefolder(tmp_path / "data", {split: {"dark": n, "mid": n, "light": n} for split, n in
                                                  (("train", 16), ("validation", 6), ("test", 6))})
    config = tiny_config(tmp_path, data__path=data, model__head="mlp", model__head_hidden_dim=32)
    results = train(config)
    folder = Path(config.output.dir)
    assert json.loads((folder / "config.json").read_text())["hf_transfer_head"]["hidden_dim"] == 32
    with pytest.raises(RuntimeError):  # timm builds its linear head, which the weights do not fit
        timm.create_model(f"local-dir:{folder}", pretrained=True)

    loaded = load_model(folder)
    test = load_splits(config.data, config.train.seed).test
    pixels = torch.stack([loaded.transform(row["image"].convert("RGB")) for row in test])
    with torch.no_grad():
        accuracy = (loaded.model(pixels).argmax(-1) == torch.tensor(test["label"])).float().mean().item()
    assert accuracy == pytest.approx(results["test"]["accuracy"], abs=1e-6)

    card = ModelCard.load(folder / "README.md")
    assert "Only hf_transfer loads it" in card.text
    assert 'create_model("hf-hub:' not in card.text and 'pipeline("image-classification"' not in card.text
    assert f"| test | 18 | {results['test']['accuracy']:.1%} |" in card.text
    scores = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert scores[("test", "accuracy")] == round(results["test"]["accuracy"], 4)
