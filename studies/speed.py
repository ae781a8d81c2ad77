"""The trained generator's inference speed, measured with the harness's own timer after training.

The workload is what a user of the generator runs: a no-grad forward in eval mode at the trial's
batch size, precision and layout, on the study's device; compiled (``torch.compile``, default mode)
on CUDA, where that is the fastest way to serve it, eager on the CPU, where compiling does not pay
at these sizes. After the warm-up calls (3 compiled, where the compile happens; 1 eager), :func:`bench.timing.
measure_interleaved` calibrates calls per block to ``min_block_s`` and times ``blocks`` blocks with
CUDA events on a GPU and ``perf_counter`` on the CPU; the figure is the median per call.

On the CPU, subnormal floats are flushed to zero while timing (``torch.set_flush_denormal``, as CPU
deployments do): a trained generator's activations hold subnormals that fresh weights do not, and
x86 arithmetic on them is many times slower (one 64 px generator trained for 60 s on a 2-core CPU:
2.7 img/s without the flush, 35 with it, 41 with fresh weights), which would time the float format
instead of the architecture and make the comparison with fresh baseline weights unfair.

A study passes the baseline's architecture (fresh weights: speed does not depend on them) as a
second workload, timed interleaved with the trial's (A B A B ...), so the speed-up over the baseline
holds even when the machine's load drifts between trials.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench.timing import BlockTimer, Measurement, default_timer, measure_interleaved, synchronize
from nectargan.train.config import Resolved

WARMUP_CALLS = {"compile": 3, "eager": 1}  # compiling (and autotuning) happens in the warm-up


def inference_mode(device: torch.device) -> str:
    return "compile" if device.type == "cuda" else "eager"


def measure_inference(
    models: dict[str, torch.nn.Module], batch_size: int, input_size: int, in_channels: int, run: Resolved,
    blocks: int, min_block_s: float, timer: BlockTimer | None = None,
) -> dict[str, Measurement]:
    """Time each model's no-grad eval forward of one batch, interleaved; one Measurement per model."""
    with _flush_denormals(run.device):
        return _measure(models, batch_size, input_size, in_channels, run, blocks, min_block_s, timer)


def _measure(models: dict[str, torch.nn.Module], batch_size: int, input_size: int, in_channels: int, run: Resolved,
             blocks: int, min_block_s: float, timer: BlockTimer | None) -> dict[str, Measurement]:
    device = run.device
    fmt = torch.channels_last if run.channels_last else torch.contiguous_format
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.rand(batch_size, in_channels, input_size, input_size, generator=g) * 2 - 1).to(device)
    x = x.contiguous(memory_format=fmt)
    calls: dict[str, Callable[[], object]] = {}
    for name, model in models.items():
        model = model.to(device, memory_format=fmt).eval()
        forward: Any = torch.compile(model, dynamic=False) if inference_mode(device) == "compile" else model

        def call(forward: Any = forward) -> object:
            with torch.no_grad(), run.autocast():
                return forward(x)

        for _ in range(WARMUP_CALLS[inference_mode(device)]):
            call()
        calls[name] = call
    synchronize(device)
    return measure_interleaved(calls, timer or default_timer(device), blocks=blocks, min_block_s=min_block_s)


@contextlib.contextmanager
def _flush_denormals(device: torch.device) -> Iterator[None]:
    if device.type != "cpu":
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default; there is no getter to restore from


def inference_attrs(measurement: Measurement, batch_size: int, mode: str,
                    reference: Measurement | None = None) -> dict[str, Any]:
    """User attributes of one measurement (raw block times kept; figures derived from them)."""
    attrs: dict[str, Any] = {
        "infer_img_per_s": batch_size / measurement.median_s,
        "infer_ms": measurement.median_s * 1e3,
        "infer_iqr_ms": measurement.iqr_s * 1e3,
        "infer_noisy": measurement.noisy,
        "infer_block_s": list(measurement.block_s),
        "infer_calls_per_block": measurement.calls_per_block,
        "infer_batch_size": batch_size,
        "infer_mode": mode,
    }
    if reference is not None:
        attrs["infer_speedup_vs_baseline"] = reference.median_s / measurement.median_s
    return attrs

