"""The row schema: what a run folder's ``results.jsonl`` holds, one typed dataclass per kind of row.

A row is one flat JSON object, identified by its ``key`` (:class:`RowKey`). Three kinds:

* :class:`StaticRow`: a variant's counts per image (parameters, FLOPs, activations), ``kind`` ``static``;
* :class:`MeasuredRow`: one measured configuration (task, mode, precision, layout, batch) of a variant
  on one device, ``kind`` ``measure``;
* :class:`FailedRow`: a static or measured row that could not be made (``invalid``, ``error``,
  ``oom``, ``timeout``), with the reason.

Every column is a field here, and the CSV and markdown columns are derived from these fields
(:data:`STATIC_COLUMNS`, :data:`MEASURE_COLUMNS`, :func:`int_columns`); nothing else lists them.

This is a persisted format: ``--resume``, ``report``, ``compare``, ``collect`` and the curated folders
under ``results/reference/`` read it. A new field needs no version bump (older rows read it as
missing). Renaming a field or changing a key's form does: bump :data:`SCHEMA_VERSION` and add the
upgrade of the older rows to :data:`UPGRADES` (see ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from bench.records import CPU_SHARED_CORES, MIB, THROTTLE_MASK, TOLERANCE, MeasureConfig, RawMeasurement
from bench.timing import Measurement
from bench.variant import VariantSpec
from nectargan.errors import NectarGANError

SCHEMA_VERSION = 1
STATIC_KIND = "static"
MEASURE_KIND = "measure"
KINDS = (STATIC_KIND, MEASURE_KIND)
STATUSES = ("ok", "invalid", "error", "oom", "timeout")
FAILED_STATUSES = STATUSES[1:]
# schema N -> the function that turns a row of schema N into one of schema N + 1 (none yet: every row is 1)
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


class SchemaError(NectarGANError, ValueError):
    """A stored row this version cannot read."""


@dataclass(frozen=True)
class RowKey:
    """The identity of a row: ``static|<variant json>`` or
    ``measure|<variant json>|task|mode|precision|layout|device[|DdxF][|bN]`` (the discriminator of
    ``gan_train``; the batch only where it differs from the variant's, as the baseline's batch 1 does)."""

    kind: str
    variant: str  # VariantSpec.key: canonical JSON of every field
    task: str | None = None
    mode: str | None = None
    precision: str | None = None
    layout: str | None = None
    device: str | None = None
    discriminator: tuple[int, int] | None = None
    batch: int | None = None

    @classmethod
    def static(cls, spec: VariantSpec) -> RowKey:
        return cls(STATIC_KIND, spec.key)

    @classmethod
    def measured(cls, spec: VariantSpec, cfg: MeasureConfig, device: str) -> RowKey:
        d = (int(cfg.d_layers or 0), int(cfg.d_features or 0)) if cfg.task == "gan_train" else None
        batch = cfg.batch_size if cfg.batch_size != spec.batch_size else None
        return cls(MEASURE_KIND, spec.key, cfg.task, cfg.mode, cfg.precision, cfg.layout, device, d, batch)

    def __str__(self) -> str:
        parts = [self.kind, self.variant]
        if self.kind == MEASURE_KIND:
            parts += [str(self.task), str(self.mode), str(self.precision), str(self.layout), str(self.device)]
            if self.discriminator is not None:
                parts.append(f"D{self.discriminator[0]}x{self.discriminator[1]}")
            if self.batch is not None:
                parts.append(f"b{self.batch}")
        return "|".join(parts)

    @classmethod
    def parse(cls, text: str) -> RowKey:
        """The key back from its stored form; a malformed key is a :class:`SchemaError`."""
        kind, _, rest = text.partition("|")
        end = rest.find("}") + 1
        variant, tail = rest[:end], rest[end + 1:]
        if kind not in KINDS or not variant or (kind == STATIC_KIND) == bool(tail):
            raise SchemaError(f"row key {text[:120]!r} is not a {' or '.join(KINDS)} key")
        if kind == STATIC_KIND:
            return cls(kind, variant)
        task, mode, precision, layout, device, *more = tail.split("|")
        d = next((tuple(int(x) for x in m[1:].split("x")) for m in more if m.startswith("D")), None)
        batch = next((int(m[1:]) for m in more if m.startswith("b")), None)
        return cls(kind, variant, task, mode, precision, layout, device, d, batch)  # type: ignore[arg-type]


HIDDEN = {"hidden": True}  # field metadata: stored, but not a column of the CSV or markdown tables


@dataclass(kw_only=True)
class VariantRow:
    """The columns every row starts with: schema, kind, key, the variant's fields, status and reason."""

    schema: int = field(default=SCHEMA_VERSION, metadata=HIDDEN)
    kind: str = field(default=None, metadata=HIDDEN)
    key: str = field(default=None, metadata=HIDDEN)
    variant: str  # the variant's short name, e.g. UnetBlock-Transposed-d6-f64-256px
    n_downs: int
    features: int
    block_type: str
    upconv_type: str
    input_size: int
    in_channels: int
    out_channels: int  # resolved: in_channels when the variant leaves it unset
    use_dropout_layers: int
    batch_size: int
    status: str = "ok"
    reason: str = ""
    finished_at: str | None = field(default=None, metadata=HIDDEN)
    node: str | None = field(default=None, metadata=HIDDEN)  # the host a remote task ran on (Ray)
    visible_gpus: str | None = field(default=None, metadata=HIDDEN)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, metadata=HIDDEN)  # unknown columns

    def to_dict(self) -> dict[str, Any]:
        """The stored form: flat, without unset (None) columns, unknown columns kept as read."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {k: v for k, v in out.items() if v is not None} | self.extra

    @staticmethod
    def variant_columns(spec: VariantSpec) -> dict[str, Any]:
        return {"variant": spec.name, **spec.to_dict(),
                "out_channels": spec.out_channels if spec.out_channels is not None else spec.in_channels}


@dataclass(kw_only=True)
class StaticCounts:
    """Counts for one variant, per image (:func:`bench.profile.profile_static`). Warnings say what did not
    add up."""

    params: int
    param_mib: float
    macs: int  # fvcore's multiply-adds, every operator it counts
    flops_fwd: int  # torch.utils.flop_counter: 2 per multiply-add, convolutions
    flops_train: int  # forward + backward
    conv_macs_analytic: int | None
    conv_macs_fvcore: int
    conv_flops_counter: int
    counts_agree: bool
    activations: int
    warnings: list[str] = field(default_factory=list)
    fvcore_unsupported: dict[str, int] = field(default=None, metadata=HIDDEN)


@dataclass(kw_only=True)
class StaticRow(StaticCounts, VariantRow):
    """A profiled variant."""

    profile_s: float | None = None


@dataclass(kw_only=True)
class ConfigColumns:
    """What was measured of a variant, and where: a measured row's identity beyond the variant."""

    task: str | None = None
    mode: str | None = None
    precision: str | None = None
    layout: str | None = None
    device: str | None = None
    threads: int | None = None
    d_layers: int | None = None  # gan_train: the PatchGAN
    d_features: int | None = None
    cpu_mkldnn: bool | None = None  # CPU rows: oneDNN on or off

    @staticmethod
    def of(spec: VariantSpec, cfg: MeasureConfig, device: str, threads: int | None,
           cpu_mkldnn: bool | None = None) -> dict[str, Any]:
        """The identifying columns of a measured configuration (kwargs of a row), key included."""
        columns = {"kind": MEASURE_KIND, "key": str(RowKey.measured(spec, cfg, device)),
                   **VariantRow.variant_columns(spec), "task": cfg.task, "mode": cfg.mode,
                   "precision": cfg.precision, "layout": cfg.layout, "batch_size": cfg.batch_size,
                   "device": device, "threads": threads, "cpu_mkldnn": cpu_mkldnn}
        if cfg.task == "gan_train":
            columns |= {"d_layers": cfg.d_layers, "d_features": cfg.d_features}
        return columns


