"""Static profile of a variant: parameters, FLOPs, multiply-adds and activations, without timing.

Three independent counts of the convolutions are taken and must agree exactly:

* ``conv_macs_analytic``: closed form from the channel map and the spatial size of every layer;
* fvcore's ``conv`` multiply-adds (a TorchScript trace of a real CPU forward);
* ``torch.utils.flop_counter``'s convolution FLOPs (2 per multiply-add), on the meta device.

``macs`` is fvcore's total, which also counts InstanceNorm and upsampling; ``flops_fwd`` and
``flops_train`` (forward + backward) are flop_counter's, which counts only convolutions and matmuls.
All counts are per image (batch 1): the generator's cost is linear in the batch.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.records import MIB
from bench.rows import StaticCounts
from bench.variant import VariantSpec
from nectargan.models.unet.blocks import ResidualUnetBlock, UnetBlock
from nectargan.models.unet.model import UnetGenerator, build_channel_map

BYTES_PER_FP32 = 4


def conv_macs_analytic(spec: VariantSpec) -> int | None:
    """Convolution multiply-adds from the channel map; None for blocks it does not know.

    A conv costs ``out_pixels * c_in * c_out * k * k``; a transposed conv ``in_pixels * ...``.
    Down blocks: 4x4 stride-2 conv. Up blocks: 4x4 transposed conv, or 3x3 conv after the bilinear
    x2. Residual blocks add a 1x1 stride-2 conv (down) or 1x1 transposed conv (up, channel change).
    """
    from nectargan.models.unet.blocks import get_block

    block = get_block(spec.block_type)
    if block not in (UnetBlock, ResidualUnetBlock):
        return None
    residual = block is ResidualUnetBlock
    cm = build_channel_map(spec.in_channels, spec.features, spec.n_downs, spec.out_channels)
    size = spec.input_size
    n = spec.n_downs

    def down(c_in: int, c_out: int, out_side: int) -> int:
        macs = out_side**2 * c_in * c_out * 16
        return macs + (out_side**2 * c_in * c_out if residual else 0)

    def up(c_in: int, c_out: int, in_side: int) -> int:
        out_side = 2 * in_side
        if spec.upconv_type == "Transposed":
            macs = in_side**2 * c_in * c_out * 16
        else:
            macs = out_side**2 * c_in * c_out * 9
        if residual and c_in != c_out:
            macs += in_side**2 * c_in * c_out
        return macs

    total = down(*cm["initial_down"], size // 2)
    total += sum(down(c_in, c_out, size // 2 ** (i + 2)) for i, (c_in, c_out) in enumerate(cm["downs"]))
    total += down(*cm["bottleneck"], size // 2 ** (n + 2))
    total += sum(up(c_in, c_out, size // 2 ** (n + 2 - j)) for j, (c_in, c_out) in enumerate(cm["ups"]))
    total += up(*cm["final_up"], size // 2)
    return total


def flop_counter_counts(spec: VariantSpec) -> tuple[int, int, int]:
    """(forward FLOPs, forward convolution FLOPs, forward + backward FLOPs) on the meta device."""
    model = spec.build(device="meta")
    x = torch.empty(1, spec.in_channels, spec.input_size, spec.input_size, device="meta")
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    fwd = counter.get_total_flops()
    conv = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return fwd, conv, counter.get_total_flops()


def gan_step_flops(spec: VariantSpec, d_layers: int, d_features: int) -> int:
    """FLOPs per image of the whole pix2pix step (G and D, forward and backward), as the trainer's own
    :class:`~nectargan.train.step.Pix2PixStep` runs it, counted by flop_counter on the meta device
    (the optimizer steps, which count no FLOPs and cannot run on meta, are skipped)."""
    from nectargan.models.patchgan.model import Discriminator
    from nectargan.train.config import Resolved, TrainConfig
    from nectargan.train.step import Pix2PixStep

    generator = spec.build(device="meta")
    with torch.device("meta"):
        discriminator = Discriminator(in_channels=generator.in_channels, base_channels=d_features,
                                      n_layers=d_layers, target_channels=generator.out_channels)
    config = TrainConfig(d_layers=d_layers, d_features=d_features)
    step = Pix2PixStep(generator, discriminator, config, Resolved(torch.device("cpu"), "fp32", False, False))
    for optimizer in (step.opt_g, step.opt_d):
        optimizer.step = lambda *args, **kwargs: None
    x = torch.empty(1, generator.in_channels, spec.input_size, spec.input_size, device="meta")
    y = torch.empty(1, generator.out_channels, spec.input_size, spec.input_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        step(x, y)
    return counter.get_total_flops()


def cpu_model(spec: VariantSpec) -> UnetGenerator:
    """The variant on the CPU with zeroed weights: built on meta, then allocated (no random init)."""
    model = spec.build(device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.zero_()
    return model.eval()


@contextlib.contextmanager
def _one_trace() -> Iterator[None]:
    """Let fvcore's analyses of one model in one input share a single JIT trace.

    fvcore traces the model once per analysis (``jit_analysis._get_scoped_trace_graph``); the graph is
    only read afterwards, so the second analysis may reuse the first one's. Where that private function
    is not there (another fvcore), each analysis traces as before.
    """
    from fvcore.nn import jit_analysis

    original = getattr(jit_analysis, "_get_scoped_trace_graph", None)
    if original is None:
        yield
        return
    traced: dict[int, Any] = {}

    def once(module: nn.Module, inputs: Any, aliases: Any) -> Any:
        if id(module) not in traced:
            traced[id(module)] = original(module, inputs, aliases)
        return traced[id(module)]

    jit_analysis._get_scoped_trace_graph = once
    try:
        yield
    finally:
        jit_analysis._get_scoped_trace_graph = original


@dataclass
class FvcoreCounts:
    total: int
    conv: int
    activations: int
    unsupported: dict[str, int]
    by_module: dict[str, int]


def fvcore_counts(spec: VariantSpec, model: nn.Module | None = None) -> FvcoreCounts:
    """fvcore's multiply-adds (total, conv, per module) and activations, from a CPU trace.

    fvcore cannot trace meta tensors, so this traces one real forward at batch 1; both analyses read
    the same trace (tracing is most of a static profile's time). Its per-operator warnings are
    silenced and returned in ``unsupported`` instead.
    """
    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis

    model = model if model is not None else cpu_model(spec)
    x = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad(), _one_trace():
        flops = FlopCountAnalysis(model, (x,))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = int(flops.total())
        conv = int(flops.by_operator().get("conv", 0))
        unsupported = dict(flops.unsupported_ops())
        by_module = {name: int(v) for name, v in flops.by_module().items()}
        acts = ActivationCountAnalysis(model, (x,))
        acts.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        activations = int(acts.total())
    return FvcoreCounts(total, conv, activations, unsupported, by_module)


def profile_static(spec: VariantSpec, fv: FvcoreCounts | None = None) -> StaticCounts:
    """Count everything for one valid variant (raises for an invalid one).

    ``fv`` reuses fvcore counts already taken for this variant (fvcore runs a real forward).
    """
    meta_model = spec.build(device="meta")
    params = sum(p.numel() for p in meta_model.parameters())
    fwd, conv_flops, train = flop_counter_counts(spec)
    fv = fv if fv is not None else fvcore_counts(spec)
    analytic = conv_macs_analytic(spec)
    warnings: list[str] = []
    if conv_flops != 2 * fv.conv:
        warnings.append(f"conv counts disagree: flop_counter {conv_flops} FLOPs != 2 x fvcore {fv.conv} MACs")
    if analytic is not None and analytic != fv.conv:
        warnings.append(f"conv counts disagree: analytic {analytic} MACs != fvcore {fv.conv} MACs")
    if analytic is None:
        warnings.append(f"no closed form for block {spec.block_type!r}: analytic count skipped")
    return StaticCounts(
        params=params,
        param_mib=params * BYTES_PER_FP32 / MIB,
        macs=fv.total,
        flops_fwd=fwd,
        flops_train=train,
        conv_macs_analytic=analytic,
        conv_macs_fvcore=fv.conv,
        conv_flops_counter=conv_flops,
        activations=fv.activations,
        counts_agree=not any(w.startswith("conv counts disagree") for w in warnings),
        warnings=warnings,
        fvcore_unsupported=fv.unsupported,
    )


@dataclass(frozen=True)
class ModuleRow:
    """One module of the per-module table (``nectargan-bench profile``)."""

    name: str
    depth: int
    params: int
    macs: int
    output_shape: tuple[int, ...] | None


def module_depth(name: str, lists: set[str] = frozenset()) -> int:
    """Depth of a module name; an index into a ModuleList (in ``lists``) counts with its list.

    With ``lists={"downs"}``: ``downs.0`` is 1, ``downs.0.conv`` is 2 and ``downs.0.conv.0`` is 3.
    """
    if not name:
        return 0
    parts = name.split(".")
    depth = 0
    for i, part in enumerate(parts):
        if re.fullmatch(r"\d+", part) and ".".join(parts[:i]) in lists:
            continue
        depth += 1
    return depth


def module_table(spec: VariantSpec, max_depth: int = 1) -> tuple[list[ModuleRow], FvcoreCounts]:
    """Parameters, fvcore multiply-adds and output shape of each module down to ``max_depth``."""
    model = cpu_model(spec)
    counts = fvcore_counts(spec, model)
    lists = {n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)}
    named = [
        (n, m) for n, m in model.named_modules()
        if n and n not in lists and module_depth(n, lists) <= max_depth
    ]
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, key=n: shapes.__setitem__(key, tuple(out.shape)))
        for n, m in named
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size))
    finally:
        for hook in hooks:
            hook.remove()
    rows = [
        ModuleRow(
            name=n, depth=module_depth(n, lists), params=sum(p.numel() for p in m.parameters()),
            macs=counts.by_module.get(n, 0), output_shape=shapes.get(n),
        )
        for n, m in named
    ]
    # Leaves with neither weights nor counted work (activations, Identity, dropout) are noise here.
    rows = [r for r in rows if r.depth == 1 or r.params or r.macs]
    return rows, counts


def summarise_unsupported(per_variant: list[dict[str, int]]) -> Counter[str]:
    """Across variants: in how many variants fvcore skipped each operator."""
    seen: Counter[str] = Counter()
    for ops in per_variant:
        seen.update(ops.keys())
    return seen
