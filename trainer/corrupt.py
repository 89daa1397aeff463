"""Structured synthetic corruptions: the noise a repairing DenoisingVLAE is trained to remove.

The deck's DenoisingVLAE adds Gaussian noise and learns the clean image. For inspection, the
"noise" that matters is what defects look like, so here it is local and structured, after
DRAEM's reconstructive half (Zavrtanik et al. 2021): a region, a smooth blob or a thin polyline
(or, asked for on an aligned part, mostly on the part: ``on_part_centres``), is filled with
something that does not belong there, and the model learns to put the normal part back. Its
reconstruction of a real defect is then the part as it should look, and the per-pixel
reconstruction term lights up where the defect is.

Fills (one per corrupted image, chosen at random):
- ``foreign``: another image of the batch, shifted, flipped or transposed, sometimes inverted:
  a patch of other texture, a foreign particle;
- ``flat``: one random colour: a hole, a cut-out, paint;
- ``shift``: the image itself, lighter, darker or tinted by a few per cent to a fifth: stains
  and discolouration (kept low in contrast on purpose);
- ``smooth``: the image itself, blurred: worn or missing texture. The camera's noise is then
  put back (``noise_level``): a worn part under a camera is as noisy as the rest of it, and a
  noise-free patch taught the head to look for missing noise, which no real worn patch lacks;
- ``noise``: uniform noise: contamination, dirt;
- ``tint`` (colour images only): the image itself with its hue turned and its brightness
  nearly kept: a discolouration that a brightness shift does not teach.

Everything runs on the batch tensor with torch's generator, so the training loop's per-epoch
seeding makes it exactly repeatable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

FILLS = ("foreign", "flat", "shift", "smooth", "noise")
COLOUR_FILLS = (*FILLS, "tint")
# A pixel is in a corruption's mask where its alpha exceeds COVERED and the corruption moved it
# by more than VISIBLE (a fill can match the pixel it covers: that is no defect to find).
COVERED = 0.3
VISIBLE = 0.02
# Share of corruptions centred where the image stands out (``on_part_centres``).
ON_PART = 0.7
# Fills that take away the camera's noise along with what they replace; it is put back.
NOISELESS = ("smooth",)
# Share of corruptions drawn as thin polylines rather than blobs, unless asked otherwise
# (``TrainConfig.corrupt_lines``).
LINES = 0.35


def _u(n: int, lo: float, hi: float, device: torch.device) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device)


def blob_masks(
    n: int, h: int, w: int, device: torch.device, centres: Tensor | None = None
) -> Tensor:
    """Soft (n, h, w) masks of irregular blobs around ``centres`` (n, 2: row, column; None:
    random points): smooth noise at a random scale, cut at a random level so that each covers
    about 0.5 % to 12 % of the image."""
    out = torch.empty(n, h, w, device=device)
    for i in range(n):
        cells = int(torch.randint(3, 9, (1,)))
        noise = torch.randn(1, 1, cells, cells, device=device)
        field = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
        # Keep one blob near its centre: the field plus a bump around it.
        if centres is None:
            cy, cx = float(torch.rand(1)) * h, float(torch.rand(1)) * w
        else:
            cy, cx = float(centres[i, 0]), float(centres[i, 1])
        radius = float(_u(1, 0.04, 0.22, device)) * min(h, w)
        yy = torch.arange(h, device=device).view(-1, 1).float()
        xx = torch.arange(w, device=device).view(1, -1).float()
        bump = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        f = bump * (1 + 0.6 * field)
        out[i] = ((f - 0.5) * 4 + 0.5).clamp(0, 1)  # a soft edge, and exactly 0 outside
    return out


def line_masks(
    n: int, h: int, w: int, device: torch.device, centres: Tensor | None = None
) -> Tensor:
    """Soft (n, h, w) masks of thin polylines (scratches, cracks, fibres) starting at
    ``centres`` (n, 2; None: random points), 1 to 4 segments, 0.7 to 2.5 pixels wide."""
    yy = torch.arange(h, device=device).view(1, -1, 1).float()
    xx = torch.arange(w, device=device).view(1, 1, -1).float()
    out = torch.zeros(n, h, w, device=device)
    size = float(min(h, w))
    for i in range(n):
        if centres is None:
            p = torch.rand(2, device=device) * torch.tensor([h, w], device=device)
        else:
            p = centres[i].to(device)
        angle = float(torch.rand(1)) * 6.2832
        width = float(_u(1, 0.7, 2.5, device))
        for _ in range(int(torch.randint(1, 5, (1,)))):
            angle += float(torch.randn(1)) * 0.7
            length = float(_u(1, 0.05, 0.3, device)) * size
            q = p + length * torch.tensor([math.sin(angle), math.cos(angle)], device=device)
            d = q - p
            t = (((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / (d @ d).clamp_min(1e-6)).clamp(0, 1)
            dist = torch.sqrt((yy - p[0] - t * d[0]) ** 2 + (xx - p[1] - t * d[1]) ** 2)[0]
            out[i] = torch.maximum(out[i], ((width / 2 + 0.5 - dist) * 2).clamp(0, 1))
            p = q
    return out


def on_part_centres(x: Tensor) -> Tensor:
    """One corruption centre (row, column) per image of ``x`` (N, C, H, W): in ``ON_PART`` of
    the images drawn in proportion to how far the pixels around it stand out from the image's
    median (its 5 x 5 mean absolute deviation), elsewhere uniformly. A defect lies on the part,
    and on an object in a fixture most of a training crop is fixture: uniform centres taught
    the repair and the defect head mostly on the conveyor (the pill's rows under 0.90). On a
    texture it favours the grain's extremes, and cost metal's worn patches (bench/README.md):
    used for aligned parts only (``TrainConfig.corrupt_on_part``, set by
    ``trainer.defaults.choose_training``)."""
    n, _, h, w = x.shape
    out = torch.rand(n, 2) * torch.tensor([h, w], dtype=torch.float32)
    if n == 0:
        return out
    dev = (x - x.flatten(2).median(dim=2).values[:, :, None, None]).abs().sum(dim=1)
    dev = F.avg_pool2d(dev[:, None], 5, 1, 2, count_include_pad=False)[:, 0].flatten(1).cpu()
    weighted = torch.nonzero((torch.rand(n) < ON_PART) & (dev.sum(dim=1) > 0)).flatten()
    if len(weighted):
        at = torch.multinomial(dev[weighted], 1)[:, 0]
        jitter = torch.rand(len(weighted), 2)
        out[weighted] = torch.stack([at // w, at % w], dim=1).float() + jitter
    return out


def _fill(x: Tensor, kind: str, i: int) -> Tensor:
    """What goes into image i's corrupted region."""
    img, dev = x[i], x.device
    c, h, w = img.shape
    if kind == "foreign":
        other = x[int(torch.randint(0, len(x), (1,)))]
        other = torch.roll(other, (int(torch.randint(0, h, (1,))), int(torch.randint(0, w, (1,)))),
                           dims=(1, 2))  # fmt: skip
        if torch.rand(1) < 0.5:
            other = other.flip(-1)
        if torch.rand(1) < 0.5 and h == w:
            other = other.transpose(1, 2)
        if torch.rand(1) < 0.3:
            other = 1 - other
        return (other * _u(1, 0.5, 1.5, dev) + _u(1, -0.3, 0.3, dev)).clamp(0, 1)
    if kind == "flat":
        return torch.rand(c, 1, 1, device=dev).expand(c, h, w)
    if kind == "shift":
        sign = 1.0 if torch.rand(1) < 0.5 else -1.0
        delta = sign * _u(1, 0.03, 0.2, dev) + 0.04 * torch.randn(c, 1, 1, device=dev)
        return (img + delta).clamp(0, 1)
    if kind == "smooth":
        k = int(torch.randint(2, 5, (1,))) * 2 + 1
        return F.avg_pool2d(img[None], k, 1, k // 2, count_include_pad=False)[0]
    if kind == "tint":  # a zero-sum colour offset of 4 to 15 %, a little brightness
        hue = torch.randn(c, device=dev)
        hue = hue - hue.mean()
        hue = hue / hue.norm().clamp_min(1e-6)
        delta = hue * _u(1, 0.04, 0.15, dev) + _u(1, -0.03, 0.03, dev)
        return (img + delta[:, None, None]).clamp(0, 1)
    return torch.rand(c, h, w, device=dev)


def noise_level(img: Tensor) -> Tensor:
    """The sensor noise's standard deviation per channel (C, 1, 1) of an image (C, H, W), by
    Immerkaer's estimator (1996) made robust: the median absolute response to a 3 x 3 mask that
    cancels any locally linear image, in units of a Gaussian's spread. Texture adds a little."""
    k = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], device=img.device)
    r = F.conv2d(img[:, None], k.view(1, 1, 3, 3))[:, 0] / 6.0  # unit gain for white noise
    return (r.abs().flatten(1).median(dim=1).values / 0.6745)[:, None, None]


