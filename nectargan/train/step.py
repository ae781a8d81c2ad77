"""One pix2pix training step (D first, then G against the updated D), built for speed on CUDA.

What makes it fast, each part switchable in :class:`~nectargan.train.config.TrainConfig`:

* bf16 autocast (or fp16 with one GradScaler per network);
* channels_last weights and inputs;
* torch.compile of three graphs: G's forward, D's loss and G's loss (each with its backward). D is
  frozen (``requires_grad=False``) for the whole G loss and trainable for the whole D loss, so each
  graph always sees the same guards and nothing recompiles after the first step;
* D scores the real and the fake pair in one call (InstanceNorm is per sample, so this equals two);
* fused Adam (foreach where fused is unavailable);
* no host synchronisation: the losses are returned as device tensors and read at log time.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from nectargan.losses import discriminator_loss, generator_losses
from nectargan.train.config import Resolved, TrainConfig


def make_adam(params: Iterable[nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam(lr, (beta1, beta2)) of ``config``, fused when this torch supports it on ``device``."""
    params = list(params)
    kwargs = {"lr": config.lr, "betas": (config.beta1, config.beta2)}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, foreach=device.type == "cuda", **kwargs)


class Pix2PixStep:
    """Callable ``step(x, y) -> {'loss_d', 'loss_g_gan', 'loss_g_l1'}`` (detached device tensors)."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, config: TrainConfig, run: Resolved,
                 compile_mode: str | None = None):
        self.config = config
        self.run = run
        self.generator = generator
        self.discriminator = discriminator
        self.opt_g = make_adam(generator.parameters(), config, run.device)
        self.opt_d = make_adam(discriminator.parameters(), config, run.device)
        fp16 = run.precision == "fp16"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=fp16)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=fp16)
        self._forward_g = generator.forward
        self._loss_d = self._discriminator_loss
        self._loss_g = self._generator_loss
        self.cudagraphs = run.compile and compile_mode == "reduce-overhead"
        if run.compile:  # compile_mode: torch.compile's mode (None: default; "reduce-overhead": CUDA graphs)
            self._forward_g = torch.compile(self._forward_g, mode=compile_mode, dynamic=False)
            self._loss_d = torch.compile(self._loss_d, mode=compile_mode, dynamic=False)
            self._loss_g = torch.compile(self._loss_g, mode=compile_mode, dynamic=False)

    def _discriminator_loss(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        logits = self.discriminator(torch.cat([x, x]), torch.cat([y, fake]))
        real_logits, fake_logits = logits.float().chunk(2)
        return discriminator_loss(real_logits, fake_logits)

    def _generator_loss(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor):
        logits = self.discriminator(x, fake).float()
        return generator_losses(logits, fake, y, self.config.lambda_gan, self.config.lambda_l1)

    def set_lr(self, lr: float) -> None:
        for optimizer in (self.opt_g, self.opt_d):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch to the step's device and memory format."""
        x = x.to(self.run.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.run.channels_last else x

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cudagraphs:  # a new step: the previous step's graph outputs may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        with self.run.autocast():
            fake = self._forward_g(x)

        self.discriminator.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with self.run.autocast():
            loss_d = self._loss_d(x, y, fake.detach())
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

        self.discriminator.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self.run.autocast():
            loss_g, gan, l1 = self._loss_g(x, y, fake)
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.discriminator.requires_grad_(True)
        return {"loss_d": loss_d.detach(), "loss_g_gan": gan.detach(), "loss_g_l1": l1.detach()}
