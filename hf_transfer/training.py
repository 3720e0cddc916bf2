"""The training run on Accelerate: prepare, fit with per-epoch evaluation, checkpoint, export.

``batch_size`` is the global batch whatever the number of processes (accelerate splits each batch
across them), and augmentation is seeded per sample, so one process and N processes see the same
data in the same batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .checkpoint import BEST_WEIGHTS, RunState, latest_checkpoint, load_checkpoint, save_best_weights, save_checkpoint
from .caching import EpochInputs, FeatureCaching
from .card import write_model_card
from .config import Config, to_dict, to_yaml
from .data import Splits
from .errors import CheckpointError, ConfigError, TrainingInterrupted
from .export import export_model
from .freezing import apply_freeze_state, set_trainable_stages, train_mode
from .launch import wants_cpu
from .loaders import Loaders
from .lr_find import resolve_lr
from .metrics import class_report, classification_metrics
from .model import count_parameters
from .optim import build_optimizer, build_scheduler
from .parts import build_parts
from .outputs import (
    CHECKPOINTS,
    CONFIG_FILE,
    CONFUSION_PLOT,
    CURVES_PLOT,
    METRICS_FILE,
    check_output_dir,
    reset_output_dir,
    write_atomic,
    write_metrics_log,
)
from .plots import plot_confusion_matrix, plot_curves
from .run_info import write_run_info
from .tta import tta_logits

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a prepared run needs."""

    config: Config
    accelerator: Accelerator
    root: Path
    splits: Splits
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loaders: Loaders
    input_config: dict[str, Any]
    criterion: torch.nn.Module
    stages: list[list[str]]  # parameter names per stage (freezing.parameter_stages)
    caching: FeatureCaching

    @property
    def images(self) -> EpochInputs:
        """The model on the image loaders: what an epoch runs without cached activations."""
        return EpochInputs(self.model, self.loaders.train, self.loaders.val)

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS


def train(config: Config) -> dict[str, Any]:
    """Train as configured; return the final metrics, also written to ``metrics.json``."""
    root = check_output_dir(config.output)
    accelerator = build_accelerator(config, root)
    if accelerator.is_main_process:
        reset_output_dir(root, config.output.overwrite)
    accelerator.wait_for_everyone()
    config = resolve_lr(config, accelerator, root)
    if accelerator.is_main_process:
        write_atomic(root / CONFIG_FILE, to_yaml(config).encode())
    set_seed(config.train.seed)
    run = prepare(config, accelerator, root)
    state = restore(run) if config.output.resume else RunState(label_names=run.splits.label_names)
    if config.output.tensorboard:
        accelerator.init_trackers("hf_transfer", config=_flat_hparams(to_dict(config)))
    with stop_on_signals(accelerator) as stop:
        fit(run, state, stop)
    results = finish(run, state)
    accelerator.end_training()
    return results


def build_accelerator(config: Config, root: Path) -> Accelerator:
    """Accelerate with the global-batch split, seeded sampler and the chosen precision."""
    cpu = wants_cpu()
    state = PartialState(cpu=cpu)  # the first state decides the device and process group for all
    train = config.train
    device, processes = state.device, state.num_processes
    micro_batch = train.batch_size // train.grad_accum_steps
    if micro_batch % processes:
        raise ConfigError(
            f"train.batch_size / train.grad_accum_steps = {micro_batch} must be divisible by the "
            f"{processes} processes; change train.batch_size or the number of processes."
        )
    # parameters unfrozen later still train under DDP only when it tolerates parameters without gradients
    schedule = [DistributedDataParallelKwargs(find_unused_parameters=True)] if config.model.unfreeze else []
    if device.type == "cuda":
        use_fast_cuda_kernels()
    return Accelerator(
        cpu=cpu,
        mixed_precision=choose_mixed_precision(train.mixed_precision, device),
        gradient_accumulation_steps=train.grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=train.seed),
        log_with="tensorboard" if config.output.tensorboard else None,
        project_dir=str(root / "tensorboard"),
        kwargs_handlers=schedule,
        dynamo_backend="inductor" if train.compile else None,
    )


