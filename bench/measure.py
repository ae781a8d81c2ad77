"""Measured sweeps: throughput, latency, memory and compile cost of each variant, in measuring children.

:class:`MeasuredPlan` is the sweep plan (see :func:`bench.sweep.run_plan`). For each valid variant it
writes the static row (FLOPs are needed for TFLOP/s), then sends one :class:`~bench.records.MeasureJob`
to a launcher: every (task, mode, precision, layout) at the variant's batch size, the modes of one
group measured interleaved in the same child. A configuration that runs out of memory, raises,
crashes the child or hangs costs only its own row (``oom`` / ``error`` / ``timeout``, with the phase
in the reason): the others are measured again in a fresh child. A fresh child then runs a
:class:`~bench.records.CompileJob`: the warm compile time, reusing the on-disk Inductor cache the first
child filled (``compile_warm_s``). The sweep goes on whatever happens.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from bench.env import ENV_FILE, read_env, write_json_atomic
from bench.launcher import LAUNCHERS, Launcher, OnMeasured, PhaseLimits
from bench.options import MeasureOptions
from bench.records import (
    BASELINE_MODE,
    BASELINE_TASKS,
    CeilingJob,
    CompileJob,
    Envelope,
    MeasureConfig,
    MeasureJob,
    RawMeasurement,
)
from bench.rows import (
    AnyRow,
    ConfigColumns,
    Failure,
    MeasuredRow,
    RowKey,
    StaticRow,
    failed_row,
    measured_figures,
    row_from_dict,
    static_columns,
)
from bench.store import JsonlStore
from bench.sweep import EmitRows, StaticPlan, SweepPlan, static_key, static_row
from bench.variant import VariantSpec
from nectargan.runtime import Device, precision_reason, resolve_devices
from nectargan.train.config import TrainConfig

INDUCTOR_CACHE = "inductor-cache"


class Flops(NamedTuple):
    """FLOPs per image of the generator: forward, and forward + backward."""

    forward: int
    train: int


def measure_key(spec: VariantSpec, cfg: MeasureConfig, device: str) -> str:
    return str(RowKey.measured(spec, cfg, device))


def measure_configs(spec: VariantSpec, options: MeasureOptions) -> list[MeasureConfig]:
    """Every task x precision x layout x mode at the variant's batch size. The baseline mode is
    NectarGAN's loop: fp32 and NCHW whatever else is asked, once per task, and also at NectarGAN's
    batch 1 when the variant's batch is larger."""
    configs: list[MeasureConfig] = []
    for task, precision, layout, mode in itertools.product(options.tasks, options.precisions, options.layouts,
                                                           options.modes):
        d = (options.d_layers, options.d_features) if task == "gan_train" else (None, None)
        if mode == BASELINE_MODE:
            precision, layout = "fp32", "nchw"
        batches = [spec.batch_size]
        if mode == BASELINE_MODE and task in BASELINE_TASKS and spec.batch_size != 1:
            batches.append(1)
        for batch in batches:
            cfg = MeasureConfig(task, mode, precision, layout, batch, *d)
            if cfg not in configs:
                configs.append(cfg)
    return configs


def config_reason(spec: VariantSpec, cfg: MeasureConfig, device: str) -> str | None:
    """Why ``cfg`` cannot run on ``device`` (None when it can): a baseline outside training, a precision
    the device lacks, or (gan_train) a discriminator the trainer itself would refuse."""
    if cfg.baseline and cfg.task not in BASELINE_TASKS:
        return f"mode {BASELINE_MODE!r} is NectarGAN's training loop: use it with task train or gan_train"
    reason = precision_reason(cfg.precision, device)
    if reason is None and cfg.task == "gan_train":
        import torch

        from nectargan.errors import InvalidArgumentError
        from nectargan.train.config import Resolved
        from nectargan.train.networks import check_models

        config = TrainConfig(generator=spec.model_kwargs(), d_layers=cfg.d_layers or TrainConfig.d_layers,
                             d_features=cfg.d_features or TrainConfig.d_features)
        try:
            check_models(config, Resolved(torch.device(device), cfg.precision, False, False))
        except InvalidArgumentError as exc:
            reason = str(exc)
    return reason


