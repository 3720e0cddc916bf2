"""The Gradio page of a model, served by ``space/app.py`` locally and on Hugging Face Spaces.

An image goes in (upload, paste or webcam), the top-k classes come out in a ``gr.Label``, beside the
model's facts and example images from its validation data. Prediction is the predict command's own
(:func:`hf_transfer.predict.predict_images` on the uploaded file: same decoding, eval transform and TTA),
so the page and ``python -m hf_transfer.predict`` give the same numbers. Input that cannot be used becomes
a message on the page; requests wait in Gradio's queue.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import gradio as gr
from accelerate import PartialState
from gradio.data_classes import ImageData
from huggingface_hub import constants, metadata_load
from PIL import Image

from .cli import run_command
from .errors import DataError, ModelError
from .examples import write_examples
from .loading import CONFIG_FILE, LoadedModel, load_model
from .outputs import METRICS_FILE
from .predict import predict_images
from .tta import TTA_MODES

logger = logging.getLogger(__name__)

CONCURRENCY = 1  # predictions at a time: on a CPU one forward already uses every core
QUEUE_SIZE = 64  # waiting requests beyond this are told the queue is full
MAX_FILE_SIZE = "25mb"  # larger uploads are refused by Gradio before they reach the model
SPACE_PORT = 7860
NO_IMAGE = "No image yet: upload one, paste one or take a photo, then press Classify."


def image_input() -> gr.Image:
    """Gradio's image input (upload, paste, webcam), which hands the uploaded file to the prediction as it
    is; uploads that PIL cannot even open (not an image, a decompression bomb) become a message for the user
    instead of a server error. (Wrapping this instance's ``preprocess`` rather than subclassing: Gradio
    writes a ``.pyi`` file beside any module that defines a component class.)"""
    image = gr.Image(
        type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"], label="Image", height=320
    )
    preprocess = image.preprocess

    def friendly_preprocess(payload: Optional[ImageData]) -> Optional[str]:
        try:
            return preprocess(payload)
        except Image.DecompressionBombError as e:
            raise gr.Error(f"{payload.orig_name or 'This image'} is too large to open safely: {e}", print_exception=False) from None
        except (OSError, ValueError, SyntaxError):
            raise gr.Error(
                f"{payload.orig_name or 'This file'} is not an image that can be read. Give a JPEG, PNG, WebP, GIF, "
                "BMP or TIFF file.",
                print_exception=False,
            ) from None

    image.preprocess = friendly_preprocess
    return image


def make_classifier(loaded: LoadedModel) -> Callable[[Optional[str], float, str], dict[str, float]]:
    """The page's prediction function: image file, top-k and TTA mode -> ``{label: probability}``."""

    def classify(image: Optional[str], top_k: float, tta: str) -> dict[str, float]:
        if image is None:
            raise gr.Error(NO_IMAGE, print_exception=False)
        try:
            [prediction] = predict_images(loaded, [Path(image)], int(top_k), tta)
        except DataError as e:  # unreadable or too large: say so with the file's name, not the server's path
            raise gr.Error(str(e).replace(image, Path(image).name), print_exception=False) from None
        return dict(zip(prediction.labels, prediction.scores))

    return classify


def facts_markdown(loaded: LoadedModel, source: str) -> str:
    """Architecture, input size, classes, validation (and test) metrics and where the model card is."""
    config = json.loads((loaded.folder / CONFIG_FILE).read_text(encoding="utf-8"))
    height, width = loaded.input_config["input_size"][1:]
    names = loaded.label_names
    lines = [
        f"**Architecture** `{config['architecture']}`, input {width}×{height} px",
        f"**{len(names)} classes**: {', '.join(names)}",
    ]
    metrics_path = loaded.folder / METRICS_FILE
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    for split, title in (("val", "Validation"), ("test", "Test")):
        if split in metrics:
            lines.append(f"**{title}** ({metrics[split]['num_samples']} images): {_scores(metrics[split])}")
    lines.append(f"**Model card**: {_card_link(source, loaded.folder)}")
    return "  \n".join(lines)


def _scores(scores: dict) -> str:
    named = (("accuracy", "accuracy"), ("f1_macro", "macro-F1"), ("top5_accuracy", "top-5 accuracy"))
    return ", ".join(f"{title} {scores[key]:.1%}" for key, title in named if key in scores)


