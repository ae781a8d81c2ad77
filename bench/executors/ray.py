"""Ray core: a sweep as one task per variant, study workers as K tasks, on ``ray.init(address=...)``.

A sweep keeps its ordinary driver (:func:`bench.sweep.run_plan`) with :class:`RayPlan` as its plan:
the driver's worker threads each keep one variant in flight as a Ray task asking ``num_gpus`` (Ray
sets the task's ``CUDA_VISIBLE_DEVICES``, so it measures on ``cuda:0``), and write the rows the task
returns. The driver is therefore the only writer of ``results.jsonl``, resuming works as locally,
and a row is written once, however often its task ran. A task whose worker process or node is lost
is run again by Ray (``max_retries``); an out-of-memory inside the measurement is an ``oom`` row
(the measuring child reports it); one that Ray's memory monitor kills the task for becomes ``oom``
rows too. Ray retries such a kill forever by default: a local instance started here is told not to
(``task_oom_retries = 0``); start a cluster with ``RAY_task_oom_retries=0 ray start ...`` for the same.
A task that fails after its retries becomes ``error`` rows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from bench.env import ENV_FILE, collect_env, read_env, write_json_atomic
from bench.executors import ExecutorConfig, ExecutorError, Outcome, check_gpus, here, last_line, remote_device
from bench.measure import plan_for
from bench.options import MeasureOptions
from bench.rows import AnyRow, Failure
from bench.store import JsonlStore, MemoryStore, Row
from bench.sweep import EmitRows, SweepPlan, static_key
from bench.variant import VariantSpec

_connect_lock = threading.Lock()


def connect(config: ExecutorConfig) -> None:
    """Join the Ray cluster at ``config.address`` (``auto``: the one ``ray start`` runs here), or start a
    local instance when there is no address; reuse a connection this process already has."""
    _check_answers(config.address)
    with _connect_lock:
        if ray.is_initialized():
            return
        extra: dict[str, Any] = {}
        if config.address is None and not os.environ.get("RAY_ADDRESS"):  # a new local instance: ours to set up
            extra["_system_config"] = {"task_oom_retries": 0}  # Ray retries OOM kills forever by default
        try:
            # Ray's own start-up lines (token authentication, "Started a local Ray instance") are not the
            # user's business: errors only
            logging.getLogger("ray").setLevel(logging.ERROR)
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, **extra)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            message = " ".join(str(exc).split())[:300]
            where = (f"cannot connect to Ray at address {config.address!r}" if config.address or
                     os.environ.get("RAY_ADDRESS") else "a local Ray instance could not start")
            raise ExecutorError(f"{where}: {message} (start a cluster with 'ray start --head', then use --address "
                                "auto)") from None


ANSWER_TIMEOUT_S = 5.0


def _check_answers(address: str | None) -> None:
    """An explicit ``host:port`` where nothing answers is one error line within seconds (``ray.init`` would
    retry its GCS connection for minutes)."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: left to Ray's own message
    try:
        socket.create_connection((host, int(port)), timeout=ANSWER_TIMEOUT_S).close()
    except OSError as exc:
        raise ExecutorError(f"cannot connect to Ray at address {address!r}: nothing answers on {host}:{port} "
                            f"({exc.strerror or exc}); start a cluster with 'ray start --head' and give its address, "
                            "or use --address auto on one of its nodes") from None


def check_available(config: ExecutorConfig, gpus: int) -> None:
    """Connect, and refuse a cluster without the GPUs each task asks for, before anything is written."""
    connect(config)
    capacity(config, gpus)


def _resources() -> dict[str, float]:
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def cluster_gpus(config: ExecutorConfig) -> float:
    """The GPUs of the Ray cluster at ``config.address`` (connecting first)."""
    connect(config)
    return _resources().get("GPU", 0.0)


def task_options(config: ExecutorConfig, gpus: int) -> dict[str, Any]:
    return {"num_gpus": gpus, "num_cpus": config.cpus_per_task or 1, "max_retries": config.max_retries,
            "retry_exceptions": False}


