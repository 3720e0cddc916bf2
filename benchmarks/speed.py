"""hf_transfer against the seed-style loop, in one process, on the same data, weights, image size and epochs.

    python benchmarks/speed.py                       # feature extraction, partial fine-tuning, device options
    python benchmarks/speed.py --only options        # just the channels_last / bf16 / compile measurements

Needs the held-back Fashion-MNIST test images (``apt-get install dataset-fashion-mnist``, see heldout.py)
and the package installed (``pip install -e .``). Writes ``speed.json`` and ``speed.md`` to ``--out``. Times are wall
clock on whatever machine runs it: compare the ratios, which are measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from heldout import write_test_folder  # noqa: E402
from seed_loop import evaluate_seed_style, run_seed_loop  # noqa: E402

from hf_transfer.config import load_config  # noqa: E402
from hf_transfer.loading import load_model  # noqa: E402
from hf_transfer.predict import predict_images  # noqa: E402
from hf_transfer.weights import EFFICIENTNET_LITE0_PACKAGE, resolve_weights_file  # noqa: E402

DATA = REPO / "data" / "fashion-mnist-mini"
# What trains, by module name for the seed-style loop and by strategy for hf_transfer. Feature
# extraction is a linear probe on the eval transform's features; partial fine-tuning also sees mirrored images.
SCENARIOS = {
    "feature_extraction": (("classifier",), ["model.strategy=feature_extraction", "augment.policy=none"]),
    "partial": (
        ("blocks.6", "conv_head", "bn2", "classifier"),
        ["model.strategy=partial", "model.trainable_stages=1", "augment.policy=flip"],
    ),
}


class PeakMemory:
    """Largest resident memory of this process and its children (DataLoader workers) while active."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            total = process.memory_info().rss
            for child in process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_baseline(trainable: tuple[str, ...], epochs: int, size: int, test_dir: Path, weights: Path) -> dict[str, Any]:
    with PeakMemory() as memory:
        result = run_seed_loop(DATA / "train", test_dir, weights, trainable, epochs, size)
    return {**result, "peak_memory_mb": memory.peak / 2**20}


def evaluation_rates(baseline: dict[str, Any], model_dir: Path, test_dir: Path, rounds: int) -> tuple[float, float]:
    """Median images/s of the seed-style evaluation loop and of ``hf_transfer.predict`` on the held-back
    images, alternating the two ``rounds`` times so that a busy machine slows both alike."""
    paths = sorted(test_dir.rglob("*.png"))
    loaded = load_model(model_dir)
    ours, theirs = [], []
    for _ in range(rounds):
        theirs.append(evaluate_seed_style(baseline["model"], baseline["test_loader"])[1])
        started = time.perf_counter()
        predict_images(loaded, paths, top_k=1)
        ours.append(len(paths) / (time.perf_counter() - started))
    return statistics.median(theirs), statistics.median(ours)


def run_hf_transfer(overrides: list[str], epochs: int, size: int, test_dir: Path, out: Path) -> dict[str, Any]:
    """train.py as a user runs it (cold feature cache), then the exported model on the held-back images."""
    from hf_transfer.training import train

    config = load_config(REPO / "configs" / "quickstart.yaml", [
        f"data.path={DATA}", f"data.image_size={size}", f"train.epochs={epochs}",
        f"output.dir={out}", "output.overwrite=true", *overrides,
    ])
    with PeakMemory() as memory:
        started = time.perf_counter()
        train(config)
        train_wall = time.perf_counter() - started
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    paths = sorted(test_dir.rglob("*.png"))
    model = load_model(out)
    eval_start = time.perf_counter()
    predictions = predict_images(model, paths, top_k=1)
    eval_time = time.perf_counter() - eval_start
    correct = sum(p.labels[0] == path.parent.name for p, path in zip(predictions, paths))
    num_train = len(list((DATA / "train").rglob("*.png")))
    return {
        # whole epochs as the run logged them: training, validation and, in the first, the cache extraction
        "train_images_per_s": [num_train / record["epoch_time_s"] for record in history],
        "inputs": [record["inputs"] for record in history],
        "train_wall_s": train_wall,
        "eval_images_per_s": len(paths) / eval_time,
        "heldout_accuracy": correct / len(paths),
        "wall_s": train_wall + eval_time,
        "peak_memory_mb": memory.peak / 2**20,
    }


def later_epochs(rates: list[float]) -> float:
    return statistics.median(rates[1:] or rates)


