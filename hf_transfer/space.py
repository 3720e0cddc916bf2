"""The folder pushed as a model's Gradio Space: ``space/app.py`` with hf_transfer's own code beside it,
requirements pinned to the installed versions, a README naming the model, and validation examples.

A Space cannot ``pip install`` hf_transfer: it is not on PyPI, and Spaces installs requirements.txt
before the repo's files are in place, so a local wheel or path would not resolve. The push therefore
copies this package next to ``app.py`` (``python app.py`` imports from its own folder first): the Space
runs the very prediction code that ``python -m hf_transfer.predict`` runs, and this repository keeps a
single copy of it.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

from huggingface_hub import SpaceCard

from .card import fill_repo_id
from .errors import PushError
from .examples import write_examples

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
TEMPLATE = PACKAGE.parent / "space"  # app.py, requirements.txt (names) and README.md of the demo
SDK = "gradio"


@contextmanager
def staged_space(model_dir: Path, model_id: str) -> Iterator[Path]:
    """A temporary folder holding the Space that serves the Hub model ``model_id`` exported in ``model_dir``."""
    with tempfile.TemporaryDirectory(prefix="hf_transfer-space-") as folder:
        build_space(model_dir, model_id, Path(folder))
        yield Path(folder)


def build_space(model_dir: Path, model_id: str, target: Path) -> None:
    """Write the Space into ``target``: app, pinned requirements, README, hf_transfer's code, examples."""
    missing = [name for name in ("app.py", "requirements.txt", "README.md") if not (TEMPLATE / name).is_file()]
    if missing:
        raise PushError(
            f"The demo files {', '.join(missing)} are missing from {TEMPLATE}: --space needs hf_transfer installed from "
            "its source folder (pip install -e .)."
        )
    shutil.copy2(TEMPLATE / "app.py", target / "app.py")
    (target / "requirements.txt").write_text(pinned_requirements(TEMPLATE / "requirements.txt"), encoding="utf-8")
    (target / "README.md").write_text(space_readme(TEMPLATE / "README.md", model_id), encoding="utf-8")
    shutil.copytree(PACKAGE, target / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    examples = write_examples(model_dir, target / "examples")
    logger.info("Space for %s: %d example images", model_id, len(examples))


def pinned_requirements(names: Path) -> str:
    """requirements.txt with each distribution listed in ``names`` pinned to its installed version."""
    lines = ["# The versions hf_transfer's demo was run and tested with (pinned by python -m hf_transfer.push)."]
    for line in names.read_text(encoding="utf-8").splitlines():
        name = line.split("#")[0].strip()
        if name:
            lines.append(f"{name}=={installed_version(name)}")
    return "\n".join(lines) + "\n"


def installed_version(name: str) -> str:
    """The installed version of distribution ``name`` as PyPI publishes it (a local build such as
    ``2.5.1+cpu`` is the release ``2.5.1``)."""
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        raise PushError(f"{name}, which the demo Space needs, is not installed here: pip install -e . first.") from None


def space_readme(template: Path, model_id: str) -> str:
    """The template's README with the front matter naming ``model_id`` (the model the app serves), the
    installed gradio as ``sdk_version`` and this Python as ``python_version``."""
    card = SpaceCard(fill_repo_id(template.read_text(encoding="utf-8"), model_id))
    card.data.models = [model_id]
    card.data.sdk_version = installed_version(SDK)
    card.data.python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    card.data.title = f"{model_id.split('/')[-1]} classifier"
    return str(card)
