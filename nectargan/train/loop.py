"""The training loop: data, budget, LR decay, evaluation, metrics.csv, samples, checkpoints.

The loop emits events to callbacks (``on_log``, ``on_eval``, ``on_end``, each taking a dict); the
CLI's progress bar and the Optuna trials subscribe to them. An exception raised by a callback (for
example Optuna's ``TrialPruned``) stops training and propagates to the caller.

Everything that can be checked is checked before the run folder is touched (settings, the models on
the meta device, memory, data); a failure before the first step completes removes what it created,
so the same command can simply be run again. Ctrl-C after that keeps the run: the checkpoints and a
``summary.json`` marked ``interrupted`` (see :class:`TrainingInterrupted`).
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nectargan.data.paired import PairedImageDataset, PreloadedPairs
from nectargan.errors import InvalidArgumentError, NectarGANError
from nectargan.metrics import image_metrics
from nectargan.models.checkpoint import save_checkpoint
from nectargan.models.patchgan.model import Discriminator
from nectargan.models.unet.model import UnetGenerator
from nectargan.runtime import dynamo_counts, set_tf32
from nectargan.train.config import Resolved, TrainConfig, memory_reason, resolve
from nectargan.train.step import Pix2PixStep

METRIC_COLUMNS = [
    "step", "elapsed_s", "img_per_s", "lr", "loss_d", "loss_g_gan", "loss_g_l1", "val_l1", "val_psnr", "val_ssim",
]
WARMUP_STEPS = 3
CPU_PRELOAD_BYTES = 2 * 2**30


EVENTS = ("on_log", "on_eval", "on_end")


class NonFiniteLossError(NectarGANError):
    """A loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`, raised once what could be kept is on disk (still a KeyboardInterrupt).

    Attributes:
        out: The run folder (None without one).
        step: Steps completed.
        kept: Names of the files in ``out`` that were kept: the checkpoints, metrics.csv, samples and
            a summary.json with ``interrupted: true``. Empty when the interrupt came before the first
            step; then what ``fit`` had created was removed.
    """

    def __init__(self, out: Path | None, step: int, kept: list[str]) -> None:
        super().__init__(f"training interrupted at step {step}")
        self.out = out
        self.step = step
        self.kept = kept


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


Handler = Callable[[str, dict[str, Any]], None]


def _handlers(callbacks: Sequence[Any]) -> list[Handler]:
    """Each callback as ``handler(event, payload)``: an object's methods, or a plain function itself."""
    handlers: list[Handler] = []
    for i, callback in enumerate(callbacks):
        if any(callable(getattr(callback, event, None)) for event in EVENTS):
            handlers.append(lambda event, payload, c=callback: getattr(c, event, _ignore)(payload))
        elif callable(callback):
            handlers.append(callback)
        else:
            raise InvalidArgumentError(
                f"callbacks[{i}]={callback!r} is not a callback: give an object with any of the methods "
                "on_log, on_eval or on_end (each taking a dict), or a function taking (event, payload)"
            )
    return handlers


def _ignore(payload: dict[str, Any]) -> None:
    return None


def _emit(handlers: Sequence[Handler], event: str, payload: dict[str, Any]) -> None:
    for handler in handlers:
        handler(event, payload)


def _should_preload(dataset: PairedImageDataset, run: Resolved, wanted: bool | None) -> bool:
    if wanted is not None:
        return wanted
    if run.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(run.device)
        return dataset.nbytes() < 0.25 * free
    return dataset.nbytes() < CPU_PRELOAD_BYTES


def _batches(
    dataset: PairedImageDataset, config: TrainConfig, run: Resolved, preload: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled training batches (full batches only), from device memory or a DataLoader."""
    if preload:
        pairs: PreloadedPairs = dataset.preload(run.device)
        generator = torch.Generator(device=run.device).manual_seed(config.seed)
        n, per_epoch = len(pairs), len(pairs) // config.batch_size
        while True:
            order = torch.randperm(n, device=run.device, generator=generator)
            for i in range(per_epoch):
                yield pairs.batch(order[i * config.batch_size:(i + 1) * config.batch_size], generator)
    else:
        epoch = 0
        while True:
            dataset.epoch = epoch
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                num_workers=config.num_workers, pin_memory=run.device.type == "cuda",
                generator=torch.Generator().manual_seed(config.seed + epoch),
            )
            yield from loader
            epoch += 1


def _discriminator(config: TrainConfig, generator: UnetGenerator, n_layers: int | None = None) -> Discriminator:
    return Discriminator(
        in_channels=generator.in_channels, base_channels=config.d_features,
        n_layers=config.d_layers if n_layers is None else n_layers, target_channels=generator.out_channels,
    )


def check_models(config: TrainConfig, run: Resolved) -> None:
    """Build G and D on the meta device (nothing allocated) and check what would fail later.

    The generator's arguments; ``d_layers`` against the image size (each PatchGAN layer but the last
    two halves the image, and at least one patch must remain: at most 4 layers at 32 px, 5 at 64, 7
    at 256); and memory: fp32 weights, gradients and two Adam moments of both networks must fit on the
    device (:func:`~nectargan.train.config.memory_reason`).
    """
    with torch.device("meta"):
        generator = UnetGenerator(**config.generator)
        discriminator = _discriminator(config, generator)
        size = generator.input_size
        try:
            discriminator.output_size(size)
        except InvalidArgumentError:
            fits = [n for n in range(1, config.d_layers) if _leaves_a_patch(_discriminator(config, generator, n), size)]
            hint = f"use d_layers <= {fits[-1]} at this size, or a larger input_size" if fits else (
                "use a larger input_size")
            raise InvalidArgumentError(
                f"d_layers={config.d_layers} is too deep for input_size={size}: the PatchGAN discriminator's "
                f"downsamplings would leave no patch; {hint}"
            ) from None
    params = sum(p.numel() for model in (generator, discriminator) for p in model.parameters())
    reason = memory_reason("the generator and discriminator", params, "training", run.device)
    if reason is not None:
        raise InvalidArgumentError(reason)


def _leaves_a_patch(discriminator: Discriminator, size: int) -> bool:
    try:
        discriminator.output_size(size)
    except InvalidArgumentError:
        return False
    return True


def build_models(config: TrainConfig, run: Resolved) -> tuple[UnetGenerator, Discriminator]:
    generator = UnetGenerator(**config.generator)
    discriminator = _discriminator(config, generator)
    memory_format = torch.channels_last if run.channels_last else torch.preserve_format
    generator.to(run.device, memory_format=memory_format)
    discriminator.to(run.device, memory_format=memory_format)
    return generator, discriminator


@torch.no_grad()
def evaluate(generator: torch.nn.Module, pairs: PreloadedPairs, run: Resolved, batch_size: int = 16):
    """Mean val L1 / PSNR / SSIM of the generator (eval mode) over a preloaded split."""
    was_training = generator.training
    generator.eval()
    sums = {"l1": 0.0, "psnr": 0.0, "ssim": 0.0}
    n = len(pairs)
    first = None
    for start in range(0, n, batch_size):
        x, y = pairs.batch(torch.arange(start, min(n, start + batch_size), device=pairs.a.device))
        x = x.contiguous(memory_format=torch.channels_last) if run.channels_last else x
        with run.autocast():
            out = generator(x).float()
        metrics = image_metrics(out, y)
        for key in sums:
            sums[key] += float(metrics[key].sum())
        if first is None:
            first = (x.float(), out, y)
    generator.train(was_training)
    return {f"val_{k}": v / n for k, v in sums.items()}, first


def save_samples(path: Path, triple: tuple[torch.Tensor, torch.Tensor, torch.Tensor], count: int) -> Path:
    """A PNG grid: one row per image, input | output | target."""
    rows = []
    for x, out, y in zip(*(t[:count] for t in triple), strict=True):
        tiles = []
        for image in (x, out, y):
            array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            if array.shape[2] == 1:
                array = np.repeat(array, 3, axis=2)
            tiles.append(array[:, :, :3])
        rows.append(np.concatenate(tiles, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


class _MetricsWriter:
    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerow(METRIC_COLUMNS)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([_fmt(record.get(c)) for c in METRIC_COLUMNS])


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def fit(config: TrainConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train G and D under ``config``; return a summary (also written to ``out/summary.json``).

    ``callbacks``: objects with any of ``on_log(record)``, ``on_eval(record)``, ``on_end(summary)``, or
    plain functions ``f(event, payload)`` that receive every event; anything else is an
    :class:`InvalidArgumentError` before training starts.

    Raises:
        InvalidArgumentError / DatasetError: for bad settings, models that cannot work at this size or
            fit in memory, or bad data; all before ``out`` is created.
        NonFiniteLossError: when a loss becomes NaN or infinite (checked at each log).
        TrainingInterrupted: on Ctrl-C, after writing the checkpoints and an ``interrupted`` summary.
    A failure before the first step completes removes what this call created in ``out``.
    """
    config.validate()
    handlers = _handlers(callbacks)
    run = resolve(config)
    check_models(config, run)
    out = Path(config.out) if config.out else None
    _check_out(out)
    seed_everything(config.seed)
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        set_tf32(run.precision)
        torch.cuda.reset_peak_memory_stats(run.device)  # this run's peak, not an earlier run's in this process
    if run.compile:  # a study compiles one model per trial on the same code objects: start each run afresh,
        torch._dynamo.reset()  # or after 8 models dynamo's recompile limit would silently run them eagerly
    counts_at_start = dynamo_counts()
    generator, discriminator = build_models(config, run)
    size = generator.input_size
    data_kwargs = {
        "crop_size": size, "load_size": config.load_size, "direction": config.direction,
        "in_channels": generator.in_channels, "out_channels": generator.out_channels, "seed": config.seed,
    }
    train_set = PairedImageDataset(config.data, "train", **data_kwargs)
    if len(train_set) < config.batch_size:
        raise InvalidArgumentError(
            f"batch_size={config.batch_size} is larger than the training split ({len(train_set)} pairs)"
        )
    val_pairs = PairedImageDataset(config.data, "val", **data_kwargs).preload(run.device)
    preload = _should_preload(train_set, run, config.preload)
    batches = _batches(train_set, config, run, preload)
    step_fn = Pix2PixStep(generator, discriminator, config, run)

    created = out is not None and not out.exists()
    written: list[Path] = []
    step = 0
    start = time.perf_counter()
    compile_counts: dict[str, int] = {}
    initial: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}

    def summary_now(last: dict[str, Any], **extra: Any) -> dict[str, Any]:
        train_seconds = time.perf_counter() - start
        after = dynamo_counts()
        return {
            "steps": step,
            "images": step * config.batch_size,
            "train_seconds": train_seconds,
            "img_per_s": step * config.batch_size / max(train_seconds, 1e-9),
            "initial_val_l1": initial.get("val_l1"),
            **{k: last.get(k) for k in ("val_l1", "val_psnr", "val_ssim")},
            "device": str(run.device),
            "precision": run.precision,
            "channels_last": run.channels_last,
            "compile": run.compile,
            "preload": preload,
            "graph_breaks": after["graph_breaks"] - counts_at_start["graph_breaks"],
            "recompiles_after_warmup": (after["frames"] - compile_counts["frames"]) if compile_counts else 0,
            "peak_mem_mib": _peak_mib(run),
            **extra,
        }

    try:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            written.append(out / "config.json")
            written[-1].write_text(json.dumps(
                config.to_dict() | {"resolved": {"device": str(run.device), "precision": run.precision,
                                                 "channels_last": run.channels_last, "compile": run.compile,
                                                 "preload": preload}}, indent=2) + "\n")
            written.append(out / "metrics.csv")
        writer = _MetricsWriter(out / "metrics.csv" if out else None)

        initial, _ = evaluate(generator, val_pairs, run)
        record0 = {"step": 0, "elapsed_s": 0.0, **initial}
        writer.write(record0)
        last_eval = record0
        _emit(handlers, "on_eval", record0)

        running = {k: torch.zeros((), device=run.device) for k in ("loss_d", "loss_g_gan", "loss_g_l1")}
        since_log = 0
        start = time.perf_counter()
        log_start, log_step = start, 0
        last_record: dict[str, Any] = record0
        while True:
            elapsed = time.perf_counter() - start
            done_steps = config.steps is not None and step >= config.steps
            done_time = config.seconds is not None and elapsed >= config.seconds
            if done_steps or done_time:
                break
            progress = max(step / config.steps if config.steps else 0.0,
                           elapsed / config.seconds if config.seconds else 0.0)
            lr = config.lr * config.lr_factor(progress)
            step_fn.set_lr(lr)
            x, y = next(batches)
            losses = step_fn(step_fn.prepare(x), step_fn.prepare(y))
            for key, value in losses.items():
                running[key] += value
            step += 1
            since_log += 1
            if step == WARMUP_STEPS:
                compile_counts = dynamo_counts()
            final = (config.steps is not None and step >= config.steps)
            evaluate_now = config.eval_every and step % config.eval_every == 0
            if step % config.log_every == 0 or evaluate_now or final:
                if run.device.type == "cuda":
                    torch.cuda.synchronize(run.device)
                now = time.perf_counter()
                means = {k: float(v) / since_log for k, v in running.items()}  # the one host sync
                if not all(math.isfinite(v) for v in means.values()):
                    raise NonFiniteLossError(
                        f"a loss became non-finite by step {step}: "
                        + ", ".join(f"{k}={v:.4g}" for k, v in means.items())
                    )
                record = {
                    "step": step, "elapsed_s": now - start,
                    "img_per_s": (step - log_step) * config.batch_size / max(now - log_start, 1e-9),
                    "lr": lr, **means,
                }
                for value in running.values():
                    value.zero_()
                since_log, log_start, log_step = 0, now, step
                if evaluate_now:
                    metrics, triple = evaluate(generator, val_pairs, run)
                    record |= metrics
                    last_eval = record
                    if out is not None:
                        save_samples(out / "samples" / f"step_{step}.png", triple, config.sample_count)
                writer.write(record)
                last_record = record
                _emit(handlers, "on_log", record)
                if evaluate_now:
                    _emit(handlers, "on_eval", record)

        if "val_l1" not in last_record or last_record["step"] != step:
            metrics, triple = evaluate(generator, val_pairs, run)
            record = {"step": step, "elapsed_s": time.perf_counter() - start, **metrics}
            writer.write(record)
            if out is not None:
                save_samples(out / "samples" / f"step_{step}.png", triple, config.sample_count)
            _emit(handlers, "on_eval", record)
            last_record = last_record | record
        summary = summary_now(last_record, interrupted=False)
        if out is not None:
            if config.save_checkpoints:
                save_checkpoint(out / "netG.pth.tar", generator, step_fn.opt_g)
                save_checkpoint(out / "netD.pth.tar", discriminator, step_fn.opt_d)
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except KeyboardInterrupt:
        if step == 0:
            _remove_created(out, created, written)
            raise TrainingInterrupted(out, 0, []) from None
        summary = summary_now(last_eval, interrupted=True, val_step=last_eval.get("step"))
        kept = _keep_interrupted(out, config, generator, discriminator, step_fn, summary)
        raise TrainingInterrupted(out, step, kept) from None
    except BaseException:
        if step == 0:
            _remove_created(out, created, written)
        raise
    _emit(handlers, "on_end", summary)
    return summary


def _check_out(out: Path | None) -> None:
    """Refuse a run folder that cannot take a new run, saying what is in it."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"out={str(out)!r} exists and is not a folder")
    if not (out / "metrics.csv").exists():
        return
    try:
        previous = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict):
        state = "no summary.json: still running, or stopped without one"
    elif previous.get("interrupted"):
        state = f"interrupted at step {previous.get('steps')}"
    else:
        state = f"finished after {previous.get('steps')} steps"
    raise InvalidArgumentError(
        f"out={str(out)!r} already holds a training run ({state}); training does not resume from a folder, "
        "so choose a new folder"
    )


def _remove_created(out: Path | None, created: bool, written: list[Path]) -> None:
    """Undo a run that failed before its first step: the folder if this run made it, else its files."""
    if out is None:
        return
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in written:
        path.unlink(missing_ok=True)


def _keep_interrupted(out: Path | None, config: TrainConfig, generator: torch.nn.Module,
                      discriminator: torch.nn.Module, step_fn: Pix2PixStep, summary: dict[str, Any]) -> list[str]:
    """After Ctrl-C: the checkpoints as they are and a summary marked interrupted; the names kept."""
    if out is None:
        return []
    if config.save_checkpoints:
        save_checkpoint(out / "netG.pth.tar", generator, step_fn.opt_g)
        save_checkpoint(out / "netD.pth.tar", discriminator, step_fn.opt_d)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    names = ["netG.pth.tar", "netD.pth.tar", "summary.json", "metrics.csv", "samples", "config.json"]
    return [name for name in names if (out / name).exists()]


def _peak_mib(run: Resolved) -> float:
    if run.device.type == "cuda":
        return torch.cuda.max_memory_allocated(run.device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
