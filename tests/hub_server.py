"""A Hugging Face Hub test double, speaking the HTTP protocol of the real ``huggingface_hub`` client.

Tests point ``HF_ENDPOINT`` (see the ``hub_env`` fixture in ``conftest.py``) at a :class:`HubServer` so that
push/download round-trips run offline through the unmodified client code of huggingface_hub, timm and
transformers, and of ``datasets`` (``load_dataset`` of a dataset repo, ``push_to_hub``). It serves only what
those clients call for whoami, repo creation, repo info, tree listings, commits (regular files inline, large
files through the basic LFS protocol), branches and file downloads; every other request is answered 404 and
recorded in :attr:`HubServer.unserved`, so a test can prove it did not rely on anything missing.

Metadata (repos, branches, commits) lives in memory; file contents are stored on disk under ``root``,
addressed by their git blob sha1, which is also what the Hub reports as a regular file's ``oid`` and ETag.
An LFS file is stored the same way once uploaded: the double keeps no pointer files, so its ``oid`` and
ETag are those of its content (the Hub's are the pointer's sha1 and the content's sha256); clients do not mind.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import posixpath
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
# Part of what the real Hub puts in the initial commit of every new repo: the files that go through LFS.
INITIAL_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 of ``content``: the client compares it with the preupload ``oid`` to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    """A timestamp in the one format ``huggingface_hub.utils.parse_datetime`` accepts."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An error answer. ``code`` goes into the ``X-Error-Code`` header, which the client maps to its
    own exception classes (``RepoNotFound`` -> RepositoryNotFoundError, ``EntryNotFound`` ->
    RemoteEntryNotFoundError, ``RevisionNotFound`` -> RevisionNotFoundError)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class Commit:
    oid: str
    title: str
    date: str
    files: dict[str, str]  # path in repo -> blob oid


@dataclass
class Repo:
    type: str  # "model", "dataset" or "space"
    id: str
    private: bool
    sdk: str | None
    created: str
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def url_prefix(self) -> str:
        """How web and resolve URLs name the repo: models bare, other types under ``datasets/``/``spaces/``."""
        return self.id if self.type == "model" else f"{self.type}s/{self.id}"

    def commit_at(self, revision: str) -> Commit:
        oid = self.branches.get(revision, revision)
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return self.commits[oid]


@dataclass
class Request:
    """A parsed request; ``args`` holds the unquoted named groups of the matched route."""

    user: str | None
    args: dict[str, str]
    query: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


Response = tuple[int, dict[str, str], bytes]


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


