"""The training loop: data, budget, LR decay, evaluation, callbacks (the run folder's files: :mod:`.run_folder`).

The loop emits events to callbacks (``on_log``, ``on_eval``, ``on_end``, each taking a dict); the
CLI's progress bar and the Optuna trials subscribe to them. An exception raised by a callback (for
example Optuna's ``TrialPruned``) stops training and propagates to the caller.

Everything that can be checked is checked before the run folder is touched (settings, the models on
the meta device, memory, data); a failure before the first step completes removes what it created,
so the same command can simply be run again. Ctrl-C after that keeps the run: the checkpoints and a
``summary.json`` marked ``interrupted`` (see :class:`TrainingInterrupted`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nectargan.data.floor import LEARN_MARGIN_DB, Floor, trivial_floor
from nectargan.data.paired import PairedImageDataset, PreloadedPairs
from nectargan.errors import InvalidArgumentError, NectarGANError
from nectargan.metrics import image_metrics
from nectargan.models.patchgan.model import Discriminator
from nectargan.models.unet.model import UnetGenerator
from nectargan.runtime import dynamo_counts, set_tf32
from nectargan.train.config import Resolved, TrainConfig, resolve
from nectargan.train.networks import build_models, check_models
from nectargan.train.run_folder import (
    MetricsWriter,
    check_run_folder,
    keep_interrupted,
    remove_created,
    save_run,
    save_samples,
    write_run_config,
)
from nectargan.train.step import Pix2PixStep

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


def fit(config: TrainConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train G and D under ``config``; return a summary (also written to ``out/summary.json``).

    The summary holds the dataset's floor (:func:`nectargan.data.floor.trivial_floor`, as ``floor``), the
    dB by which the final val PSNR beats its better trivial predictor (``db_over_floor``) and whether that
    is at least ``LEARN_MARGIN_DB`` (``learned``).

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
    session = _prepare(config, _handlers(callbacks))
    out = session.out
    created = out is not None and not out.exists()
    try:
        summary = _train(session)
    except KeyboardInterrupt:
        if session.step == 0:
            remove_created(out, created, session.written)
            raise TrainingInterrupted(out, 0, []) from None
        last_eval = session.last_eval
        summary = _summary(session, last_eval, interrupted=True, val_step=last_eval.get("step"))
        kept = keep_interrupted(out, config, session.generator, session.discriminator, session.step_fn, summary)
        raise TrainingInterrupted(out, session.step, kept) from None
    except BaseException:
        if session.step == 0:
            remove_created(out, created, session.written)
        raise
    _emit(session.handlers, "on_end", summary)
    return summary


@dataclass
class _Session:
    """One :func:`fit` call: what it trains with, and how far it has got (what a Ctrl-C keeps)."""

    config: TrainConfig
    run: Resolved
    handlers: list[Handler]
    out: Path | None
    generator: UnetGenerator
    discriminator: Discriminator
    step_fn: Pix2PixStep
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    val_pairs: PreloadedPairs
    preload: bool
    floor: Floor  # the trivial predictors this run's val PSNR must beat (nectargan.data.floor)
    counts_at_start: dict[str, int]  # torch._dynamo's counters before this run: its own breaks are the difference
    compile_counts: dict[str, int] = field(default_factory=dict)  # the counters after the warm-up steps
    written: list[Path] = field(default_factory=list)  # removed again if the run fails before its first step
    writer: MetricsWriter = field(default_factory=lambda: MetricsWriter(None))
    step: int = 0
    start: float = field(default_factory=time.perf_counter)
    initial: dict[str, Any] = field(default_factory=dict)  # the val metrics before the first step
    last_eval: dict[str, Any] = field(default_factory=dict)


def _prepare(config: TrainConfig, handlers: list[Handler]) -> _Session:
    """Everything checked and built before the run folder is touched: device, models, data, the step."""
    run = resolve(config)
    check_models(config, run)
    out = Path(config.out) if config.out else None
    check_run_folder(out)
    seed_everything(config.seed)
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        set_tf32(run.precision)
        torch.cuda.reset_peak_memory_stats(run.device)  # this run's peak, not an earlier run's in this process
    if run.compile:  # a study compiles one model per trial on the same code objects: start each run afresh,
        torch._dynamo.reset()  # or after 8 models dynamo's recompile limit would silently run them eagerly
    counts_at_start = dynamo_counts()
    generator, discriminator = build_models(config, run)
    data_kwargs = {
        "crop_size": generator.input_size, "load_size": config.load_size, "direction": config.direction,
        "in_channels": generator.in_channels, "out_channels": generator.out_channels, "seed": config.seed,
    }
    train_set = PairedImageDataset(config.data, "train", **data_kwargs)
    if len(train_set) < config.batch_size:
        raise InvalidArgumentError(
            f"batch_size={config.batch_size} is larger than the training split ({len(train_set)} pairs)"
        )
    val_pairs = PairedImageDataset(config.data, "val", **data_kwargs).preload(run.device)
    preload = _should_preload(train_set, run, config.preload)
    floor = trivial_floor(config.data, generator.input_size, config.direction, generator.in_channels,
                          generator.out_channels)  # cached in the dataset folder: computed once per dataset
    return _Session(
        config=config, run=run, handlers=handlers, out=out, generator=generator, discriminator=discriminator,
        step_fn=Pix2PixStep(generator, discriminator, config, run), batches=_batches(train_set, config, run, preload),
        val_pairs=val_pairs, preload=preload, floor=floor, counts_at_start=counts_at_start,
    )


def _train(session: _Session) -> dict[str, Any]:
    """The run folder, the first evaluation, the steps, then the last evaluation, checkpoints and summary."""
    out = session.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        session.written.append(out / "config.json")
        write_run_config(out, session.config, session.run, session.preload)
        session.written.append(out / "metrics.csv")
        session.writer = MetricsWriter(out / "metrics.csv")
    session.initial, _ = evaluate(session.generator, session.val_pairs, session.run)
    first = {"step": 0, "elapsed_s": 0.0, **session.initial}
    session.writer.write(first)
    session.last_eval = first
    _emit(session.handlers, "on_eval", first)
    last_record = _run_steps(session, first)
    return _finish(session, last_record)


def _run_steps(session: _Session, last_record: dict[str, Any]) -> dict[str, Any]:
    """Train until the budget is spent, logging every ``log_every`` steps and evaluating every
    ``eval_every``; return the last record logged."""
    config, run, step_fn = session.config, session.run, session.step_fn
    running = {k: torch.zeros((), device=run.device) for k in ("loss_d", "loss_g_gan", "loss_g_l1")}
    since_log = 0
    session.start = time.perf_counter()
    log_start, log_step = session.start, 0
    while True:
        elapsed = time.perf_counter() - session.start
        done_steps = config.steps is not None and session.step >= config.steps
        done_time = config.seconds is not None and elapsed >= config.seconds
        if done_steps or done_time:
            return last_record
        progress = max(session.step / config.steps if config.steps else 0.0,
                       elapsed / config.seconds if config.seconds else 0.0)
        lr = config.lr * config.lr_factor(progress)
        step_fn.set_lr(lr)
        x, y = next(session.batches)
        losses = step_fn(step_fn.prepare(x), step_fn.prepare(y))
        for key, value in losses.items():
            running[key] += value
        session.step += 1
        since_log += 1
        step = session.step
        if step == WARMUP_STEPS:
            session.compile_counts = dynamo_counts()
        final = config.steps is not None and step >= config.steps
        evaluate_now = config.eval_every and step % config.eval_every == 0
        if step % config.log_every == 0 or evaluate_now or final:
            now, means = _mean_losses(running, since_log, run, step)
            record = {
                "step": step, "elapsed_s": now - session.start,
                "img_per_s": (step - log_step) * config.batch_size / max(now - log_start, 1e-9),
                "lr": lr, **means,
            }
            since_log, log_start, log_step = 0, now, step
            if evaluate_now:
                record |= _evaluate_and_sample(session)
                session.last_eval = record
            session.writer.write(record)
            last_record = record
            _emit(session.handlers, "on_log", record)
            if evaluate_now:
                _emit(session.handlers, "on_eval", record)


def _mean_losses(running: dict[str, torch.Tensor], steps: int, run: Resolved,
                 step: int) -> tuple[float, dict[str, float]]:
    """The time now and the mean losses since the last log (the one host sync); the sums start again at 0.

    Raises:
        NonFiniteLossError: a mean is NaN or infinite.
    """
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    now = time.perf_counter()
    means = {k: float(v) / steps for k, v in running.items()}
    if not all(math.isfinite(v) for v in means.values()):
        raise NonFiniteLossError(
            f"a loss became non-finite by step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in means.items())
        )
    for value in running.values():
        value.zero_()
    return now, means


def _evaluate_and_sample(session: _Session) -> dict[str, Any]:
    """The val metrics now, and (with a run folder) ``samples/step_N.png``."""
    metrics, triple = evaluate(session.generator, session.val_pairs, session.run)
    if session.out is not None:
        save_samples(session.out / "samples" / f"step_{session.step}.png", triple, session.config.sample_count)
    return metrics


def _finish(session: _Session, last_record: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the final weights unless the last log just did; write the checkpoints and summary.json."""
    if "val_l1" not in last_record or last_record["step"] != session.step:
        metrics, triple = evaluate(session.generator, session.val_pairs, session.run)
        record = {"step": session.step, "elapsed_s": time.perf_counter() - session.start, **metrics}
        session.writer.write(record)
        if session.out is not None:
            save_samples(session.out / "samples" / f"step_{session.step}.png", triple, session.config.sample_count)
        _emit(session.handlers, "on_eval", record)
        last_record = last_record | record
    summary = _summary(session, last_record, interrupted=False)
    if session.out is not None:
        save_run(session.out, session.config, session.generator, session.discriminator, session.step_fn, summary)
    return summary