def compare(name: str, epochs: int, size: int, test_dir: Path, weights: Path, out: Path, rounds: int) -> dict[str, Any]:
    trainable, overrides = SCENARIOS[name]
    print(f"== {name}: seed-style loop", flush=True)
    baseline = run_baseline(trainable, epochs, size, test_dir, weights)
    print(f"== {name}: hf_transfer (cold feature cache)", flush=True)
    ours = run_hf_transfer(overrides, epochs, size, test_dir, out / name)
    print(f"== {name}: evaluation throughput, {rounds} alternating rounds", flush=True)
    baseline["eval_images_per_s"], ours["eval_images_per_s"] = evaluation_rates(baseline, out / name, test_dir, rounds)
    del baseline["model"], baseline["test_loader"]
    return {
        "scenario": name, "epochs": epochs, "image_size": size, "seed_style": baseline, "hf_transfer": ours,
        "ratios": {
            "later_epoch_images_per_s": later_epochs(ours["train_images_per_s"]) / later_epochs(baseline["train_images_per_s"]),
            "first_epoch_images_per_s": ours["train_images_per_s"][0] / baseline["train_images_per_s"][0],
            "train_wall_speedup": baseline["train_wall_s"] / ours["train_wall_s"],
            "wall_time_speedup": baseline["wall_s"] / ours["wall_s"],
            "eval_images_per_s": ours["eval_images_per_s"] / baseline["eval_images_per_s"],
            "heldout_accuracy_difference": ours["heldout_accuracy"] - baseline["heldout_accuracy"],
        },
    }


def size_sweep(sizes: list[int], epochs: int, test_dir: Path, out: Path) -> list[dict[str, Any]]:
    """Feature extraction on cached features at several input sizes: what upscaling 28 px images buys.
    Each size starts from an empty feature cache, like the scenarios."""
    from hf_transfer.feature_cache import features_dir

    rows = []
    for size in sizes:
        print(f"== input size {size} px", flush=True)
        shutil.rmtree(features_dir(), ignore_errors=True)
        result = run_hf_transfer(SCENARIOS["feature_extraction"][1], epochs, size, test_dir, out / f"size{size}")
        rows.append({"image_size": size, **{k: result[k] for k in ("heldout_accuracy", "wall_s", "eval_images_per_s")}})
    return rows


def option_cases(compile_too: bool) -> Iterator[tuple[str, bool, bool, bool, bool]]:
    """(name, channels_last, bf16, compile, BatchNorm folded: inference only)"""
    yield "fp32", False, False, False, False
    yield "channels_last", True, False, False, False
    yield "channels_last + folded BatchNorm", True, False, False, True
    yield "bf16 autocast", False, True, False, False
    yield "channels_last + bf16", True, True, False, False
    yield "channels_last + bf16 + folded BatchNorm", True, True, False, True
    if compile_too:
        yield "channels_last + compile", True, False, True, False


