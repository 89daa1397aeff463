"""The defect head: a small segmentation network that reads an image beside its repair and
says, per pixel, how likely that pixel is defective.

This is the discriminative half of DRAEM (Zavrtanik et al. 2021). The VLAE is trained to
repair structured synthetic corruptions (``trainer.corrupt``); the head is trained at the same
time, on the corrupted input and the VLAE's reconstruction of it, to find the corrupted
pixels. A fixed per-pixel distance between an image and its repair cannot tell a faint true
difference from the reconstruction's own noise on a sharp texture; the head learns which
differences matter. Its input reconstruction is detached, so the head's loss never shapes the
VLAE. Its logit per pixel is the ``defect`` term of the anomaly map (``vlae.base``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEPTH = 2  # poolings: image sides must be multiples of 2**DEPTH


def _block(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(a, b, 3, 1, 1), nn.BatchNorm2d(b), nn.ReLU(),
        nn.Conv2d(b, b, 3, 1, 1), nn.BatchNorm2d(b), nn.ReLU(),
    )  # fmt: skip


class DefectHead(nn.Module):
    """A two-level U-Net from (image, reconstruction), 2C channels, to one logit per pixel."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        w = width
        self.down1, self.down2, self.bottom = (
            _block(2 * channels, w),
            _block(w, 2 * w),
            _block(2 * w, 4 * w),
        )
        self.up2, self.up1 = _block(6 * w, 2 * w), _block(3 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: Tensor, recon: Tensor) -> Tensor:
        """Defect logits (N, H, W) of images ``x`` and their reconstructions, both in [0, 1]."""
        a = self.down1(torch.cat([x, recon], dim=1))
        b = self.down2(F.max_pool2d(a, 2))
        c = self.bottom(F.max_pool2d(b, 2))
        d = self.up2(torch.cat([F.interpolate(c, size=b.shape[-2:]), b], dim=1))
        e = self.up1(torch.cat([F.interpolate(d, size=a.shape[-2:]), a], dim=1))
        return self.out(e)[:, 0]


def focal_loss(logits: Tensor, mask: Tensor, gamma: float = 2.0) -> Tensor:
    """Per item, the focal loss (Lin et al. 2017) of defect logits (N, H, W) against a 0/1
    mask, summed over pixels: most pixels are easy normal ones, and plain cross-entropy would
    be spent on them."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    p_true = p * mask + (1 - p) * (1 - mask)
    return (ce * (1 - p_true).pow(gamma)).flatten(1).sum(dim=1)