_REPO_API = r"/api/(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"
_REPO_WEB = r"/(?:(?P<type>dataset|space)s/)?(?P<repo>[^/]+/[^/]+?)"  # models bare, as in Repo.url_prefix
# (method, path regex, HubServer method name); HEAD is routed like GET.
ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", _REPO_API + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", _REPO_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    ("POST", _REPO_API + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", _REPO_API + r"/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", _REPO_API + r"/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", _REPO_API + r"/branch/(?P<rev>[^/]+)", "create_branch"),
    ("GET", _REPO_WEB + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("POST", _REPO_WEB + r"\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
]


class HubServer:
    """The Hub double: ``tokens`` maps each valid token to its user name; ``orgs`` maps an organization to
    its members, who may write in its namespace. Users write only to their own and their orgs' namespaces
    (403 elsewhere); private repos are visible to those writers only (404 to everyone else, as on the Hub).

    Use ``with HubServer(tmp_path, {"hf_token": "alice"}) as hub:`` or ``start()``/``stop()``;
    ``hub.url`` is the endpoint, bound to 127.0.0.1 on a free port.
    """

    def __init__(self, root: Path, tokens: Mapping[str, str], orgs: Mapping[str, Iterable[str]] | None = None):
        self.blobs = Path(root) / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens)
        self.orgs = {org: set(members) for org, members in (orgs or {}).items()}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status); never headers or tokens
        self.unserved: list[str] = []  # "METHOD path" of requests no route matched
        self.lfs: dict[str, str | None] = {}  # sha256 of each LFS object announced -> blob oid once uploaded
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        # A short poll interval keeps stop() quick: shutdown() waits for the serving loop to notice it.
        serve = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        serve.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def token_for(self, user: str) -> str:
        return next(token for token, name in self.tokens.items() if name == user)

    # -- request plumbing --------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: str, authorization: str | None, body: bytes) -> Response:
        """Route one request; called by the HTTP handler, one request at a time."""
        with self._lock:
            try:
                user = self._authenticate(authorization)
                query_args = {k: v[-1] for k, v in parse_qs(query).items()}
                for route_method, pattern, name in ROUTES:
                    match = re.fullmatch(pattern, path)
                    if match and route_method == ("GET" if method == "HEAD" else method):
                        args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        endpoint: Callable[[Request], Response] = getattr(self, name)
                        response = endpoint(Request(user, args, query_args, body))
                        break
                else:
                    self.unserved.append(f"{method} {path}")
                    raise HubError(404, f"{method} {path} is not served by the test Hub")
            except HubError as e:
                # HTTP headers are latin-1: escape what a path in a message might add.
                headers = {"X-Error-Message": e.message.encode("ascii", "backslashreplace").decode(), **e.headers}
                if e.code:
                    headers["X-Error-Code"] = e.code
                response = _json({"error": e.message}, e.status, headers)
            except Exception as e:  # a request the double cannot parse: say so to the client, not to stderr
                response = _json({"error": f"test Hub failure: {e!r}"}, 500)
            self.requests.append((method, path, response[0]))
            return response

    def _authenticate(self, authorization: str | None) -> str | None:
        """Anonymous without the header; like the Hub, a bad token is refused even where none is needed."""
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _repo(self, req: Request, write: bool = False) -> Repo:
        repo = self.repos.get((req.args.get("type", "model"), req.args["repo"]))
        namespace = req.args["repo"].split("/")[0]
        if repo is None or (repo.private and not self._can_write(req.user, namespace)):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if write and req.user is None:
            raise HubError(401, "You must be authenticated to write to a repository")
        if write and not self._can_write(req.user, namespace):
            raise HubError(403, f"You don't have the rights to write to {repo.type} {repo.id}")
        return repo

    # -- storage -----------------------------------------------------------------------------------------

    def _store(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        if not (self.blobs / oid).exists():
            (self.blobs / oid).write_bytes(content)
        return oid

    def _commit(self, repo: Repo, branch: str, title: str, files: dict[str, str]) -> Commit:
        """Record a commit on top of ``branch`` and move the branch to it; its oid hashes parent, title and tree."""
        parent = repo.branches.get(branch)
        oid = hashlib.sha1(json.dumps([parent, title, sorted(files.items())]).encode()).hexdigest()
        repo.commits[oid] = Commit(oid, title, _now(), files)
        repo.branches[branch] = oid
        return repo.commits[oid]

    def _entry(self, commit: Commit, path: str) -> dict | None:
        """The tree/paths-info entry of a file or folder, or None if ``path`` is neither."""
        if path in commit.files:
            oid = commit.files[path]
            return {"type": "file", "path": path, "oid": oid, "size": (self.blobs / oid).stat().st_size}
        inside = sorted((p, oid) for p, oid in commit.files.items() if p.startswith(path + "/"))
        if not inside:
            return None
        return {"type": "directory", "path": path, "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest()}

    # -- endpoints ---------------------------------------------------------------------------------------

    def whoami(self, req: Request) -> Response:
        if req.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": org} for org, members in sorted(self.orgs.items()) if req.user in members]
        auth = {"type": "access_token", "accessToken": {"displayName": "test token", "role": "write"}}
        user = {"type": "user", "id": req.user, "name": req.user, "fullname": req.user}
        return _json({**user, "orgs": orgs, "auth": auth})

    def create_repo(self, req: Request) -> Response:
        payload = req.json()
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or req.user
        if req.user is None:
            raise HubError(401, "You must be authenticated to create a repository")
        if not self._can_write(req.user, namespace):
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace!r}")
        if repo_type == "space" and payload.get("sdk") not in SPACE_SDKS:
            raise HubError(400, f"A space needs an sdk among {SPACE_SDKS}")
        repo_id = f"{namespace}/{payload['name']}"
        if existing := self.repos.get((repo_type, repo_id)):
            message = f"You already created this {repo_type} repo"
            return _json({"error": message, "url": f"{self.url}/{existing.url_prefix}"}, 409)
        repo = Repo(repo_type, repo_id, payload.get("visibility") == "private", payload.get("sdk"), _now())
        self.repos[(repo_type, repo_id)] = repo
        self._commit(repo, "main", "initial commit", {".gitattributes": self._store(INITIAL_GITATTRIBUTES)})
        return _json({"url": f"{self.url}/{repo.url_prefix}", "name": repo_id, "id": repo_id})

    def validate_yaml(self, req: Request) -> Response:
        """README.md metadata is accepted as it is: the double does not parse YAML."""
        return _json({"errors": [], "warnings": []})

    def repo_info(self, req: Request) -> Response:
        repo = self._repo(req)
        commit = repo.commit_at(req.args.get("rev", "main"))
        entries = [self._entry(commit, path) for path in sorted(commit.files)]
        siblings = [{"rfilename": e["path"], "size": e["size"], "blobId": e["oid"]} for e in entries]
        info = {"id": repo.id, "author": repo.id.split("/")[0], "sha": commit.oid, "private": repo.private,
                "disabled": False, "gated": False, "createdAt": repo.created, "lastModified": commit.date,
                "tags": [], "siblings": siblings}
        if repo.type == "space":
            info["sdk"] = repo.sdk
        return _json(info)

    def tree(self, req: Request) -> Response:
        """One page listing a folder (the root by default), recursively when ``recursive=true``."""
        commit = self._repo(req).commit_at(req.args["rev"])
        folder = req.args.get("path", "").strip("/")
        recursive = req.query.get("recursive", "false").lower() in ("true", "1")
        if folder and (self._entry(commit, folder) or {}).get("type") != "directory":
            raise HubError(404, f"{folder} is not a folder", code="EntryNotFound")
        prefix = f"{folder}/" if folder else ""
        paths = set()  # the files and the folders on the way to them, down to the requested depth
        for path in commit.files:
            if path.startswith(prefix):
                parts = path[len(prefix):].split("/")
                depth = len(parts) if recursive else 1
                paths.update(prefix + "/".join(parts[:i]) for i in range(1, depth + 1))
        return _json([self._entry(commit, path) for path in sorted(paths)])

    def paths_info(self, req: Request) -> Response:
        """Entries of the requested paths that exist; the client sends them form-encoded."""
        commit = self._repo(req).commit_at(req.args["rev"])
        paths = parse_qs(req.body.decode()).get("paths", [])
        return _json([entry for path in paths if (entry := self._entry(commit, path.strip("/")))])

    def preupload(self, req: Request) -> Response:
        """As on the Hub, a file matching a ``filter=lfs`` pattern of the revision's .gitattributes is "lfs"
        (uploaded beforehand, see :meth:`lfs_batch`); any other is "regular": its content comes inline in the
        commit. The ``oid`` of each existing path (sha256 for LFS, git sha1 otherwise) lets the client drop
        unchanged files from the commit."""
        repo = self._repo(req, write=True)
        commit = repo.commit_at(req.args["rev"])
        attributes = commit.files.get(".gitattributes")
        lines = (self.blobs / attributes).read_text().splitlines() if attributes else []
        patterns = [words[0] for words in map(str.split, lines) if "filter=lfs" in words[1:]]

        def upload_mode(path: str) -> dict:
            # A pattern without "/" matches the file name at any depth, as in git.
            names = [path if "/" in pattern else posixpath.basename(path) for pattern in patterns]
            oid = commit.files.get(path)
            if not any(map(fnmatch.fnmatchcase, names, patterns)):
                return {"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid}
            sha256 = oid and hashlib.sha256((self.blobs / oid).read_bytes()).hexdigest()
            return {"path": path, "uploadMode": "lfs", "shouldIgnore": False, "oid": sha256}

        files = [upload_mode(f["path"]) for f in req.json()["files"]]
        return _json({"files": files, "commitOid": commit.oid})

    def lfs_batch(self, req: Request) -> Response:
        """The LFS batch API (basic transfer): an upload action for each object not stored yet. Its URL, like
        the Hub's pre-signed storage URLs, needs no token; it takes only the content announced here."""
        self._repo(req, write=True)
        objects = []
        for obj in req.json()["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if self.lfs.get(obj["oid"]) is None:
                self.lfs[obj["oid"]] = None
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_upload(self, req: Request) -> Response:
        oid = req.args["oid"]
        if oid not in self.lfs:
            raise HubError(403, "No LFS upload was requested for this object")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, "The uploaded content does not match its sha256")
        self.lfs[oid] = self._store(req.body)
        return 200, {}, b""

    def commit(self, req: Request) -> Response:
        """Apply an NDJSON commit: a ``header`` line, then ``file`` (base64), ``lfsFile`` (sha256 of an
        uploaded object), ``deletedFile`` and ``deletedFolder`` lines; the branch named by the revision moves
        to the new commit."""
        repo = self._repo(req, write=True)
        branch = req.args["rev"]
        if req.query.get("create_pr"):
            raise HubError(400, "The test Hub does not support pull requests")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch} is not a branch", code="RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        files, title = dict(head.files), ""
        for line in req.body.splitlines():
            op = json.loads(line)
            key, value = op["key"], op["value"]
            if key == "header":
                title = value["summary"]
                if value.get("parentCommit") not in (None, head.oid):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = self._store(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                if not self.lfs.get(value["oid"]):
                    raise HubError(400, f"The LFS object of {value['path']} was not uploaded")
                files[value["path"]] = self.lfs[value["oid"]]
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", code="EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                doomed = [path for path in files if path.startswith(folder)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {folder}", code="EntryNotFound")
                for path in doomed:
                    del files[path]
            else:
                raise HubError(400, f"The test Hub does not support {key!r} commit operations")
        commit = self._commit(repo, branch, title, files)
        return _json({"success": True, "commitOid": commit.oid, "commitMessage": title, "hookOutput": "",
                      "commitUrl": f"{self.url}/{repo.url_prefix}/commit/{commit.oid}", "pullRequestUrl": None})

    def create_branch(self, req: Request) -> Response:
        repo = self._repo(req, write=True)
        branch = req.args["rev"]
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: {branch}")
        repo.branches[branch] = repo.commit_at(req.json().get("startingPoint") or "main").oid
        return _json({})

    def resolve(self, req: Request) -> Response:
        """A file download. ``X-Repo-Commit`` and ``ETag`` are what ``hf_hub_download`` keys its cache on
        (snapshot folder and blob name); a 404 still carries ``X-Repo-Commit`` so the miss gets cached too."""
        commit = self._repo(req).commit_at(req.args["rev"])
        oid = commit.files.get(req.args["path"])
        if oid is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{oid}"', "X-Repo-Commit": commit.oid}
        return 200, headers, (self.blobs / oid).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing around :meth:`HubServer.handle`."""

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        status, headers, payload = hub.handle(method, url.path, url.query, self.headers.get("Authorization"), body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: requests are recorded in ``HubServer.requests``, and nothing prints headers or tokens."""