def capacity(config: ExecutorConfig, gpus: int) -> int:
    """How many tasks of this shape the cluster runs at once (the driver keeps that many in flight)."""
    resources = _resources()
    if gpus > 0:
        if resources.get("GPU", 0) < gpus:
            raise ExecutorError(f"the Ray cluster has {resources.get('GPU', 0):g} GPU(s) and each task asks for "
                                f"{gpus}; add GPU nodes, or ask for none: --gpus-per-task 0 ([executor] gpus_per_task "
                                "= 0) with the CPU as device (sweep --device cpu; study [fixed] device = \"cpu\")")
        return max(1, int(resources["GPU"] // gpus))
    return max(1, int(resources.get("CPU", 1) // (config.cpus_per_task or 1)))


@ray.remote
def _run_call(call: Callable[[], Any]) -> Any:
    return call()


@ray.remote
def _plan_start(factory: Callable[[], SweepPlan]) -> dict[str, Any]:
    """Run the plan's once-per-run start (the matmul ceiling) on a worker; return what it recorded."""
    plan = factory()
    try:
        with tempfile.TemporaryDirectory(prefix="nectargan-ray-") as tmp:
            plan.start(Path(tmp))
            env = read_env(Path(tmp)) or {}
    finally:
        plan.finish()
    worker = collect_env()
    keys = ("host", "cpu", "cpu_count", "gpu", "gpu_count", "torch", "cuda", "driver")
    return env | {"worker": {k: worker.get(k) for k in keys if k in worker} | here()}


@ray.remote
def _variant_rows(factory: Callable[[], SweepPlan], start_env: dict[str, Any], spec: VariantSpec, done: set[str],
                  static: Row | None) -> tuple[list[AnyRow], dict[str, Any]]:
    """One variant's missing rows, measured on this worker's device (its GPU is ``cuda:0``)."""
    plan = factory()
    try:
        with tempfile.TemporaryDirectory(prefix="nectargan-ray-") as tmp:
            write_json_atomic(Path(tmp) / ENV_FILE, start_env)  # the ceilings: measured once per run, not here
            store = MemoryStore([static] if static else [])
            plan.start(Path(tmp))
            rows = plan.rows(spec, plan.devices()[0], done, store)
    finally:
        plan.finish()
    return rows, here()


class RayPlan:
    """A sweep plan whose variants run as Ray tasks (see the module docstring).

    ``options`` None is a static sweep. ``factory`` (tests) replaces the plan the tasks build.
    """

    def __init__(self, options: MeasureOptions | None, config: ExecutorConfig,
                 factory: Callable[[], SweepPlan] | None = None) -> None:
        self.options = options
        self.config = config
        self.device = remote_device(options.device if options else "cpu", "ray")
        self.gpus = check_gpus(config, self.device)
        self.keys_plan = plan_for(options, [self.device])
        self.factory = factory or functools.partial(plan_for, options)
        self.start_env: dict[str, Any] = {}

    def devices(self) -> list[str]:
        """One driver thread per task the cluster can run at once; each task measures on its node's device."""
        connect(self.config)
        return [self.device] * capacity(self.config, self.gpus)

    def keys(self, spec: VariantSpec) -> set[str]:
        return self.keys_plan.keys(spec)

    def _options(self) -> dict[str, Any]:
        return task_options(self.config, self.gpus)

    def start(self, directory: Path) -> None:
        """The plan's start on a worker (once per run, reused on resume), recorded in env.json."""
        env = read_env(directory) or {}
        if self.options is not None and not env.get("matmul_ceiling_tflops"):
            try:
                started = ray.get(_plan_start.options(**self._options()).remote(self.factory))
            except ray.exceptions.RayError as exc:
                raise ExecutorError(f"the first Ray task (the matmul ceiling) failed: {_cause(exc)}") from None
            # the report's hardware is where the rows were measured, not this driver
            worker = started.get("worker", {})
            env |= started | {"driver_host": env.get("host")} | {
                k: worker[k] for k in ("host", "cpu", "cpu_count", "gpu", "gpu_count", "cuda", "driver") if k in worker}
        env["executor"] = self.config.describe()
        write_json_atomic(directory / ENV_FILE, env)
        self.start_env = {k: env[k] for k in ("matmul_ceiling_tflops", "matmul_ceiling_cpu_others") if k in env}

    def rows(self, spec: VariantSpec, device: str, done: set[str], store: JsonlStore,
             emit: EmitRows | None = None) -> list[AnyRow]:
        keys = self.keys(spec)
        static = None
        if static_key(spec) in done:
            static = next((r for r in store.iter_rows() if r["key"] == static_key(spec)), None)
        ref = _variant_rows.options(**self._options()).remote(self.factory, self.start_env, spec, done & keys, static)
        try:
            rows, where = ray.get(ref)
        except ray.exceptions.OutOfMemoryError as exc:
            return self.failed_rows(spec, self.device, done, Failure("oom", f"Ray's memory monitor stopped the task: "
                                                                     f"{_first_line(exc)}"))
        except ray.exceptions.RayTaskError as exc:  # the task itself raised: not retried
            return self.failed_rows(spec, self.device, done, Failure("error", f"Ray task failed: {_cause(exc)}"))
        except ray.exceptions.RayError as exc:  # its worker or node was lost, on every attempt
            return self.failed_rows(spec, self.device, done, Failure("error", f"Ray task lost after "
                                    f"{self.config.max_retries} retries: {type(exc).__name__}: {_first_line(exc)}"))
        return [dataclasses.replace(row, node=where["node"], visible_gpus=where["visible_gpus"]) for row in rows]

    def finish(self) -> None:
        return None

    def failed_rows(self, spec: VariantSpec, device: str, done: set[str], failure: Failure) -> list[AnyRow]:
        return self.keys_plan.failed_rows(spec, self.device, done, failure)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:300]


def _cause(exc: BaseException) -> str:
    """The task's own error, not Ray's wrapper (its last line names the exception)."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        return last_line(exc)
    return f"{type(exc).__name__}: {_first_line(exc)}"


def run_calls(calls: list[Callable[[], Any]], config: ExecutorConfig, gpus: int,
              on_poll: Callable[[], None] | None = None) -> list[Outcome]:
    """Run each call as one Ray task (retried ``max_retries`` times if its worker or node is lost) and
    wait for all; Ctrl-C cancels them (each sees a KeyboardInterrupt) and re-raises."""
    connect(config)
    capacity(config, gpus)  # a cluster without the GPUs asked for is an error now, not a wait forever
    refs = [_run_call.options(**task_options(config, gpus)).remote(call) for call in calls]
    index = {ref: i for i, ref in enumerate(refs)}
    outcomes = [Outcome(i, job_ids=[ref.hex()]) for i, ref in enumerate(refs)]
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                try:
                    outcomes[index[ref]].result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    outcomes[index[ref]].reason = _cause(exc)
            if on_poll:
                on_poll()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        ray.wait(pending, num_returns=len(pending), timeout=60)
        raise
    return outcomes