def _card_link(source: str, folder: Path) -> str:
    if Path(source).expanduser().is_dir():
        return f"`{folder.resolve() / 'README.md'}`"
    repo, _, revision = source.removeprefix("hf-hub:").partition("@")
    url = f"{constants.ENDPOINT}/{repo}" + (f"/tree/{revision}" if revision else "")
    return f"[{repo}]({url})"


def build_demo(loaded: LoadedModel, source: str, examples: Sequence[Path] = ()) -> gr.Blocks:
    """The page for ``loaded`` (read from ``source``), with ``examples`` to click; the prediction endpoint is
    ``/predict`` (image, top_k, tta) for ``gradio_client``."""
    classify = make_classifier(loaded)
    count = len(loaded.label_names)
    title = f"{Path(source).name or source} image classifier"
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nUpload, paste or take a photo, then press **Classify**.")
        with gr.Row():
            with gr.Column():
                image = image_input()
                top_k = gr.Slider(1, count, value=min(5, count), step=1, label="Classes to show")
                tta = gr.Radio(
                    list(TTA_MODES), value="none", label="Test-time augmentation",
                    info="flip: average with the mirror image; flip_zoom: also a centre zoom (slower)",
                )
                button = gr.Button("Classify", variant="primary")
            with gr.Column():
                label = gr.Label(label="Prediction")
                gr.Markdown(facts_markdown(loaded, source))
        button.click(classify, [image, top_k, tta], label, api_name="predict")
        if examples:
            classes = ", ".join(path.stem.partition("-")[2] for path in examples)  # files are NN-<class>.<ext>
            shown = gr.Examples([[str(path)] for path in examples], inputs=[image], label=f"Validation images: {classes}")
            shown.load_input_event.then(classify, [image, top_k, tta], label, api_visibility="undocumented")
    return demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)


def model_source(given: Optional[str], space_dir: Path) -> str:
    """What to serve: ``--model``, else ``MODEL_ID``, else the first of ``models`` in the Space's README.md."""
    readme = space_dir / "README.md"
    models = metadata_load(readme).get("models") if readme.is_file() else None
    source = given or os.environ.get("MODEL_ID") or (models[0] if models else None)
    if not source:
        raise ModelError(
            "No model to serve: give --model with an export folder or a Hub repo id (OWNER/NAME), or set MODEL_ID. "
            "A Space pushed with `python -m hf_transfer.push --space` names its model in README.md."
        )
    return source


def demo_examples(loaded: LoadedModel, space_dir: Path, scratch: Path) -> list[Path]:
    """The Space's ``examples/`` when it has them (written by the push), else examples from the validation
    data of a local export, written into ``scratch``."""
    shipped = sorted(path for path in (space_dir / "examples").glob("*") if path.is_file())
    return shipped or write_examples(loaded.folder, scratch)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    on_space = "SPACE_ID" in os.environ or os.environ.get("SYSTEM") == "spaces"
    parser = argparse.ArgumentParser(
        prog="python app.py", description="Serve the Gradio demo of a model exported by hf_transfer."
    )
    parser.add_argument("--model", help="export folder, or Hub repo id OWNER/NAME[@REVISION] [MODEL_ID, or README.md]")
    parser.add_argument("--host", default="0.0.0.0" if on_space else "127.0.0.1", help="[127.0.0.1; 0.0.0.0 on Spaces]")
    parser.add_argument("--port", type=int, default=SPACE_PORT, help=f"[{SPACE_PORT}]")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, space_dir: Path = Path(".")) -> int:
    """Entry point of ``app.py`` in ``space_dir``: load the model, build the page, serve it until stopped."""

    def command() -> None:
        args = parse_args(argv)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself are noise
        source = model_source(args.model, space_dir)
        loaded = load_model(source, PartialState().device)
        scratch = tempfile.TemporaryDirectory(prefix="hf_transfer-examples-")  # removed when the server stops
        examples = demo_examples(loaded, space_dir, Path(scratch.name))
        logger.info(
            "Serving %s (%d classes, %d examples) with hf_transfer from %s", source, len(loaded.label_names),
            len(examples), Path(__file__).resolve().parent,
        )
        demo = build_demo(loaded, source, examples)
        folders = sorted({str(path.parent) for path in examples})
        demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_SIZE, allowed_paths=folders)

    return run_command(command)
