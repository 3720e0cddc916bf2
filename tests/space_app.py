"""A Space's ``app.py`` running in its own process on a free 127.0.0.1 port, as ``python app.py`` runs it
on Spaces: started, waited for until it answers, stopped (SIGTERM, then SIGKILL) with its log kept.

Used by the Space tests and by ``benchmarks/space_latency.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Optional, Sequence

# No analytics or update checks (the machine may be offline), no proxy for the local server.
QUIET = {"GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def environment(changes: Mapping[str, Optional[str]]) -> dict[str, str]:
    """This process's environment with :data:`QUIET` and ``changes`` (a value of None removes the variable)."""
    merged = {**os.environ, **QUIET, **changes}
    return {name: value for name, value in merged.items() if value is not None}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppProcess:
    """``python APP ARGS --host 127.0.0.1 --port P`` run in ``cwd`` (default: ``app``'s folder, as on Spaces),
    with ``env`` added to this process's environment (a value of None removes the variable); output goes
    to ``log``."""

    def __init__(
        self, app: Path, args: Sequence[str], env: Mapping[str, Optional[str]], log: Path, cwd: Optional[Path] = None
    ) -> None:
        self.log, self.cwd = log, cwd or app.parent
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, str(app), *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = environment(env)
        self.process: Optional[subprocess.Popen] = None

    def __enter__(self) -> "AppProcess":
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            self.wait_until_up(timeout=180)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                with opener.open(f"{self.url}/gradio_api/info", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise TimeoutError(f"{self.command} did not answer within {timeout:.0f} s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""