@dataclass(kw_only=True)
class MeasuredFigures:
    """The figures of one measured configuration (derived in :func:`measured_figures`)."""

    median_ms: float
    iqr_ms: float
    min_ms: float
    img_per_s: float
    tflops: float
    pct_of_peak: float | None = None
    noisy: bool | None = None
    peak_mem_mib: float | None = None
    peak_reserved_mib: float | None = None
    compile_s: float | None = None
    compile_warm_s: float | None = None
    graph_breaks: int | None = None
    recompiles: int | None = None
    max_rel_err: float | None = None
    err_flag: bool | None = None
    blocks: int | None = None
    calls_per_block: int | None = None
    measure_s: float | None = None
    max_batch: int | None = None
    above_ceiling: bool | None = None
    flops_per_img: int | None = None
    joules_per_img: float | None = None
    avg_power_w: float | None = None
    sm_clock_before_mhz: int | None = None
    sm_clock_after_mhz: int | None = None
    throttle_reasons: int | None = None
    throttled: bool | None = None
    gpu_shared: bool | None = None
    cpu_others: float | None = None
    cpu_shared: bool | None = None
    ceiling_shared: bool | None = None
    timed_with: str | None = None  # the other modes timed in the same blocks, comma-separated
    err_check: str | None = None
    block_s: list[float] = field(default=None, metadata=HIDDEN)  # the raw block times, for compare's significance


