"""Measure options, in one place: what a measured sweep measures, where, and how long.

:class:`MeasureOptions` is the one list. Each field carries its ``[measure]`` key, its command-line
flag, its help and its check (:class:`Option`), and everything else is derived from it: the grid's
``[measure]`` keys (:data:`MEASURE_KEYS`), the checks of a value from a file or a flag
(:func:`check_measure_value`), the ``sweep`` command's flags (``cli.options.measure_flags``) and the
README's table (:func:`markdown_table`, held equal to the README by a test). To add an option, add a
field here; the measuring child reads it from :class:`~bench.records.MeasureJob`.

Per-device defaults (precision, layout, launcher) are decided after the device is resolved, from
:mod:`nectargan.runtime`, the same way ``train`` and ``study`` decide theirs.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from bench.records import LAYOUTS, MODES, TASKS
from bench.tomlfile import number
from nectargan.errors import NectarGANError, did_you_mean
from nectargan.runtime import PRECISIONS, Device, default_layouts, default_precision
from nectargan.train.config import TrainConfig

LAUNCHER_NAMES = ("forkserver", "subprocess", "inline")  # bench.launcher.LAUNCHERS (a test holds them equal)
# The launcher of a CPU sweep: children forked from a server that imported torch once (start-up in well under
# a second). CUDA keeps plain subprocesses: forking a CUDA host process is only safe before CUDA is
# initialised, which the fork server guarantees but no GPU has checked yet.
DEFAULT_CPU_LAUNCHER = "forkserver"
BY_DEVICE = "by device"  # the default of an option decided once the device is known


class OptionError(NectarGANError, ValueError):
    """A measure option that cannot be used."""


@dataclass(frozen=True)
class Option:
    """How one measure option is named and checked (a field's metadata)."""

    help: str
    key: str = ""  # the [measure] key and flag name, when not the field's name (task for tasks)
    flag: str = ""  # the flag, when not --<key> with dashes (--timeout for timeout_s)
    choices: tuple[str, ...] = ()  # names: one value or a list of them
    kind: type | None = None  # int, float, bool or str; a number is checked with minimum/above
    minimum: float | None = None
    above: float | None = None
    default_text: str = ""  # the default as the help and the README say it, when not the field's


def option(default: Any, help: str, **how: Any) -> Any:
    """A :class:`MeasureOptions` field: its default and its :class:`Option`."""
    meta = {"option": Option(help, **how)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class MeasureOptions:
    """How a measured sweep measures: what (tasks x modes x precisions x layouts), where and how long."""

    tasks: list[str] = option(["infer", "train"], "infer, train (G alone) and/or gan_train (G and D); repeat the "
                              "flag", key="task", choices=TASKS)
    modes: list[str] = option(["eager", "compile"], "eager, compile, compile-reduce-overhead, compile-max-autotune, "
                              "or nectargan (NectarGAN's own loop, the baseline)", key="mode", choices=MODES)
    precisions: list[str] = option([], "fp32, tf32, bf16, fp16", key="precision", choices=PRECISIONS,
                                   default_text="bf16 on CUDA, else fp32")
    layouts: list[str] = option([], "nchw, channels_last", key="layout", choices=LAYOUTS,
                                default_text="nchw and channels_last on CUDA, else nchw")
    device: str = option("cpu", "cpu, cuda, cuda:N, cuda:all (one worker per GPU) or auto", kind=str)
    threads: int | None = option(None, "CPU threads in the measuring child", kind=int, minimum=1,
                                 default_text="torch's")
    timeout_s: float = option(1800.0, "seconds a child may build, compile or check one configuration before it "
                              "counts as hung", flag="--timeout", kind=float, above=0)
    block_timeout_s: float = option(300.0, "seconds a child may spend in one warm-up or timed block",
                                    flag="--block-timeout", kind=float, above=0)
    cpu_mkldnn: bool = option(True, "oneDNN (mkldnn) on the CPU; off works around its known crashes", kind=bool)
    d_layers: int = option(TrainConfig.d_layers, "gan_train: PatchGAN layers", kind=int, minimum=1)
    d_features: int = option(TrainConfig.d_features, "gan_train: PatchGAN features", kind=int, minimum=1)
    blocks: int = option(5, "timed blocks per measurement", kind=int, minimum=1)
    min_block_s: float = option(0.2, "minimum seconds per timed block", kind=float, above=0)
    launcher: str = option("", "forkserver (children forked from a preloaded server), subprocess or inline "
                           "(debugging)", choices=LAUNCHER_NAMES, default_text="forkserver on a CPU, else subprocess")
    warm_compile: bool = option(True, "also time a compiled row's first call in a fresh child with the filled "
                                "Inductor cache", kind=bool)
    inductor_cache: str | None = option(None, "Inductor cache folder shared by runs", kind=str,
                                        default_text="the run folder's inductor-cache")
    max_batch: int | None = option(None, "also find the largest batch that fits, halving from N (column max_batch)",
                                   kind=int, minimum=1, default_text="off")


def option_info(name: str) -> Option:
    return next(f.metadata["option"] for f in fields(MeasureOptions) if f.name == name)


def measure_key(name: str) -> str:
    """The ``[measure]`` key (and flag name) of a field: ``task`` for ``tasks``."""
    return option_info(name).key or name


def flag_name(name: str) -> str:
    """The command-line flag of a field: ``--task``, ``--timeout``, ``--min-block-s``."""
    info = option_info(name)
    return info.flag or "--" + measure_key(name).replace("_", "-")


FIELD_OF_KEY = {measure_key(f.name): f.name for f in fields(MeasureOptions)}
MEASURE_KEYS = list(FIELD_OF_KEY)  # every key of [measure]


def check_measure_value(key: str, value: Any, where: str, error: type[NectarGANError] = OptionError) -> None:
    """A ``[measure]`` value, or the same option as a flag (``key``: its [measure] name): names from their
    choices, a device name, numbers in range, booleans; ``where`` names it in the one-line error."""
    info = option_info(FIELD_OF_KEY[key])
    if info.choices:
        many = isinstance(option_default(FIELD_OF_KEY[key]), list)
        values = value if isinstance(value, list | tuple) and many else [value]
        if not values:
            raise error(f"{where} is empty; give at least one of {', '.join(info.choices)}")
        for item in values:
            if item not in info.choices:
                raise error(f"{where}: {key} {item!r} is not valid{did_you_mean(str(item), info.choices)}; use "
                            f"{', '.join(info.choices)}")
    elif key == "device":
        value = value[0] if isinstance(value, list) and len(value) == 1 else value
        try:
            Device.parse(value)
        except NectarGANError:
            raise error(f"{where} = {value!r} must be one device name: cpu, cuda, cuda:N, cuda:all or auto") from None
    elif info.kind in (int, float):
        number(where, value, error, kind=info.kind, minimum=info.minimum, above=info.above)
    elif info.kind is bool and not isinstance(value, bool):
        raise error(f"{where} = {value!r} must be true or false")
    elif info.kind is str and (not isinstance(value, str) or not value):
        raise error(f"{where} = {value!r} must be a non-empty string")


def option_default(name: str) -> Any:
    f = next(f for f in fields(MeasureOptions) if f.name == name)
    return f.default_factory() if f.default_factory is not MISSING else f.default


def default_launcher(device: Device) -> str:
    from bench.launcher import fork_server_available

    return "subprocess" if device.cuda or not fork_server_available() else DEFAULT_CPU_LAUNCHER


def measure_options(table: dict[str, Any], device: str | None = None, **flags: Any) -> MeasureOptions:
    """A grid's ``[measure]`` table with the flags on top (keyed by field name, None: not given), then the
    defaults: the device is resolved first (``auto`` decided here), and the precision, layouts and launcher
    come from it. Every value is checked before anything runs; a bad one is one line naming the setting."""
    given = {FIELD_OF_KEY.get(k, k): v for k, v in flags.items() if v not in (None, [], ())}
    for name, value in given.items():
        if name not in FIELD_OF_KEY.values():
            raise OptionError(f"unknown measure option {name!r}{did_you_mean(name, MEASURE_KEYS)}")
        check_measure_value(measure_key(name), value, f"measure option {measure_key(name)}")
    values = {FIELD_OF_KEY[k]: v for k, v in table.items()} | given
    if device:
        check_measure_value("device", device, "device")
    # decided here, first (auto: cuda or cpu), so that the defaults below are this device's
    parsed = Device.parse(device or _one(values.get("device", "cpu"))).decided()
    values |= {"device": parsed.label}
    values.setdefault("precisions", [default_precision(parsed)])
    values.setdefault("layouts", default_layouts(parsed))
    values.setdefault("launcher", default_launcher(parsed))
    lists = {f.name for f in fields(MeasureOptions) if isinstance(option_default(f.name), list)}
    return MeasureOptions(**{k: list(dict.fromkeys(v if isinstance(v, list) else [v])) if k in lists else _one(v)
                             for k, v in values.items()})


def _one(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def markdown_table() -> str:
    """The README's table of measure options: [measure] key, flag, default, what."""
    lines = ["| `[measure]` key | flag | default | what |", "|---|---|---|---|"]
    for f in fields(MeasureOptions):
        info, default = f.metadata["option"], option_default(f.name)
        shown = info.default_text or (", ".join(default) if isinstance(default, list) else
                                      str(default).lower() if isinstance(default, bool) else f"{default}")
        flag = flag_name(f.name) if info.kind is not bool else f"{flag_name(f.name)} / --no-{flag_name(f.name)[2:]}"
        lines.append(f"| `{measure_key(f.name)}` | `{flag}` | {shown} | {info.help} |")
    return "\n".join(lines)