def measure_options(size: int, weights: Path, repeats: int, compile_too: bool) -> list[dict[str, Any]]:
    """Images/s of a training step (last stage + head trainable) and of inference, for each device
    option, interleaved case by case within every repeat so a busy machine slows all alike. Folded
    BatchNorm is for inference only (the feature cache's frozen stages, ``predict``, the Space)."""
    import timm

    from hf_transfer.folding import folded_copy

    def build(channels_last: bool, compiled: bool) -> torch.nn.Module:
        model = timm.create_model("efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(SCENARIOS["partial"][0])
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return torch.compile(model) if compiled else model

    batch = torch.randn(32, 3, size, size)
    cases = [
        (name, folded_copy(build(cl, comp), batch[:2]) if folded else build(cl, comp), bf16, folded)
        for name, cl, bf16, comp, folded in option_cases(compile_too)
    ]
    timings: dict[str, dict[str, list[float]]] = {name: {"train": [], "infer": []} for name, *_ in cases}

    def timed(step: Callable[[], None]) -> float:
        started = time.perf_counter()
        step()
        return time.perf_counter() - started

    for repeat in range(repeats + 1):  # the first round warms up (and compiles)
        for name, model, bf16, folded in cases:
            def train_step() -> None:
                model.train()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    model(batch).float().logsumexp(-1).sum().backward()

            def infer() -> None:
                model.eval()
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    model(batch)

            train_time, infer_time = None if folded else timed(train_step), timed(infer)
            if repeat:
                timings[name]["infer"].append(infer_time)
                if train_time is not None:
                    timings[name]["train"].append(train_time)
    base = timings["fp32"]

    def rates(kind: str, times: list[float]) -> tuple[Optional[float], Optional[float]]:
        """(images/s, speedup over fp32); None for a case that does not run ``kind``."""
        if not times:
            return None, None
        median = statistics.median(times)
        return len(batch) / median, statistics.median(base[kind]) / median

    rows = []
    for name, t in timings.items():
        (train_rate, train_speedup), (infer_rate, infer_speedup) = rates("train", t["train"]), rates("infer", t["infer"])
        rows.append({
            "option": name, "train_step_images_per_s": train_rate, "train_speedup": train_speedup,
            "inference_images_per_s": infer_rate, "inference_speedup": infer_speedup,
        })
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# hf_transfer vs the seed-style loop: efficientnet_lite0 on fashion-mnist-mini",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. Times are wall clock on a shared "
        "machine; the ratios compare runs made one after the other in the same process.",
        "",
    ]
    for result in report["scenarios"]:
        base, ours, ratios = result["seed_style"], result["hf_transfer"], result["ratios"]
        lines += [
            f"## {result['scenario']}: {result['epochs']} epochs at {result['image_size']} px",
            "",
            "| | seed-style loop | hf_transfer | ratio |",
            "|---|---|---|---|",
            f"| images/s, first epoch | {base['train_images_per_s'][0]:.1f} | {ours['train_images_per_s'][0]:.1f} | "
            f"{ratios['first_epoch_images_per_s']:.2f}x |",
            f"| images/s, later epochs (median) | {later_epochs(base['train_images_per_s']):.1f} | "
            f"{later_epochs(ours['train_images_per_s']):.1f} | {ratios['later_epoch_images_per_s']:.1f}x |",
            f"| training wall time, all epochs (s) | {base['train_wall_s']:.1f} | {ours['train_wall_s']:.1f} | "
            f"{ratios['train_wall_speedup']:.1f}x faster |",
            f"| wall time, training + held-back evaluation (s) | {base['wall_s']:.1f} | {ours['wall_s']:.1f} | "
            f"{ratios['wall_time_speedup']:.1f}x faster |",
            f"| evaluation images/s (median of alternating rounds) | {base['eval_images_per_s']:.1f} | {ours['eval_images_per_s']:.1f} | "
            f"{ratios['eval_images_per_s']:.2f}x |",
            f"| held-back accuracy (Fashion-MNIST test) | {base['heldout_accuracy']:.3f} | {ours['heldout_accuracy']:.3f} | "
            f"{ratios['heldout_accuracy_difference']:+.3f} |",
            f"| peak memory, with workers (MB) | {base['peak_memory_mb']:.0f} | {ours['peak_memory_mb']:.0f} | |",
            "",
            f"hf_transfer epochs ran on: {', '.join(sorted(set(ours['inputs'])))}. Its images/s count whole epochs "
            "(training, validation and, in the first, computing the cache); the seed-style loop's count training only. "
            "hf_transfer's training wall time is `train()` end to end: loading and checking the images, the cache, "
            "the epochs, scoring the best weights, exporting the model, its card and plots.",
            "",
        ]
    if report.get("sizes"):
        lines += [
            f"## Input size: feature extraction (cached), {report['sizes_epochs']} epochs, Fashion-MNIST's 28 px images upscaled",
            "",
            "| input size | held-back accuracy | wall time (s) | evaluation images/s |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {row['image_size']} px | {row['heldout_accuracy']:.3f} | {row['wall_s']:.1f} | {row['eval_images_per_s']:.1f} |"
            for row in report["sizes"]
        ]
        lines.append("")
    if report.get("options"):
        lines += [
            f"## Device options on CPU (batch 32, {report['options_image_size']} px, last stage + head trainable)",
            "",
            "| option | train step images/s | speedup | inference images/s | speedup |",
            "|---|---|---|---|---|",
        ]
        for row in report["options"]:
            train = "| — | — |" if row["train_speedup"] is None else (
                f"| {row['train_step_images_per_s']:.1f} | {row['train_speedup']:.2f}x |"
            )
            lines.append(
                f"| {row['option']} {train} {row['inference_images_per_s']:.1f} | {row['inference_speedup']:.2f}x |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="feature_extraction,partial,sizes,options", help="comma-separated parts to run"
    )
    parser.add_argument("--sizes", default="64,96,128,224", help="input sizes of the sizes part")
    parser.add_argument("--epochs-fe", type=int, default=10)
    parser.add_argument("--epochs-partial", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--test-per-class", type=int, default=100, help="held-back test images per class")
    parser.add_argument("--option-repeats", type=int, default=5)
    parser.add_argument("--eval-rounds", type=int, default=3, help="alternating evaluation timings per scenario")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    parts = args.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="hf_transfer_bench_"))
    os.environ["HF_TRANSFER_CACHE"] = str(work / "cache")  # a cold cache: the extraction is part of the time
    weights = resolve_weights_file(EFFICIENTNET_LITE0_PACKAGE, "efficientnet_lite0")
    test_dir = write_test_folder(work / "heldout", args.test_per_class) if set(parts) - {"options"} else None
    report: dict[str, Any] = {
        "command": "python " + shlex.join(["benchmarks/speed.py", *sys.argv[1:]]),
        "machine": f"{len(os.sched_getaffinity(0))} CPUs ({platform.machine()}, {platform.processor() or 'cpu'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start",
        "scenarios": [],
    }
    for name in SCENARIOS:
        if name in parts:
            epochs = args.epochs_fe if name == "feature_extraction" else args.epochs_partial
            report["scenarios"].append(
                compare(name, epochs, args.image_size, test_dir, weights, work / "runs", args.eval_rounds)
            )
    if "sizes" in parts:
        report["sizes"] = size_sweep([int(v) for v in args.sizes.split(",")], args.epochs_fe, test_dir, work / "runs")
        report["sizes_epochs"] = args.epochs_fe
    if "options" in parts:
        print("== device options", flush=True)
        report["options"] = measure_options(args.image_size, weights, args.option_repeats, args.compile)
        report["options_image_size"] = args.image_size
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=2))
    (args.out / "speed.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