def corrupt(
    x: Tensor, p: float = 0.5, on_part: bool = False, lines: float = LINES
) -> tuple[Tensor, Tensor]:
    """A copy of the batch (N, C, H, W) in [0, 1] with a structured corruption in a fraction
    ``p`` of its images (the others untouched: the model must also leave normal parts alone),
    and the corruption's mask (N, H, W): 1 where it covers a pixel and changed it visibly
    (``VISIBLE``), what a defect head (``vlae.head``) learns to find. ``on_part``: centres
    from ``on_part_centres`` (for parts in a fixture); else uniform, in the draws made before
    it existed, so a texture's fit repeats. ``lines``: the share of thin polylines among the
    corruptions, the rest blobs (the draws are the same at every share)."""
    n, _, h, w = x.shape
    mask = torch.zeros(n, h, w, device=x.device)
    hit = torch.nonzero(torch.rand(n) < p).flatten().tolist()
    if not hit:
        return x, mask
    centres = on_part_centres(x[hit]) if on_part else None
    thin = torch.rand(len(hit)) < lines
    masks = torch.empty(len(hit), h, w, device=x.device)
    if thin.any():
        at = None if centres is None else centres[thin]
        masks[thin] = line_masks(int(thin.sum()), h, w, x.device, at)
    if (~thin).any():
        at = None if centres is None else centres[~thin]
        masks[~thin] = blob_masks(int((~thin).sum()), h, w, x.device, at)
    out = x.clone()
    fills = COLOUR_FILLS if x.shape[1] == 3 else FILLS
    for j, i in enumerate(hit):
        kind = fills[int(torch.randint(0, len(fills), (1,)))]
        alpha = masks[j] * _u(1, 0.6, 1.0, x.device)
        out[i] = x[i] * (1 - alpha) + _fill(x, kind, i) * alpha
        changed = (out[i] - x[i]).abs().amax(dim=0) > VISIBLE
        mask[i] = ((alpha > COVERED) & changed).float()
        if kind in NOISELESS:  # after the mask: noise alone is no defect to find
            out[i] = (out[i] + alpha * noise_level(x[i]) * torch.randn_like(x[i])).clamp(0, 1)
    return out, mask