def use_fast_cuda_kernels() -> None:
    """TF32 matmuls and convolutions (fp32 range, 10-bit mantissa: what mixed precision already
    accepts) and cuDNN picking the fastest convolution for the fixed input size."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def choose_mixed_precision(requested: str, device: torch.device) -> Optional[str]:
    """``auto``: what ``accelerate launch``/``accelerate config`` set, else bf16 on CUDA GPUs that
    support it, fp16 on older ones, and full precision on CPU and MPS."""
    if requested != "auto":
        return requested
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        return None  # accelerate reads the launcher's choice itself
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def prepare(config: Config, accelerator: Accelerator, root: Path) -> Run:
    """Load data and model, freeze per strategy, and let accelerate wrap everything."""
    parts = build_parts(config, accelerator)
    splits, model, stages, loaders = parts.splits, parts.model, parts.stages, parts.loaders
    trainable, frozen = count_parameters(model)
    logger.info(
        "%s, strategy %s: %s trainable and %s frozen parameters; %d train / %d val images, %d classes",
        config.model.name, config.model.strategy, f"{trainable:,}", f"{frozen:,}",
        len(splits.train), len(splits.val), splits.num_classes,
    )
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    caching = FeatureCaching(config, accelerator, model, splits, parts.input_config, loaders)
    optimizer = build_optimizer(model, stages, config.train, fused=accelerator.device.type == "cuda")
    steps_per_epoch = math.ceil(len(loaders.train) / config.train.grad_accum_steps)
    scheduler = build_scheduler(optimizer, config.train, steps_per_epoch)
    if config.model.unfreeze and accelerator.num_processes > 1:
        # DDP averages the gradients of only the parameters that train when it wraps the model
        logger.info("Unfreeze schedule on %d processes: DDP wraps every stage", accelerator.num_processes)
        set_trainable_stages(model, stages, len(stages))
    model, optimizer, loaders.train, loaders.val, scheduler = accelerator.prepare(
        model, optimizer, loaders.train, loaders.val, scheduler
    )
    if loaders.test is not None:
        loaders.test = accelerator.prepare(loaders.test)
    return Run(
        config, accelerator, root, splits, model, optimizer, scheduler, loaders, parts.input_config, parts.criterion,
        stages, caching,
    )


def restore(run: Run) -> RunState:
    """Load the newest verified checkpoint of the run in ``output.dir``."""
    folder = latest_checkpoint(run.checkpoints)
    if folder is None:
        raise CheckpointError(f"No complete checkpoint in {run.checkpoints} to resume from; start a new run.")
    saved = json.loads((folder / "trainer_state.json").read_text())["label_names"]
    if saved != run.splits.label_names:
        raise CheckpointError(
            f"The checkpoint {folder} was trained on classes {saved}, but the data has {run.splits.label_names}. "
            "Resume with the same data, or start a new run in another output.dir."
        )
    try:
        state = load_checkpoint(run.accelerator, folder)
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) refused what the file asks to run
        raise CheckpointError(f"Checkpoint {folder} holds pickled code, refused for safety: {e}") from e
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {folder} does not fit this model or optimizer: {e}") from e
    logger.info("Resumed from %s: epoch %d, step %d", folder, state.epoch, state.step_in_epoch)
    return state


def fit(run: Run, state: RunState, stop: "StopFlag") -> None:
    """Train epoch by epoch from ``state``; evaluate, keep the best weights, checkpoint each epoch."""
    config, accelerator = run.config, run.accelerator
    while state.epoch < config.train.epochs and not _early_stopped(state, config):
        started = time.perf_counter()
        model = accelerator.unwrap_model(run.model, keep_torch_compile=False)
        trainable = apply_freeze_state(model, run.stages, config.model, state.epoch)
        inputs = run.caching.inputs(run.images)
        train_stats = train_epoch(run, state, stop, inputs)
        val = evaluate(run.model, inputs.val, accelerator, inputs.forward)
        value = val[config.train.best_metric]
        improved = state.best_metric is None or (
            value < state.best_metric if config.train.best_metric == "loss" else value > state.best_metric
        )
        state.epoch += 1
        if improved:
            state.best_metric, state.best_epoch, state.epochs_without_improvement = value, state.epoch, 0
            if accelerator.is_main_process:
                save_best_weights(model, run.checkpoints, state.epoch, value)
        else:
            state.epochs_without_improvement += 1
        record = {"epoch": state.epoch, **train_stats, "trainable_params": trainable}
        record.update({f"val_{k}": v for k, v in val.items()})
        record["epoch_time_s"] = round(time.perf_counter() - started, 3)
        record["inputs"] = f"cached activations at {inputs.boundary}" if inputs.boundary else "images"
        record["lr"] = {group["name"]: group["lr"] for group in run.optimizer.param_groups}
        state.history.append(record)
        state.step_in_epoch, state.partial_epoch = 0, {}
        save_checkpoint(accelerator, run.checkpoints, state)
        if accelerator.is_main_process:
            write_metrics_log(run.root, state.history)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        accelerator.log({**scalars, **{f"lr/{k}": v for k, v in record["lr"].items()}}, step=state.epoch)
        logger.info(_summary(record, config.train.epochs))
        if state.epoch == 1:
            run.caching.report_savings(record["epoch_time_s"])
        if stop.requested():
            raise TrainingInterrupted(stop.signum, run.checkpoints)


def train_epoch(run: Run, state: RunState, stop: "StopFlag", inputs: EpochInputs) -> dict[str, float]:
    """One epoch of optimizer steps on ``inputs`` (resuming mid-epoch if ``state`` says so); train
    loss/accuracy."""
    config, accelerator, model = run.config, run.accelerator, run.model
    train_mode(model, config.model.bn_policy)
    run.loaders.epoch.set(state.epoch)
    inputs.train.set_epoch(state.epoch)
    loader = inputs.train
    if state.step_in_epoch:
        loader = accelerator.skip_first_batches(loader, state.step_in_epoch * config.train.grad_accum_steps)
    # running sums of this epoch; a resumed epoch starts from the saved ones (on one process only)
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    if state.partial_epoch and accelerator.is_main_process:
        sums += torch.tensor([state.partial_epoch[k] for k in ("loss_sum", "correct", "seen")], device=sums.device)
    started = time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {state.epoch + 1}", disable=not accelerator.is_local_main_process, leave=False)
    for batch in progress:
        with accelerator.accumulate(model):
            logits = inputs.forward(batch["pixel_values"])
            loss = run.criterion(logits, batch["labels"])
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.train.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        count = batch["labels"].numel()
        correct = (logits.argmax(-1) == batch["labels"]).sum()
        sums += torch.stack([loss.detach().double() * count, correct.double(), sums.new_tensor(count)])
        if not accelerator.sync_gradients:
            continue
        state.global_step += 1
        state.step_in_epoch += 1
        every = config.output.checkpoint_every
        interrupted = stop.requested()
        if interrupted or (every and state.global_step % every == 0):
            state.partial_epoch = dict(zip(("loss_sum", "correct", "seen"), accelerator.reduce(sums.clone()).tolist()))
            save_checkpoint(accelerator, run.checkpoints, state)
        if interrupted:
            raise TrainingInterrupted(stop.signum, run.checkpoints)
    elapsed = time.perf_counter() - started
    loss_sum, correct, seen = accelerator.reduce(sums).tolist()
    return {
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "train_images_per_s": seen / elapsed,
    }


def evaluate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    accelerator: Accelerator,
    forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> dict[str, float]:
    """Metrics over the whole split, each image counted exactly once across processes."""
    return classification_metrics(*predict(model, loader, accelerator, forward=forward))


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    accelerator: Accelerator,
    tta: str = "none",
    forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the whole split on every process, in dataset order, without duplicates;
    with test-time augmentation ``tta`` (see tta.py), log-probabilities averaged over its views.
    ``forward`` (default: the model) is what the batches go through, in eval mode."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        outputs = tta_logits(model if forward is None else forward, batch["pixel_values"], tta)
        gathered = accelerator.gather_for_metrics((outputs, batch["labels"]))
        logits.append(gathered[0].float().cpu())
        labels.append(gathered[1].cpu())
    return torch.cat(logits), torch.cat(labels)


def finish(run: Run, state: RunState) -> dict[str, Any]:
    """Load the best weights, score them on validation (per class too) and test, export the model,
    and write ``metrics.json`` and the plots."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(run.model, keep_torch_compile=False)
    best = run.checkpoints / BEST_WEIGHTS
    if best.is_file():
        model.load_state_dict(load_file(str(best)))  # copied into the parameters on their device
    names = run.splits.label_names
    results: dict[str, Any] = {
        "best_epoch": state.best_epoch,
        "best_metric": run.config.train.best_metric,
        "epochs_completed": state.epoch,
        "stopped_early": _early_stopped(state, run.config),
        "train_time_s": round(sum(r["epoch_time_s"] for r in state.history), 3),
        "num_train": len(run.splits.train),
        "num_val": len(run.splits.val),
        "num_processes": accelerator.num_processes,
        "label_names": names,
        "skipped_images": {split: [row["file"] for row in rows] for split, rows in run.splits.skipped.items()},
    }
    cached = run.caching.scoring_inputs()  # the validation split's fp32 activations, when still valid
    results["val"] = score(run, cached.val, forward=cached.forward) if cached else score(run, run.loaders.val)
    if run.loaders.test is not None:
        results["test"] = score(run, run.loaders.test)
    results.update(tta_results(run))
    if accelerator.is_main_process:
        head = None
        if run.config.model.head == "mlp":
            head = {"type": "mlp", "hidden_dim": run.config.model.head_hidden_dim, "dropout": run.config.model.head_dropout}
        export_model(model, run.root, names, run.input_config, head)
        write_atomic(run.root / METRICS_FILE, json.dumps(results, indent=2).encode())
        plot_curves(state.history, run.root / CURVES_PLOT, state.best_epoch)
        plot_confusion_matrix(results["val"]["confusion_matrix"], names, run.root / CONFUSION_PLOT)
        write_run_info(run.root, run.config, run.splits, accelerator)
        write_model_card(run.root)
        summary = {k: round(results["val"][k], 4) for k in ("accuracy", "f1_macro", "balanced_accuracy", "loss")}
        logger.info("Best epoch %s: validation %s; model exported to %s", state.best_epoch, summary, run.root)
    accelerator.wait_for_everyone()
    return results


