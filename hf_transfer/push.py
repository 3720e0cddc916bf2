"""``python -m hf_transfer.push --model-dir DIR --repo-id USER/NAME``: publish an exported model as a Hub model repo.

The folder is checked before anything goes over the network (config.json describes a model, the weights
file reads, the card parses and links only to files that are there); the pushed card's usage snippets
name the repo, and the folder goes up in one commit without checkpoints or temporary files.
``--dry-run`` shows what would be pushed without any network access. ``--space USER/NAME`` also creates or
updates the model's Gradio demo Space (see :mod:`hf_transfer.space`), built before anything is pushed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from huggingface_hub import ModelCard
from safetensors import SafetensorError, safe_open

from .card import CARD_FILE, card_problems, fill_repo_id
from .cli import run_command
from .errors import ModelError, PushError
from .hub import HubTarget, files_to_upload, hub_errors, parse_target, staged_folder, token_source, upload
from .space import SDK, staged_space
from .loading import WEIGHTS_FILE, read_model_config

logger = logging.getLogger(__name__)


def check_model_dir(model_dir: Path) -> None:
    """Raise :class:`PushError` naming the file when ``model_dir`` is not a complete, loadable model repo."""
    if not model_dir.is_dir():
        raise PushError(f"--model-dir {model_dir} is not a folder. Give the output.dir of a run, or an export folder.")
    try:
        read_model_config(model_dir)
    except ModelError as e:
        raise PushError(str(e)) from None
    try:
        with safe_open(str(model_dir / WEIGHTS_FILE), "pt") as weights:
            if not list(weights.keys()):
                raise PushError(f"{model_dir / WEIGHTS_FILE} holds no tensors; re-export the run.")
    except (SafetensorError, OSError) as e:
        raise PushError(f"{model_dir / WEIGHTS_FILE} is not a readable safetensors file ({e}); re-export the run.") from None
    problems = card_problems(model_dir)
    if problems:
        raise PushError("The model card is not valid:\n  " + "\n  ".join(problems))


def card_for(model_dir: Path, target: HubTarget) -> str:
    """The card as it will be pushed: its usage snippets name ``target``."""
    return fill_repo_id((model_dir / CARD_FILE).read_text(encoding="utf-8"), target.repo_id)


def push_model(
    model_dir: Path,
    repo_id: str,
    private: bool = False,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
) -> str:
    """Check ``model_dir``, create the model repo if needed and upload the folder in one commit, its card's
    usage snippets naming ``repo_id`` (the local card keeps its placeholder); return the URL."""
    target = parse_target(repo_id, "model")
    check_model_dir(model_dir)
    card = card_for(model_dir, target)
    with hub_errors(target, "the card check (sent without a token)"):
        _validate_on_hub(card)
    message = commit_message or f"Upload {ModelCard(card).data.get('model_name') or model_dir.name} (hf_transfer)"
    with staged_folder(model_dir, {CARD_FILE: card.encode("utf-8")}) as folder:
        return upload(folder, target, message, private=private, revision=revision)


def push_space(
    model_dir: Path, repo_id: str, space_id: str, private: bool = False, commit_message: Optional[str] = None
) -> tuple[str, str]:
    """Push the model (as :func:`push_model`, to main), then the Gradio Space ``space_id`` that serves it; the
    Space is built first, so a failure there pushes nothing. Return both URLs."""
    model = parse_target(repo_id, "model")
    space = parse_target(space_id, "space", "--space")
    check_model_dir(model_dir)
    with staged_space(model_dir, model.repo_id) as folder:
        model_url = push_model(model_dir, repo_id, private, None, commit_message)
        message = commit_message or f"Demo of {model.repo_id} (hf_transfer)"
        return model_url, upload(folder, space, message, private=private, space_sdk=SDK)


def dry_run(model_dir: Path, repo_id: str, space_id: Optional[str] = None) -> str:
    """What :func:`push_model` (and :func:`push_space`) would do, as text: targets, files and sizes,
    credentials, and the cards."""
    target = parse_target(repo_id, "model")
    space = parse_target(space_id, "space", "--space") if space_id else None
    check_model_dir(model_dir)
    lines = _listing(model_dir, target)
    source = token_source()
    lines.append(f"Token: from {source} (not shown)" if source else "Token: none found; run `hf auth login` or set HF_TOKEN before pushing")
    lines += ["", f"{CARD_FILE} as it would be pushed:", "", card_for(model_dir, target)]
    if space is not None:
        with staged_space(model_dir, target.repo_id) as folder:
            lines += ["", *_listing(folder, space), "", f"The Space's {CARD_FILE}:", "", (folder / CARD_FILE).read_text()]
    return "\n".join(lines)


def _listing(folder: Path, target: HubTarget) -> list[str]:
    files = files_to_upload(folder)
    width = max(len(path) for path, _ in files)
    lines = [f"Dry run: would push {len(files)} files ({_size(sum(size for _, size in files))}) to {target.url} in one commit:"]
    return lines + [f"  {path:<{width}}  {_size(size):>9}" for path, size in files]


def _validate_on_hub(card: str) -> None:
    """The Hub's own check of the card metadata (``ModelCard.validate``), before anything is created."""
    try:
        ModelCard(card).validate()
    except ValueError as e:
        raise PushError(f"The Hub rejected the metadata of {CARD_FILE}: {e}") from None


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB"):
        if count < 1000:
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hf_transfer.push",
        description="Publish an exported model folder (the output.dir of a run) to the Hugging Face Hub. The token "
        "comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="the exported model folder")
    parser.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME; created if it does not exist")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to push to (created from main if needed) [main]")
    parser.add_argument("--commit-message", help="[Upload <model name> (hf_transfer)]")
    parser.add_argument(
        "--space", metavar="USER/NAME", help="also create or update this Gradio Space demoing the model (it serves main)"
    )
    parser.add_argument("--dry-run", action="store_true", help="check and list what would be pushed, without network")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; 0 on success, 2 on a user error (printed without a traceback)."""

    def command() -> None:
        args = parse_args(argv)
        model_dir = args.model_dir.expanduser()
        if args.space and args.revision:
            raise PushError(
                f"--space with --revision: a Space serves its model's main branch. Push without --revision, or set "
                f"the Space's MODEL_ID variable to {args.repo_id}@{args.revision} in its settings."
            )
        if args.dry_run:
            print(dry_run(model_dir, args.repo_id, args.space))
            return
        if not args.space:
            url = push_model(model_dir, args.repo_id, args.private, args.revision, args.commit_message)
            print(f"Pushed {model_dir} to {url}")
            return
        url, space_url = push_space(model_dir, args.repo_id, args.space, args.private, args.commit_message)
        print(f"Pushed {model_dir} to {url}\nPushed its demo Space to {space_url}")
        if args.private:
            print("The model is private: add a read token as the secret HF_TOKEN in the Space's settings.")

    return run_command(command)


if __name__ == "__main__":
    raise SystemExit(main())
