"""Benchmark: img/s of the pix2pix training step, ours against a NectarGAN-like loop, in one run.

Run ``python -m bench.train_speed --help``. The NectarGAN-like loop is the straightforward step
NectarGAN's trainer takes: eager, fp32 (or its fp16 autocast where asked), D scores real and fake
in two calls, D stays trainable during G's backward, default Adam, and ``.item()`` on every loss
every step (a host sync per loss). Ours is :class:`~nectargan.train.step.Pix2PixStep` with the
settings given. Both train the same G and D architectures on the same preloaded random batches.

Method: after warm-up (which includes compilation), blocks of steps alternate between the two
loops (ABAB...) with the harness's own timer (:mod:`bench.timing`), so a drifting machine affects both
alike; each block runs at least ``--min-block-s`` seconds, timed with CUDA events on GPU and
perf_counter on CPU. A figure is the median img/s over the blocks; the interquartile range is shown
beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.timing import CudaEventTimer, PerfCounterTimer, measure_interleaved
from nectargan.models.patchgan.model import Discriminator
from nectargan.models.unet.model import UnetGenerator
from nectargan.train.config import PRECISIONS, TrainConfig, resolve
from nectargan.train.step import Pix2PixStep


def nectargan_like_step(generator, discriminator, opt_g, opt_d, lambda_l1: float):
    """The reference step: two D calls, D trainable in G's step, three ``.item()`` syncs per step."""

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        fake = generator(x)
        d_real = discriminator(x, y)
        d_fake = discriminator(x, fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))) / 2
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        d_fake = discriminator(x, fake)
        loss_gan = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        loss_l1 = F.l1_loss(fake, y) * lambda_l1
        loss_g = loss_gan + loss_l1
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        _ = (loss_d.item(), loss_gan.item(), loss_l1.item())

    return step


def measure(args: argparse.Namespace) -> list[dict]:
    """Both loops per batch size, timed interleaved by :func:`bench.timing.measure_interleaved`."""
    torch.manual_seed(0)
    rows = []
    gen_kwargs = {"input_size": args.size, "n_downs": args.n_downs, "features": args.features}
    for batch in args.batch_sizes:
        config = TrainConfig(generator=gen_kwargs, batch_size=batch, steps=1, device=args.device,
                             precision=args.precision, compile=args.compile, channels_last=args.channels_last,
                             d_layers=args.d_layers)
        run = resolve(config)
        x = torch.rand(batch, 3, args.size, args.size, device=run.device) * 2 - 1
        y = torch.rand(batch, 3, args.size, args.size, device=run.device) * 2 - 1

        g_ref = UnetGenerator(**gen_kwargs).to(run.device)
        d_ref = Discriminator(n_layers=config.d_layers).to(run.device)
        fp32 = TrainConfig()  # NectarGAN's optimiser settings, plain (not fused) Adam as its trainer builds
        betas = (fp32.beta1, fp32.beta2)
        ref = nectargan_like_step(g_ref, d_ref, torch.optim.Adam(g_ref.parameters(), fp32.lr, betas=betas),
                                  torch.optim.Adam(d_ref.parameters(), fp32.lr, betas=betas), fp32.lambda_l1)
        fmt = torch.channels_last if run.channels_last else torch.preserve_format
        g_ours = UnetGenerator(**gen_kwargs).to(run.device, memory_format=fmt)
        d_ours = Discriminator(n_layers=config.d_layers).to(run.device, memory_format=fmt)
        ours_step = Pix2PixStep(g_ours, d_ours, config, run)
        xo, yo = ours_step.prepare(x), ours_step.prepare(y)

        # NectarGAN's default batch size is 1, so the reference loop runs at 1.
        loops = {"nectargan-like": (partial(ref, x[:1], y[:1]), 1), "ours": (partial(ours_step, xo, yo), batch)}
        start = time.perf_counter()
        for step, _images in loops.values():  # warm-up, compilation included
            for _ in range(args.warmup):
                step()
        warmup_s = time.perf_counter() - start
        timer = CudaEventTimer(run.device) if run.device.type == "cuda" else PerfCounterTimer()
        results = measure_interleaved({name: step for name, (step, _) in loops.items()}, timer, args.blocks,
                                      args.min_block_s)
        for name, measurement in results.items():
            images = loops[name][1]
            per_block = [images / t for t in measurement.per_call_s]
            q = statistics.quantiles(per_block, n=4, method="inclusive") if len(per_block) > 1 else [per_block[0]] * 3
            rows.append({
                "batch_size": images, "loop": name, "device": str(run.device),
                "precision": run.precision if name == "ours" else "fp32",
                "compile": run.compile if name == "ours" else False,
                "channels_last": run.channels_last if name == "ours" else False,
                "img_per_s": images / measurement.median_s, "iqr_img_per_s": q[2] - q[0],
                "blocks": len(measurement.block_s), "steps_per_block": measurement.calls_per_block,
                "warmup_s": warmup_s,
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    def positive(kind):
        def parse(text: str):
            value = kind(text)
            if value <= 0:
                raise argparse.ArgumentTypeError(f"{text} is not valid: use a positive number")
            return value
        return parse

    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--size", type=positive(int), default=64, help="input side in pixels")
    parser.add_argument("--n-downs", type=positive(int), default=3, help="generator n_downs")
    parser.add_argument("--features", type=positive(int), default=16, help="generator features")
    parser.add_argument("--d-layers", type=positive(int), default=3, help="PatchGAN n_layers")
    parser.add_argument("--batch-sizes", type=positive(int), nargs="+", default=[1, 8], help="our step's batches")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="our step's precision (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile our step (default: on for CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last for our step (default: on for CUDA)")
    parser.add_argument("--warmup", type=positive(int), default=3, help="untimed steps first (compilation)")
    parser.add_argument("--blocks", type=positive(int), default=5, help="timed blocks per loop")
    parser.add_argument("--min-block-s", type=positive(float), default=0.5, help="minimum seconds per block")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from nectargan.errors import NectarGANError

    try:
        rows = measure(args)
    except NectarGANError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    table = Table(title=f"pix2pix train step, {args.size} px, n_downs {args.n_downs}, features {args.features}")
    for column in ("loop", "batch", "device", "precision", "compile", "img/s", "IQR", "blocks"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["loop"], str(r["batch_size"]), r["device"], r["precision"], str(r["compile"]),
                      f"{r['img_per_s']:,.1f}", f"{r['iqr_img_per_s']:,.1f}", f"{r['blocks']} x {r['steps_per_block']}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