def measured_figures(raw: RawMeasurement, flops_per_image: int, ceiling_tflops: float | None,
                     ceiling_others: float | None = None) -> dict[str, Any]:
    """The derived columns of a measured row: the one place they are computed.

    Timing statistics come from :class:`bench.timing.Measurement` (median and IQR over blocks), TFLOP/s
    from the static FLOPs per image, % of peak against the run's matmul ceiling for the precision;
    ``ceiling_shared`` when other processes kept the CPU busy while that ceiling was measured (a ceiling
    measured low makes every % of peak high).
    """
    cfg = raw.config
    timing = Measurement(block_s=list(raw.block_s), calls_per_block=raw.calls_per_block)
    median = timing.median_s
    tflops = flops_per_image * cfg.batch_size / median / 1e12
    pct = 100 * tflops / ceiling_tflops if ceiling_tflops else None
    figures: dict[str, Any] = {
        "median_ms": median * 1e3, "iqr_ms": timing.iqr_s * 1e3, "min_ms": timing.min_s * 1e3,
        "img_per_s": cfg.batch_size / median, "tflops": tflops,
        # above 100 % the ceiling was not one: say so rather than print an impossible share
        "pct_of_peak": pct if pct is not None and pct <= 100 else None,
        "above_ceiling": pct is not None and pct > 100, "noisy": timing.noisy,
        "ceiling_shared": ceiling_others is not None and ceiling_others > CPU_SHARED_CORES,
        "blocks": len(raw.block_s), "calls_per_block": raw.calls_per_block, "measure_s": timing.total_s,
        "block_s": list(raw.block_s),
        "peak_mem_mib": raw.peak_mem_bytes / MIB if raw.peak_mem_bytes is not None else None,
        "peak_reserved_mib": raw.peak_reserved_bytes / MIB if raw.peak_reserved_bytes is not None else None,
        "recompiles": raw.recompiles if cfg.compiled else 0,
    }
    if cfg.compiled:
        figures |= {"compile_s": raw.first_call_s, "graph_breaks": raw.graph_breaks}
    if raw.max_rel_err is not None:
        figures |= {"max_rel_err": raw.max_rel_err, "err_flag": raw.max_rel_err > TOLERANCE[cfg.precision],
                    "err_check": raw.check}
    figures["timed_with"] = ",".join(raw.timed_with)
    if raw.max_batch is not None:
        figures["max_batch"] = raw.max_batch
    if raw.energy_j is not None and timing.total_s > 0:
        images = len(raw.block_s) * raw.calls_per_block * cfg.batch_size
        figures |= {"joules_per_img": raw.energy_j / images, "avg_power_w": raw.energy_j / timing.total_s}
    if raw.cpu_others is not None:
        figures |= {"cpu_others": raw.cpu_others, "cpu_shared": raw.cpu_others > CPU_SHARED_CORES}
    if raw.sm_clock_before_mhz is not None or raw.throttle_reasons is not None:
        figures |= {"sm_clock_before_mhz": raw.sm_clock_before_mhz, "sm_clock_after_mhz": raw.sm_clock_after_mhz,
                    "throttle_reasons": raw.throttle_reasons,
                    "throttled": bool(raw.throttle_reasons & THROTTLE_MASK) if raw.throttle_reasons is not None
                    else None, "gpu_shared": raw.gpu_shared}
    MeasuredFigures(**figures)  # every name a column of the schema
    return figures