def _summary(session: _Session, last: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What the run did: steps, images, throughput, the val metrics of ``last``, how it ran and its peak memory."""
    run, step, batch_size = session.run, session.step, session.config.batch_size
    train_seconds = time.perf_counter() - session.start
    after = dynamo_counts()
    compile_counts = session.compile_counts
    psnr = last.get("val_psnr")
    return {
        "steps": step,
        "images": step * batch_size,
        "train_seconds": train_seconds,
        "img_per_s": step * batch_size / max(train_seconds, 1e-9),
        "initial_val_l1": session.initial.get("val_l1"),
        **{k: last.get(k) for k in ("val_l1", "val_psnr", "val_ssim")},
        "floor": session.floor.to_dict(),
        "db_over_floor": session.floor.margin(psnr),
        "learned": session.floor.learned(psnr, LEARN_MARGIN_DB),
        "device": str(run.device),
        "precision": run.precision,
        "channels_last": run.channels_last,
        "compile": run.compile,
        "preload": session.preload,
        "graph_breaks": after["graph_breaks"] - session.counts_at_start["graph_breaks"],
        "recompiles_after_warmup": (after["frames"] - compile_counts["frames"]) if compile_counts else 0,
        "peak_mem_mib": _peak_mib(run),
        **extra,
    }


def _peak_mib(run: Resolved) -> float:
    if run.device.type == "cuda":
        return torch.cuda.max_memory_allocated(run.device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
