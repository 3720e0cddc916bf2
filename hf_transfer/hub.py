"""Publishing a folder to the Hugging Face Hub in one commit, with errors a user can act on.

Nothing here is specific to models: the model push (``push.py``) targets ``HubTarget(id, "model")``, the
demo push a ``"space"`` with its SDK. The token stays inside huggingface_hub (``HF_TOKEN`` or the stored
login): this module only asks whether there is one, and never prints, logs or stores it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

import httpx2
from huggingface_hub import HfApi, constants, get_token, parse_hf_uri
from huggingface_hub.errors import HfHubHTTPError, HfUriError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from .errors import PushError

logger = logging.getLogger(__name__)

# Never published: resumable training state, tracker logs, and hidden or temporary files (atomic writes).
IGNORE_PATTERNS = ["checkpoints/*", "tensorboard/*", ".*", "*/.*", "*.tmp*", "__pycache__/*", "*.pyc"]


@dataclass(frozen=True)
class HubTarget:
    """A repo on the Hub at the configured endpoint (``HF_ENDPOINT``)."""

    repo_id: str
    repo_type: str  # model, dataset or space

    @property
    def url(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{constants.ENDPOINT}/{prefix}{self.repo_id}"

    def __str__(self) -> str:
        return f"{self.repo_type} repo {self.repo_id}"


def parse_target(repo_id: str, repo_type: str, option: str = "--repo-id") -> HubTarget:
    """The repo named by ``repo_id`` (``OWNER/NAME``, a ``hf://`` URI or a Hub URL), which must be a ``repo_type``;
    a bare ``OWNER/NAME`` is taken as a ``repo_type`` repo. ``option`` names the argument in errors."""
    text = repo_id
    if not text.startswith(("hf://", "http://", "https://")):
        bare = text.count("/") == 1 and repo_type != "model"
        text = f"hf://{repo_type}s/{text}" if bare else f"hf://{text}"
    try:
        uri = parse_hf_uri(text, endpoint=constants.ENDPOINT)
    except HfUriError as e:
        raise PushError(f"{option} {repo_id!r} is not a repo id like USER/NAME: {e.msg}") from None
    if uri.type != repo_type:
        raise PushError(
            f"{option} {repo_id!r} names a {uri.type} repo, but this pushes a {repo_type}: "
            f"use {option} {uri.id} for a {repo_type} repo of that name."
        )
    if uri.revision is not None or uri.path_in_repo:
        raise PushError(f"{option} {repo_id!r} must be just USER/NAME; choose a branch with --revision.")
    return HubTarget(uri.id, repo_type)


def files_to_upload(folder: Path) -> list[tuple[str, int]]:
    """(path in the repo, size in bytes) of each file ``upload_folder`` sends, chosen by the filter it applies."""
    paths = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    chosen = filter_repo_objects(paths, ignore_patterns=[*IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS])
    return [(path, (folder / path).stat().st_size) for path in chosen]


@contextmanager
def staged_folder(folder: Path, replaced: Mapping[str, bytes]) -> Iterator[Path]:
    """A hidden folder inside ``folder`` with the files to upload (hard links, or copies where links fail)
    and the ``replaced`` files with other content: what to upload without touching the user's files."""
    staging = folder / f".push-{secrets.token_hex(4)}"
    try:
        for path, _ in files_to_upload(folder):
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            if path not in replaced:
                _link_or_copy(folder / path, staging / path)
        for path, content in replaced.items():
            (staging / path).write_bytes(content)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


def token_source() -> Optional[str]:
    """Where huggingface_hub will take the token from (``HF_TOKEN`` or the stored login), or None."""
    if get_token() is None:
        return None
    return "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the stored login"


def upload(
    folder: Path,
    target: HubTarget,
    commit_message: str,
    private: bool = False,
    revision: Optional[str] = None,
    space_sdk: Optional[str] = None,
) -> str:
    """Create ``target`` if needed (a Space with ``space_sdk``) and upload ``folder`` (minus
    :data:`IGNORE_PATTERNS`) in one commit; return the URL of what was pushed."""
    source = token_source()
    if source is None:
        raise PushError(
            f"Not logged in to the Hugging Face Hub ({constants.ENDPOINT}): run `hf auth login`, or set HF_TOKEN "
            "to a token with write access (https://huggingface.co/settings/tokens)."
        )
    api = HfApi()
    with hub_errors(target, f"the token from {source}"):
        user = api.whoami()["name"]
    logger.info("Pushing %d files to %s as %s (token from %s)", len(files_to_upload(folder)), target.url, user, source)
    with hub_errors(target, f"user {user} (token from {source})"):
        api.create_repo(
            target.repo_id, repo_type=target.repo_type, private=private or None, exist_ok=True, space_sdk=space_sdk
        )
        info = api.repo_info(target.repo_id, repo_type=target.repo_type) if private or space_sdk else None
        if private and not info.private:
            raise PushError(
                f"{target} already exists and is public; --private does not change an existing repo. Make it "
                f"private in its settings on {target.url} first, or push without --private."
            )
        if space_sdk and info.sdk != space_sdk:  # info is the SpaceInfo
            raise PushError(
                f"{target} already exists as a {info.sdk} Space, and this pushes a {space_sdk} app. Push to another "
                f"Space name, or switch its SDK in its settings on {target.url} first."
            )
        if revision:
            api.create_branch(target.repo_id, repo_type=target.repo_type, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=target.repo_id,
            repo_type=target.repo_type,
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    logger.info("Commit %s", commit.oid)
    return f"{target.url}/tree/{revision}" if revision else target.url


@contextmanager
def hub_errors(target: HubTarget, who: str) -> Iterator[None]:
    """Turn huggingface_hub's failures into :class:`PushError` messages that say what to do; ``who`` names
    the credentials in use (never the token itself)."""
    try:
        yield
    except OfflineModeIsEnabled:
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be pushed: unset it (or use --dry-run).") from None
    except httpx2.TransportError as e:
        raise PushError(
            f"Cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: {e}). Check the network and proxy "
            "settings, or HF_ENDPOINT if you use a mirror."
        ) from None
    except RepositoryNotFoundError:
        raise PushError(f"{target} was not found on {constants.ENDPOINT}, or {who} cannot see it.") from None
    except HfHubHTTPError as e:
        status = e.response.status_code
        detail = e.server_message or str(e).splitlines()[0]
        if status == 401:
            raise PushError(
                f"The Hub at {constants.ENDPOINT} rejected {who} ({detail}): log in again with `hf auth login`, "
                "or set HF_TOKEN to a valid token with write access."
            ) from None
        if status == 403:
            raise PushError(
                f"No permission: {who} may not write to {target} ({detail}). Push to a repo under your own user "
                "name or an organization you belong to, or use a token with write access to it."
            ) from None
        raise PushError(f"The Hub at {constants.ENDPOINT} refused the push to {target}: HTTP {status}: {detail}") from None