@dataclass(kw_only=True)
class MeasuredRow(MeasuredFigures, ConfigColumns, VariantRow):
    """A measured configuration."""


@dataclass(kw_only=True)
class FailedRow(ConfigColumns, VariantRow):
    """A static or measured row that could not be made; ``status`` says how, ``reason`` why."""


@dataclass(frozen=True)
class Failure:
    """Why rows could not be made: the status they get and the reason."""

    status: str
    reason: str


def failed_row(columns: dict[str, Any], failure: Failure) -> FailedRow:
    """A failed row from a row's identifying columns (:meth:`ConfigColumns.of`, :func:`static_columns`)."""
    return FailedRow(**columns, status=failure.status, reason=failure.reason)


def static_columns(spec: VariantSpec) -> dict[str, Any]:
    """The identifying columns of a variant's static row (kwargs of a row), key included."""
    return {"kind": STATIC_KIND, "key": str(RowKey.static(spec)), **VariantRow.variant_columns(spec)}


AnyRow = StaticRow | MeasuredRow | FailedRow


def upgraded(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The row at today's schema; a newer one is refused in one line saying what to do."""
    schema = data.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise SchemaError(f"{where} has row schema {schema!r}, newer than the {SCHEMA_VERSION} this nectargan-bench "
                          "reads; read it with the version that wrote it (env.json names its git commit), or upgrade")
    while schema < SCHEMA_VERSION:
        if schema not in UPGRADES:
            raise SchemaError(f"{where} has row schema {schema}, which this nectargan-bench cannot upgrade; read it "
                              "with the version that wrote it (env.json names its git commit)")
        data, schema = UPGRADES[schema](data) | {"schema": schema + 1}, schema + 1
    return data


def row_from_dict(data: dict[str, Any], where: str = "a row") -> AnyRow:
    """A stored row, typed (upgraded from an older schema where one is registered); columns this version
    does not know are kept in ``extra``. A row that is none of the kinds is a :class:`SchemaError`."""
    data = upgraded(data, where)
    kind, status = data.get("kind"), data.get("status")
    if kind not in KINDS or status not in STATUSES or not isinstance(data.get("key"), str):
        raise SchemaError(f"{where} is not a result row (kind {kind!r}, status {status!r}; kinds: {', '.join(KINDS)})")
    cls: type[AnyRow] = FailedRow if status != "ok" else StaticRow if kind == STATIC_KIND else MeasuredRow
    known = {f.name for f in fields(cls)} - {"extra"}
    try:
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})
    except TypeError as exc:  # a required column is missing
        raise SchemaError(f"{where} is not a complete {kind} row: {exc}") from None


def as_dict(row: AnyRow | dict[str, Any]) -> dict[str, Any]:
    """The stored form of a typed row (a dict passes through: rows read back and merged)."""
    return row if isinstance(row, dict) else row.to_dict()


def columns(cls: type, hidden: bool = False) -> list[str]:
    """The table columns of a row class, in field order (``hidden``: every stored field)."""
    return [f.name for f in fields(cls) if f.name != "extra" and (hidden or not f.metadata.get("hidden"))]


def int_columns(cls: type) -> list[str]:
    """The columns that hold integers (kept as integers in tables, not floats)."""
    return [f.name for f in fields(cls) if str(f.type).startswith("int") and not f.metadata.get("hidden")]


STATIC_COLUMNS = columns(StaticRow)
MEASURE_COLUMNS = columns(MeasuredRow)