class MeasuredPlan:
    """The static row, then every measured configuration of each valid variant (see the module docstring)."""

    def __init__(self, options: MeasureOptions, devices: list[str] | None = None) -> None:
        """``devices``: the devices as the measuring host names them, when that is not this machine (a
        cluster's driver computes the row keys of GPUs it does not have); default: resolved here."""
        self.options = options
        self._launcher: Launcher | None = None
        self._devices = devices
        self.ceilings: dict[str, dict[str, float]] = {}
        self.ceiling_others: dict[str, float | None] = {}
        self._gan_flops: dict[tuple, int] = {}
        self.directory = Path(".")

    @property
    def launcher(self) -> Launcher:
        """Made on first use, so a plan that only computes keys starts nothing."""
        if self._launcher is None:
            self._launcher = LAUNCHERS[self.options.launcher]()
        return self._launcher

    def devices(self) -> list[str]:
        return list(self._devices) if self._devices is not None else resolve_devices(self.options.device)

    def keys(self, spec: VariantSpec) -> set[str]:
        keys = {static_key(spec)}
        if spec.invalid_reason() is None:
            keys |= {measure_key(spec, c, d) for c in measure_configs(spec, self.options) for d in self.devices()}
        return keys

    @property
    def limits(self) -> PhaseLimits:
        return PhaseLimits(long_s=self.options.timeout_s, short_s=self.options.block_timeout_s)

    def finish(self) -> None:
        if self._launcher is not None:
            self._launcher.close()

    def failed_rows(self, spec: VariantSpec, device: str, done: set[str], failure: Failure) -> list[AnyRow]:
        rows: list[AnyRow] = [] if static_key(spec) in done else [failed_row(static_columns(spec), failure)]
        if spec.invalid_reason() is None:
            rows += [failed_row(self._columns(spec, cfg, device), failure)
                     for cfg in measure_configs(spec, self.options) if measure_key(spec, cfg, device) not in done]
        return rows

    def start(self, directory: Path) -> None:
        """Measure the matmul ceilings once per run (kept in env.json, reused on resume)."""
        self.directory = directory
        env = read_env(directory) or {}
        if not env.get("matmul_ceiling_tflops"):
            env["matmul_ceiling_tflops"], env["matmul_ceiling_cpu_others"] = self._measure_ceilings()
        self.ceilings = env["matmul_ceiling_tflops"]
        self.ceiling_others = env.get("matmul_ceiling_cpu_others") or {}
        env["measure"] = asdict(self.options)
        write_json_atomic(directory / ENV_FILE, env)

    def _env(self, device: str) -> tuple[str, dict[str, str]]:
        """The measuring child's device and environment. Its Inductor cache is the ``inductor_cache``
        option (one cache shared by several runs, as the GPU check's phases share one), else the run
        folder's own ``DIR/inductor-cache``. (Not TORCHINDUCTOR_CACHE_DIR of this process: torch writes
        its default there on first use, which would silently replace the run's own cache.)"""
        job_device, env = self.launcher.place(device)
        cache = Path(self.options.inductor_cache or self.directory / INDUCTOR_CACHE)
        return job_device, env | {"TORCHINDUCTOR_CACHE_DIR": str(cache.resolve())}

    def _measure_ceilings(self) -> tuple[dict[str, dict[str, float]], dict[str, float | None]]:
        """The matmul ceiling (TFLOP/s) per precision that can run, on the first device, and the cores other
        processes kept busy meanwhile (CPU)."""
        device = self.devices()[0]
        runnable = [p for p in self.options.precisions if precision_reason(p, device) is None]
        if not runnable:
            return {}, {}
        job_device, env = self._env(device)
        job = CeilingJob(job_device, runnable, self.options.threads, self.options.min_block_s)
        envelope = self.launcher.launch(job, env, self.limits)
        if envelope.status != "ok":
            return {}, {}
        return {device: envelope.ceilings}, {device: envelope.ceiling_others}

    def rows(self, spec: VariantSpec, device: str, done: set[str], store: JsonlStore,
             emit: EmitRows | None = None) -> list[AnyRow]:
        static = static_row(spec) if static_key(spec) not in done else None
        rows = [static] if static else []
        if static and emit is not None:
            emit([static])
        if spec.invalid_reason() is None:
            rows += self.measure_variant(spec, device, _static_flops(spec, static, store), done, emit)
        return rows

    def _flops_per_image(self, spec: VariantSpec, cfg: MeasureConfig, flops: Flops) -> int:
        """FLOPs per image of the task: G forward, G forward + backward, or the whole GAN step."""
        if cfg.task == "gan_train":
            key = (spec, cfg.d_layers, cfg.d_features)
            if key not in self._gan_flops:
                from bench.profile import gan_step_flops

                self._gan_flops[key] = gan_step_flops(spec, int(cfg.d_layers or 0), int(cfg.d_features or 0))
            return self._gan_flops[key]
        return flops.train if cfg.task == "train" else flops.forward

    def _measure_isolated(self, spec: VariantSpec, configs: list[MeasureConfig], job_device: str,
                          env: dict[str, str], on_measured: OnMeasured | None = None,
                          ) -> tuple[dict[MeasureConfig, RawMeasurement], dict[MeasureConfig, Failure], int | None]:
        """Measure ``configs``; a configuration that fails costs only itself: the rest are measured again
        (the launcher gives a fresh child after any failure). Each pass ends with every configuration
        measured or one more failed, so there are at most ``len(configs)`` passes. ``on_measured`` hears
        each group's measurements as the child reports them.

        Returns the raw measurements, a status and reason per failed configuration, and the threads used.
        """
        options = self.options
        raws: dict[MeasureConfig, RawMeasurement] = {}
        failures: dict[MeasureConfig, Failure] = {}
        pending, threads = list(configs), options.threads
        while pending:
            job = MeasureJob(job_device, spec.to_dict(), pending, options.blocks, options.min_block_s,
                             options.threads, options.max_batch, options.cpu_mkldnn)
            envelope = self.launcher.launch(job, env, self.limits, on_measured=on_measured)
            threads = envelope.threads or threads
            raws |= {raw.config: raw for raw in envelope.measurements if raw.config in pending}
            pending = [c for c in pending if c not in raws]
            if envelope.status == "ok":
                failures |= {c: Failure("error", "the child returned no result for this configuration")
                             for c in pending}
                break
            # the configuration that was running failed; a failure no configuration owns takes them all
            culprits = [envelope.failed_config] if envelope.failed_config in pending else list(pending)
            failures |= {c: Failure(envelope.status, envelope.error) for c in culprits}
            pending = [c for c in pending if c not in culprits]
        return raws, failures, threads

    def _columns(self, spec: VariantSpec, cfg: MeasureConfig, device: str) -> dict[str, Any]:
        """A measured row's identifying columns, with the CPU's oneDNN setting where it applies."""
        mkldnn = self.options.cpu_mkldnn if not Device.parse(device).cuda else None
        return ConfigColumns.of(spec, cfg, device, self.options.threads, mkldnn)

    def _ok_row(self, spec: VariantSpec, raw: RawMeasurement, device: str, flops: Flops,
                threads: int | None, warm: RawMeasurement | None = None) -> MeasuredRow:
        cfg = raw.config
        per_image = self._flops_per_image(spec, cfg, flops)
        figures = measured_figures(raw, per_image, self.ceilings.get(device, {}).get(cfg.precision),
                                   self.ceiling_others.get(device))
        return MeasuredRow(**(self._columns(spec, cfg, device) | {"threads": raw.threads or threads}), **figures,
                           flops_per_img=per_image, compile_warm_s=warm.first_call_s if warm else None,
                           finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def measure_variant(self, spec: VariantSpec, device: str, flops: Flops,
                        done: set[str] | frozenset[str] = frozenset(), emit: EmitRows | None = None,
                        ) -> list[AnyRow]:
        """The measured rows of one variant on one device that are not ``done`` (configs that cannot run
        become invalid rows).

        With ``emit``, each group's rows go out as soon as the child reports the group, so a sweep killed
        later keeps them. Rows that still wait for a figure are held: a compiled step's row until its check
        (which compiles again, after the group's timing), compiled rows when a warm-compile child follows,
        and every row when the largest batch is probed after all groups.
        """
        options = self.options
        rows: list[AnyRow] = []
        runnable = []
        for cfg in measure_configs(spec, options):
            if measure_key(spec, cfg, device) in done:
                continue
            reason = config_reason(spec, cfg, device)
            if reason:
                rows.append(failed_row(self._columns(spec, cfg, device), Failure("invalid", reason)))
            else:
                runnable.append(cfg)
        if rows and emit is not None:
            emit(list(rows))
        if not runnable:
            return rows

        def stream(measured: list[RawMeasurement]) -> None:
            if emit is None or options.max_batch:
                return
            ready = [r for r in measured if r.config in runnable and not (r.config.compiled and options.warm_compile)
                     and (r.check or not r.config.checks_step)]  # a compiled step's row waits for its check
            if ready:
                emit([self._ok_row(spec, r, device, flops, None) for r in ready])

        job_device, env = self._env(device)
        raws, failures, threads = self._measure_isolated(spec, runnable, job_device, env, stream)
        warm: Envelope | None = None
        compiled = [c for c in raws if c.compiled]
        if options.warm_compile and compiled:
            warm = self.launcher.launch(CompileJob(job_device, spec.to_dict(), compiled, options.threads,
                                                   options.cpu_mkldnn), env, self.limits, fresh=True)
        for cfg in runnable:
            raw = raws.get(cfg)
            if raw is None:
                rows.append(failed_row(self._columns(spec, cfg, device), failures[cfg]))
                continue
            warm_raw = warm.measurement(cfg) if warm is not None else None
            rows.append(self._ok_row(spec, raw, device, flops, threads, warm_raw))
        return rows


def _static_flops(spec: VariantSpec, static: AnyRow | None, store: JsonlStore) -> Flops:
    """FLOPs per image (forward, forward + backward) from the variant's static row (just written, or in the
    store when resuming), else counted now."""
    if static is None:
        key = static_key(spec)
        static = next((row_from_dict(r) for r in store.iter_rows() if r["key"] == key), None)
    if not isinstance(static, StaticRow):
        from bench.profile import flop_counter_counts

        fwd, _conv, train = flop_counter_counts(spec)
        return Flops(fwd, train)
    return Flops(static.flops_fwd, static.flops_train)


def plan_for(options: MeasureOptions | None, devices: list[str] | None = None) -> SweepPlan:
    """The plan a sweep runs: :class:`MeasuredPlan` with ``options``, or :class:`StaticPlan` without
    (``--static-only``). Remote tasks build theirs from the same picklable ``options``."""
    return StaticPlan() if options is None else MeasuredPlan(options, devices=devices)
