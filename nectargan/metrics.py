"""Image metrics for generator outputs in [-1, 1]: L1 (in that range), PSNR and SSIM (on [0, 1]).

PSNR and SSIM come from torchmetrics, computed per image and averaged, so a batch's figure does not
depend on how it was batched.
"""

from __future__ import annotations

import torch


def image_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ``l1``, ``psnr`` (dB) and ``ssim`` of (N, C, H, W) tensors in [-1, 1], as 1-D tensors.

    Identical images have PSNR = inf; callers averaging over a split keep that (it is the honest value).
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    output = output.detach().float()
    target = target.detach().float()
    l1 = (output - target).abs().flatten(1).mean(1)
    out01 = ((output + 1) / 2).clamp(0, 1)
    tgt01 = ((target + 1) / 2).clamp(0, 1)
    psnr = peak_signal_noise_ratio(out01, tgt01, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(out01, tgt01, data_range=1.0, reduction="none")
    return {"l1": l1, "psnr": psnr, "ssim": ssim}
