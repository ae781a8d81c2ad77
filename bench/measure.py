"""Measured sweeps: throughput, latency, memory and compile cost of each variant, in measuring children.

:class:`MeasuredPlan` is the sweep plan (see :func:`bench.sweep.run_sweep`). For each valid variant it
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.env import ENV_FILE, read_env, write_json_atomic
from bench.grid import Grid, check_measure_value
from bench.launcher import LAUNCHERS, Launcher, OnMeasured, PhaseLimits
from bench.records import (
    BASELINE_MODE,
    BASELINE_TASKS,
    CeilingJob,
    CompileJob,
    Envelope,
    MeasureConfig,
    MeasureJob,
    RawMeasurement,
    measured_figures,
)
from bench.store import JsonlStore, Row
from bench.sweep import STATIC_KIND, EmitRows, StaticPlan, SweepPlan, base_row, static_key, static_row
from bench.variant import VariantSpec
from nectargan.errors import NectarGANError
from nectargan.runtime import Device, default_layouts, default_precision, precision_reason, resolve_devices
from nectargan.train.config import TrainConfig

MEASURE_KIND = "measure"
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_BLOCK_TIMEOUT_S = 300.0
INDUCTOR_CACHE = "inductor-cache"


@dataclass
class MeasureOptions:
    """How a measured sweep measures: what (tasks x modes x precisions x layouts), where and how long."""

    tasks: list[str]
    modes: list[str]
    precisions: list[str]
    layouts: list[str]
    device: str = "cpu"
    threads: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S  # per phase without progress: start, build, compile, check
    block_timeout_s: float = DEFAULT_BLOCK_TIMEOUT_S  # per phase without progress: warm-up, timed blocks
    cpu_mkldnn: bool = True  # False: torch.backends.mkldnn off in the child (a workaround, see README)
    d_layers: int = TrainConfig.d_layers  # the discriminator of gan_train
    d_features: int = TrainConfig.d_features
    blocks: int = 5
    min_block_s: float = 0.2
    launcher: str = "subprocess"
    warm_compile: bool = True
    inductor_cache: str | None = None
    max_batch: int | None = None


# The launcher of a CPU sweep: children forked from a server that imported torch once (start-up in well under
# a second). CUDA keeps plain subprocesses: forking a CUDA host process is only safe before CUDA is
# initialised, which the fork server guarantees but no GPU has checked yet.
DEFAULT_CPU_LAUNCHER = "forkserver"


def default_launcher(device: str) -> str:
    from bench.launcher import fork_server_available

    if Device.parse(device).cuda or not fork_server_available():
        return "subprocess"
    return DEFAULT_CPU_LAUNCHER


def _listed(value: Any) -> list[Any]:
    return list(dict.fromkeys(value if isinstance(value, list) else [value]))


def _single(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def measure_options(grid: Grid, device: str | None = None, **overrides: Any) -> MeasureOptions:
    """The grid's ``[measure]`` values, explicit ``overrides`` on top, then the defaults for the device.

    Every value is checked (names, types, ranges) before anything runs; a bad one is one line naming
    the setting.
    """
    given = {k: v for k, v in overrides.items() if v not in (None, [], ())}
    for key, value in given.items():
        check_measure_value(key, value, f"measure option {key}")
    table = dict(grid.measure) | given
    parsed = Device.parse(device or _single(table.get("device", "cpu")))
    if parsed.kind == "auto":  # decided here, first, so that the defaults below are this device's
        parsed = Device.parse(parsed.resolve()[0].partition(":")[0])
    device = parsed.label
    if table.get("launcher", "subprocess") not in LAUNCHERS:
        raise NectarGANError(f"launcher={table['launcher']!r} is not valid: use {', '.join(LAUNCHERS)}")
    table.setdefault("launcher", default_launcher(device))
    keep = {k: _single(table[k]) for k in ("threads", "timeout_s", "block_timeout_s", "cpu_mkldnn", "d_layers",
                                          "d_features", "blocks",
                                          "min_block_s", "launcher", "warm_compile", "inductor_cache", "max_batch")
            if k in table}
    return MeasureOptions(
        tasks=_listed(table.get("task", ["infer", "train"])),
        modes=_listed(table.get("mode", ["eager", "compile"])),
        precisions=_listed(table.get("precision", [default_precision(parsed)])),
        layouts=_listed(table.get("layout", default_layouts(parsed))),
        device=device, **keep,
    )


def measure_key(spec: VariantSpec, cfg: MeasureConfig, device: str) -> str:
    key = f"{MEASURE_KIND}|{spec.key}|{cfg.task}|{cfg.mode}|{cfg.precision}|{cfg.layout}|{device}"
    if cfg.task == "gan_train":
        key += f"|D{cfg.d_layers}x{cfg.d_features}"
    if cfg.batch_size != spec.batch_size:  # the baseline at NectarGAN's batch 1, beside a larger batch
        key += f"|b{cfg.batch_size}"
    return key


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
        from nectargan.train.loop import check_models

        config = TrainConfig(generator=spec.model_kwargs(), d_layers=cfg.d_layers or TrainConfig.d_layers,
                             d_features=cfg.d_features or TrainConfig.d_features)
        try:
            check_models(config, Resolved(torch.device(device), cfg.precision, False, False))
        except InvalidArgumentError as exc:
            reason = str(exc)
    return reason


def measured_row(spec: VariantSpec, cfg: MeasureConfig, device: str, threads: int | None) -> Row:
    """The identifying columns of a measured row: the variant, its config and the device."""
    row = base_row(MEASURE_KIND, measure_key(spec, cfg, device), spec) | {
        "task": cfg.task, "mode": cfg.mode, "precision": cfg.precision, "layout": cfg.layout,
        "batch_size": cfg.batch_size, "device": device, "threads": threads,
    }
    if cfg.task == "gan_train":
        row |= {"d_layers": cfg.d_layers, "d_features": cfg.d_features}
    return row


class MeasuredPlan:
    """The static row, then every measured configuration of each valid variant (see the module docstring)."""

    def __init__(self, options: MeasureOptions, launcher: Launcher | None = None,
                 devices: list[str] | None = None) -> None:
        """``devices``: the devices as the measuring host names them, when that is not this machine (a
        cluster's driver computes the row keys of GPUs it does not have); default: resolved here."""
        self.options = options
        self._launcher = launcher
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

    def failed_rows(self, spec: VariantSpec, device: str, done: set[str], status: str, reason: str) -> list[Row]:
        rows = [] if static_key(spec) in done else [base_row(STATIC_KIND, static_key(spec), spec)
                                                     | {"status": status, "reason": reason}]
        if spec.invalid_reason() is None:
            rows += [measured_row(spec, cfg, device, self.options.threads) | {"status": status, "reason": reason}
                     for cfg in measure_configs(spec, self.options) if measure_key(spec, cfg, device) not in done]
        return rows

    def start(self, directory: Path, store: JsonlStore) -> None:
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
             emit: EmitRows | None = None) -> list[Row]:
        static = static_row(spec) if static_key(spec) not in done else None
        rows = [static] if static else []
        if static and emit is not None:
            emit([static])
        if spec.invalid_reason() is None:
            rows += self.measure_variant(spec, device, _static_flops(spec, static, store), done, emit)
        return rows

    def _flops_per_image(self, spec: VariantSpec, cfg: MeasureConfig, flops: dict[str, int]) -> int:
        """FLOPs per image of the task: G forward, G forward + backward, or the whole GAN step."""
        if cfg.task == "gan_train":
            key = (spec, cfg.d_layers, cfg.d_features)
            if key not in self._gan_flops:
                from bench.profile import gan_step_flops

                self._gan_flops[key] = gan_step_flops(spec, int(cfg.d_layers or 0), int(cfg.d_features or 0))
            return self._gan_flops[key]
        return flops["flops_train" if cfg.task == "train" else "flops_fwd"]

    def _measure_isolated(self, spec: VariantSpec, configs: list[MeasureConfig], job_device: str,
                          env: dict[str, str], on_measured: OnMeasured | None = None,
                          ) -> tuple[dict[MeasureConfig, RawMeasurement], dict[MeasureConfig, Row], int | None]:
        """Measure ``configs``; a configuration that fails costs only itself: the rest are measured again
        (the launcher gives a fresh child after any failure). Each pass ends with every configuration
        measured or one more failed, so there are at most ``len(configs)`` passes. ``on_measured`` hears
        each group's measurements as the child reports them.

        Returns the raw measurements, a status and reason per failed configuration, and the threads used.
        """
        options = self.options
        raws: dict[MeasureConfig, RawMeasurement] = {}
        failures: dict[MeasureConfig, Row] = {}
        pending, threads = list(configs), options.threads
        while pending:
            job = MeasureJob(job_device, spec.to_dict(), pending, options.blocks, options.min_block_s,
                             options.threads, options.max_batch, options.cpu_mkldnn)
            envelope = self.launcher.launch(job, env, self.limits, on_measured=on_measured)
            threads = envelope.threads or threads
            raws |= {raw.config: raw for raw in envelope.measurements if raw.config in pending}
            pending = [c for c in pending if c not in raws]
            if envelope.status == "ok":
                failures |= {c: {"status": "error", "reason": "the child returned no result for this configuration"}
                             for c in pending}
                break
            # the configuration that was running failed; a failure no configuration owns takes them all
            culprits = [envelope.failed_config] if envelope.failed_config in pending else list(pending)
            failures |= {c: {"status": envelope.status, "reason": envelope.error} for c in culprits}
            pending = [c for c in pending if c not in culprits]
        return raws, failures, threads

    def _row(self, spec: VariantSpec, cfg: MeasureConfig, device: str) -> Row:
        """A measured row's identifying columns, with the CPU's oneDNN setting where it applies."""
        extra = {"cpu_mkldnn": self.options.cpu_mkldnn} if device == "cpu" else {}
        return measured_row(spec, cfg, device, self.options.threads) | extra

    def _ok_row(self, spec: VariantSpec, raw: RawMeasurement, device: str, flops: dict[str, int],
                threads: int | None, warm: RawMeasurement | None = None) -> Row:
        cfg = raw.config
        per_image = self._flops_per_image(spec, cfg, flops)
        return self._row(spec, cfg, device) | {
            "status": "ok", "reason": "", "flops_per_img": per_image,
            **measured_figures(raw, per_image, self.ceilings.get(device, {}).get(cfg.precision),
                               self.ceiling_others.get(device)),
            "compile_warm_s": warm.first_call_s if warm else None,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "threads": raw.threads or threads,
        }

    def measure_variant(self, spec: VariantSpec, device: str, flops: dict[str, int],
                        done: set[str] | frozenset[str] = frozenset(), emit: EmitRows | None = None) -> list[Row]:
        """The measured rows of one variant on one device that are not ``done`` (configs that cannot run
        become invalid rows).

        With ``emit``, each group's rows go out as soon as the child reports the group, so a sweep killed
        later keeps them. Rows that still wait for a figure are held: a compiled step's row until its check
        (which compiles again, after the group's timing), compiled rows when a warm-compile child follows,
        and every row when the largest batch is probed after all groups.
        """
        options = self.options
        rows: list[Row] = []
        runnable = []
        for cfg in measure_configs(spec, options):
            if measure_key(spec, cfg, device) in done:
                continue
            reason = config_reason(spec, cfg, device)
            if reason:
                rows.append(measured_row(spec, cfg, device, options.threads) | {"status": "invalid", "reason": reason})
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
                rows.append(self._row(spec, cfg, device) | failures[cfg])
                continue
            warm_raw = warm.measurement(cfg) if warm is not None else None
            rows.append(self._ok_row(spec, raw, device, flops, threads, warm_raw))
        return rows


def _static_flops(spec: VariantSpec, static: Row | None, store: JsonlStore) -> dict[str, int]:
    """FLOPs per image from the variant's static row (just written, or in the store when resuming)."""
    if static is None:
        key = static_key(spec)
        static = next((r for r in store.iter_rows() if r["key"] == key), None)
    if static is None or static.get("status") != "ok":
        from bench.profile import flop_counter_counts

        fwd, _conv, train = flop_counter_counts(spec)
        return {"flops_fwd": fwd, "flops_train": train}
    return {"flops_fwd": static["flops_fwd"], "flops_train": static["flops_train"]}


def plan_for(options: MeasureOptions | None, devices: list[str] | None = None) -> SweepPlan:
    """The plan a sweep runs: :class:`MeasuredPlan` with ``options``, or :class:`StaticPlan` without
    (``--static-only``). Remote tasks build theirs from the same picklable ``options``."""
    return StaticPlan() if options is None else MeasuredPlan(options, devices=devices)
