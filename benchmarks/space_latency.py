"""Latency of one image through the demo app against a bare timm forward of the same model, in one run.

    python benchmarks/space_latency.py --model outputs/quickstart [--image PATH] [--runs 100] [--threads 1]

Five ways to classify the same image file:

- ``forward``: ``model(pixels)`` of the timm model, the pixels prepared once;
- ``timm transform + forward`` (the reference): what a bare timm script pays per image: PIL open, RGB,
  timm's eval transform, forward, softmax, top-k;
- ``app function``: the page's prediction function in this process (hf_transfer's predict: decoding as
  training did, the same transform, forward, softmax, top-k);
- ``app over HTTP``: ``python space/app.py`` running in its own process, called through Gradio's HTTP
  API as the browser calls it: upload, ``/gradio_api/call/predict``, the result read from the event
  stream (a kept-alive connection);
- ``app via gradio_client``: the same app through ``gradio_client.Client.predict``, which polls for
  each message of the stream every 50 ms and so adds its own wait.

Made for a small, shared machine: every round runs each case once, the order rotating from round to
round (each case goes first, second, ... equally often) with a short pause between calls, so that load
from other work and the after-effects of one case (the app's process finishing its answer, the client's
threads) fall on all cases alike. The overheads are ratios to the reference measured in the same rounds:
the ratio of the p50s, and the median over rounds of the per-round ratio (each round's call against the
reference call of that same round). Writes ``benchmarks/results/space_latency.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import psutil
import timm
import torch
from gradio_client import Client, handle_file
from PIL import Image
from timm.data import create_transform, resolve_data_config

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's hf_transfer, and the tests' app runner
from hf_transfer.demo import make_classifier  # noqa: E402
from hf_transfer.loading import load_model  # noqa: E402
from space_app import AppProcess  # noqa: E402  (the same way the tests start the app)

DEFAULT_IMAGE = REPO / "data" / "fashion-mnist-mini" / "validation" / "Sneaker"
RESULTS = REPO / "benchmarks" / "results"
REFERENCE = "timm transform + forward"
TOP_K = 5
PAUSE_S = 0.02  # between two calls: lets the app process and the client's threads go quiet


def bare_timm(model_dir: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[Path], object]]:
    """(forward of prepared pixels, transform + forward of a file) with plain timm and torch."""
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))

    def transform_forward(image: Path) -> object:
        with torch.no_grad():
            return model(transform(Image.open(image).convert("RGB")).unsqueeze(0)).softmax(-1).topk(TOP_K)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(pixels)

    return forward, transform_forward


def http_predict(http: httpx.Client, image: Path) -> list:
    """One prediction through Gradio's HTTP API: upload the file, start the call, read its event stream."""
    with open(image, "rb") as file:
        path = http.post("/gradio_api/upload", files={"files": (image.name, file)}).json()[0]
    data = [{"path": path, "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}, TOP_K, "none"]
    event_id = http.post("/gradio_api/call/predict", json={"data": data}).json()["event_id"]
    with http.stream("GET", f"/gradio_api/call/predict/{event_id}") as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(f"the app answered with an error: {line}")
                return json.loads(line.removeprefix("data:"))
    raise RuntimeError("the event stream ended without a result")


def measure(cases: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call of each case: ``warmup + runs`` rounds of one call of each, the order rotated
    by one case per round; the first ``warmup`` rounds are not kept."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(warmup + runs):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            cases[name]()
            elapsed = (time.perf_counter() - start) * 1000
            if round_number >= warmup:
                times[name].append(elapsed)
    return times


def summarize(times: dict[str, list[float]]) -> list[dict]:
    """p50/p95 per case, and its overhead over the reference: ratio of p50s, median of per-round ratios."""
    reference = np.array(times[REFERENCE])
    reference_p50 = float(np.percentile(reference, 50))
    rows = []
    for name, values in times.items():
        values = np.array(values)
        p50, p95 = float(np.percentile(values, 50)), float(np.percentile(values, 95))
        rows.append({
            "case": name,
            "p50_ms": round(p50, 2),
            "p95_ms": round(p95, 2),
            "p50_over_reference_ms": round(p50 - reference_p50, 2),
            "p50_ratio": round(p50 / reference_p50, 3),
            "paired_ratio_median": round(float(np.median(values / reference)), 3),
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| case | p50 ms | p95 ms | p50 − reference p50, ms | p50 / reference p50 | median per-round ratio to reference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['case']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p50_over_reference_ms']:+.2f} | {r['p50_ratio']:.3f} | {r['paired_ratio_median']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


class Load:
    """CPU use on the whole machine while the benchmark runs, and how much of it was other work (not this
    process nor the app's)."""

    def __init__(self, app_pid: int) -> None:
        self.ours = [psutil.Process(), psutil.Process(app_pid)]

    def __enter__(self) -> "Load":
        self.load_before = os.getloadavg()[0]
        self.start = time.monotonic(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, ours = time.monotonic() - self.start[0], self._busy() - self.start[1], self._ours() - self.start[2]
        self.record = {
            "cpus": os.cpu_count(),
            "load_average_1min": [round(self.load_before, 2), round(os.getloadavg()[0], 2)],
            "busy_cpus": round(busy / wall, 2),
            "busy_cpus_other_work": round(max(busy - ours, 0.0) / wall, 2),
            "wall_s": round(wall, 1),
        }

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def _ours(self) -> float:
        return sum(sum(p.cpu_times()[:4]) for p in self.ours)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "outputs" / "quickstart", help="export folder [outputs/quickstart]")
    parser.add_argument("--image", type=Path, help="image file [the first bundled validation Sneaker]")
    parser.add_argument("--runs", type=int, default=100, help="measured rounds [100]")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured rounds first [10]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the app [1: steadier on a shared machine]")
    args = parser.parse_args()
    image = args.image or sorted(DEFAULT_IMAGE.glob("*.png"))[0]
    torch.set_num_threads(args.threads)

    forward, transform_forward = bare_timm(args.model)
    loaded = load_model(args.model, "cpu")
    pixels = loaded.transform(Image.open(image).convert("RGB")).unsqueeze(0)
    classify = make_classifier(loaded)
    app = REPO / "space" / "app.py"
    app_env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as scratch, AppProcess(
        app, ["--model", str(args.model)], app_env, Path(scratch) / "app.log", cwd=Path.cwd()
    ) as served:
        client = Client(served.url, verbose=False)
        http = httpx.Client(base_url=served.url, trust_env=False)
        cases = {
            "forward": lambda: forward(pixels),
            REFERENCE: lambda: transform_forward(image),
            "app function": lambda: classify(str(image), TOP_K, "none"),
            "app over HTTP": lambda: http_predict(http, image),
            "app via gradio_client": lambda: client.predict(handle_file(str(image)), TOP_K, "none", api_name="/predict"),
        }
        with Load(served.process.pid) as load:
            times = measure(cases, args.runs, args.warmup)
    rows = summarize(times)
    command = shlex.join(["python", os.path.relpath(__file__), *sys.argv[1:]])
    machine = f"{cpu_model()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, torch {torch.__version__}"
    record: dict = {
        "command": command,
        "settings": {"model": str(args.model), "image": os.path.relpath(image), "runs": args.runs, "warmup": args.warmup, "torch_threads": args.threads},
        "model": json.loads((args.model / "config.json").read_text())["architecture"],
        "input_size": loaded.input_config["input_size"],
        "machine": machine,
        "load": load.record,
        "reference": REFERENCE,
        "results": rows,
    }
    markdown = "\n".join([
        f"# Demo app latency: {record['model']} at {record['input_size'][1]} px, one image ({image.name}), CPU",
        "",
        f"`{command}`",
        "",
        table(rows),
        "",
        f"{args.runs} rounds after {args.warmup} warm-up rounds; each round runs every case once, the order rotating "
        f"by one case per round, {PAUSE_S * 1000:.0f} ms apart. {args.threads} torch thread(s) here and in the app, "
        "which runs in its own process; the other cases run in the benchmark's. Ratios compare with "
        f"`{REFERENCE}` in the same run; the per-round ratio pairs each call with the reference call of its round.",
        "",
        f"Times are from a shared machine, {machine}: other work ran beside the benchmark "
        f"(1-minute load average {load.record['load_average_1min'][0]} before, {load.record['load_average_1min'][1]} after; "
        f"{load.record['busy_cpus']} CPUs busy on average over the {load.record['wall_s']} s, "
        f"{load.record['busy_cpus_other_work']} of them with work other than the benchmark and the app). "
        "Absolute times move from run to run; the ratios within one run are the result.",
    ])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "space_latency.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "space_latency.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