def score(
    run: Run,
    loader: torch.utils.data.DataLoader,
    tta: str = "none",
    forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> dict[str, Any]:
    """Metrics and per-class report of the model on one split (fed to ``forward`` when given)."""
    logits, labels = predict(run.model, loader, run.accelerator, tta, forward)
    return {**classification_metrics(logits, labels), **class_report(logits, labels, run.splits.label_names)}


def tta_results(run: Run) -> dict[str, Any]:
    """With ``train.tta``, the validation (and test) scores again under test-time augmentation, as
    ``val_tta``/``test_tta`` beside the plain ``val``/``test``."""
    mode = run.config.train.tta
    if mode == "none":
        return {}
    results = {}
    for split, loader in (("val", run.loaders.val), ("test", run.loaders.test)):
        if loader is not None:
            results[f"{split}_tta"] = {"tta": mode, **score(run, loader, mode)}
    logger.info("Validation accuracy with %s test-time augmentation: %.4f", mode, results["val_tta"]["accuracy"])
    return results


def _early_stopped(state: RunState, config: Config) -> bool:
    patience = config.train.early_stopping_patience
    return patience is not None and state.epochs_without_improvement >= patience


def _summary(record: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
        f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} f1 {record['val_f1_macro']:.4f} | "
        f"{record['train_images_per_s']:.1f} img/s, {record['epoch_time_s']:.1f} s"
    )


def _flat_hparams(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as flat scalars (what tensorboard's hparams accept)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat_hparams(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class StopFlag:
    """Set by SIGINT/SIGTERM; read collectively so that every process stops at the same step."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.signum: Optional[int] = None

    def requested(self) -> bool:
        if self.accelerator.num_processes == 1:
            return self.signum is not None  # no collective (and no device sync) needed
        return self.accelerator.check_trigger()


@contextmanager
def stop_on_signals(accelerator: Accelerator) -> Iterator[StopFlag]:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. A second one aborts at once."""
    flag = StopFlag(accelerator)

    def handle(signum: int, _frame: Any) -> None:
        if flag.signum is not None:
            raise KeyboardInterrupt
        flag.signum = signum
        accelerator.set_trigger()
        logger.warning(
            "%s received: saving a resumable checkpoint after this step (send it again to abort)",
            signal.Signals(signum).name,
        )

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
