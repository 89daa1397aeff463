"""The likelihood side of the VLAE family as pure tensor functions: the ELBO's terms, the
per-pixel terms of the anomaly map, and the one function every score goes through.

Every model maps images in [0, 1] of shape (N, C, H, W) to a diagonal Gaussian posterior
q(z|x) = N(mu, exp(logvar)) (one vector per image, or one per latent cell for the
``SpatialVLAE``) and decodes z back to pixel logits, read as Bernoulli probabilities or as the
means of a Gaussian of fixed scale. The anomaly score starts from the negative ELBO evaluated
deterministically at z = mu:

    elbo(x) = recon(x) + KL(q(z|x) || N(0, I))

Score kinds (``combine_score``):

- ``elbo``: that sum over the whole image.
- ``elbo_per_tv``: the sum over the input's total variation, ``(recon + KL) / (TV(x) + 1)``.
  A VAE's likelihood favours simple inputs: a thin stroke reconstructs with few wrong pixels
  under any digit's model, so it scores as more normal than the normal class itself;
  normalising by a model-free complexity estimate removes that bias (Serra et al. 2020). The
  best measured on digits.
- ``local``: the maximum of an anomaly map. Per pixel, the reconstruction term (0 for a perfect
  reconstruction at any pixel value: ``gaussian_map``, ``bernoulli_kl_map``), the same term of
  the residual's local mean, and the KL of the pixel's latent cell, each standardised against
  the normal validation images' maps, then smoothed. ``recon`` and ``kl`` are the map's parts
  at its maximum. On photographs with small defects, a whole-image sum dilutes the defect, and
  both the Bernoulli floor and the division by TV reward dark holes, bright scratches and
  edges. ``bench/README.md`` has the numbers.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ScoreKind = Literal["elbo", "elbo_per_tv", "local"]
Parts = TypeVar("Parts", Tensor, np.ndarray)
# The terms of the anomaly map, in order. COARSE is the side of the local mean in "coarse";
# TEXTURE the side of the local mean a pixel's detail is taken against in "texture", and
# TEXTURE_WINDOW the side over which that detail's energy is pooled.
MAP_TERMS = ("recon", "coarse", "texture", "kl")
RECON_TERMS = ("recon", "coarse", "texture")  # the recon part of the local score: their max
# A model with a defect head (``vlae.head``) adds its logit as a fifth term, and the recon
# part of its score is that term alone: it was measured better than every fixed term, alone
# or in the max (bench/README.md).
HEAD_TERM = "defect"
COARSE = 5
TEXTURE = 5
TEXTURE_WINDOW = 7
SCORE_KIND_TEXT = {
    "elbo": "recon + kl at z = mu (recon: the likelihood's negative log, summed over pixels)",
    "elbo_per_tv": "(recon + kl) / (complexity + 1) at z = mu; complexity: total variation of "
    "the input in [0, 1] pixel units",
    "local": "max over the image of the anomaly map, recon + kl at the worst place. Terms: the "
    "per-pixel reconstruction term (0 for a perfect reconstruction at any pixel value), the "
    "same for the residual's 5x5 local mean, the missing local texture energy of the input, "
    "and the KL of each latent cell spread over its pixels. Each is standardised against the "
    "normal validation images' maps (per pixel for aligned parts, pooled for textures), "
    "Gaussian-smoothed, then put in units of the spread of its normal per-image maximum "
    "(0 = a typical normal image's worst place). recon = the largest of the first three; "
    "kl = the KL term where it exceeds 0, else 0; recon and kl are the map's two parts at its "
    "maximum",
}
HEAD_SCORE_TEXT = (
    "max over the image of the anomaly map, recon + kl at the worst place. recon: the defect "
    "head's logit per pixel, read from the input beside its reconstruction (a small U-Net "
    "trained with the VLAE to find the synthetic corruptions the VLAE learns to repair: "
    "DRAEM's discriminative half), standardised against the normal validation images' maps "
    "(pooled), Gaussian-smoothed, then put in units of the spread of its normal per-image "
    "maximum (0 = a typical normal image's worst place). kl: the KL of each latent cell "
    "spread over its pixels, treated the same way (but standardised per pixel for aligned "
    "parts), where it exceeds 0, else 0, times the architecture's kl_weight; recon and kl "
    "are the map's two parts at its maximum"
)


def map_terms(head: bool) -> tuple[str, ...]:
    """The terms of a model's anomaly map, in order; ``head``: it has a defect head."""
    return (*MAP_TERMS, HEAD_TERM) if head else MAP_TERMS


def recon_terms(head: bool) -> tuple[str, ...]:
    """The map terms whose largest is the ``local`` score's recon part."""
    return (HEAD_TERM,) if head else RECON_TERMS


def combine_score(
    recon: Parts,
    kl: Parts,
    complexity: Parts | None,
    kind: ScoreKind,
    contrast: Parts | None = None,
) -> Parts:
    """The anomaly score from its parts; higher is more anomalous. Per item, or per pixel of
    a map (parts that broadcast); tensors or numpy arrays. ``elbo`` and ``local``: recon + kl;
    ``elbo_per_tv``: that over complexity + 1. A conditional item's ``contrast`` is added
    before the division (``vlae.score.Scores``)."""
    elbo = (recon if contrast is None else recon + contrast) + kl
    if kind in ("elbo", "local"):
        return elbo
    if kind == "elbo_per_tv":
        if complexity is None:
            raise ValueError("the elbo_per_tv score needs the input's complexity")
        return elbo / (complexity + 1.0)
    raise ValueError(f"unknown score kind {kind!r}")


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per item; Kingma & Welling 2013, Appendix B."""
    return kl_cells(mu, logvar).flatten(1).sum(dim=1)


def kl_cells(mu: Tensor, logvar: Tensor) -> Tensor:
    """The KL per latent unit: (N, D) for a dense latent; (N, h, w) per cell of a spatial
    latent (N, D, h, w), summed over its D channels."""
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return kl if kl.dim() == 2 else kl.sum(dim=1)


def total_variation(x: Tensor) -> Tensor:
    """Per item, the summed absolute differences between horizontal and vertical neighbours
    (all channels, pixels in [0, 1]): the input-complexity estimate of the ``elbo_per_tv``
    score. 0 for a blank image."""
    dh = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(dim=1)
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(dim=1)
    return dh + dv


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy summed over pixels, per item (the deck's BCE with reduction='sum').

    Computed from logits rather than sigmoid outputs: same value, no log(0) at saturated pixels.
    """
    nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return nll.flatten(1).sum(dim=1)


def bernoulli_kl_map(logits: Tensor, target: Tensor) -> Tensor:
    """Per pixel (summed over channels), BCE(x, p) - BCE(x, x): the Bernoulli KL from the
    target pixel to the reconstruction. Plain BCE never falls below the entropy H(x), which is
    largest at mid-grey and 0 at black or white, so a dark hole or a bright scratch would cost
    *less* than a grey pixel reconstructed perfectly; this costs 0 for a perfect
    reconstruction at every pixel value."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    t = target.clamp(1e-6, 1 - 1e-6)
    floor = -(t * t.log() + (1 - t) * (1 - t).log())
    return (bce - floor).clamp_min(0).sum(dim=1)


def gaussian_nll(mean: Tensor, target: Tensor, log_scale: Tensor) -> Tensor:
    """Gaussian negative log-likelihood summed over pixels, per item; ``log_scale`` per
    channel (C,). Its pixel-value-free part is ``gaussian_map``."""
    c = target.shape[1]
    const = (log_scale.view(1, c, 1, 1) + 0.5 * math.log(2 * math.pi)).expand_as(target)
    return (gaussian_map(mean, target, log_scale) + const.sum(dim=1)).flatten(1).sum(dim=1)


def gaussian_map(mean: Tensor, target: Tensor, log_scale: Tensor) -> Tensor:
    """Per pixel (summed over channels), 0.5 * ((x - mean) / scale)^2: the Gaussian negative
    log-likelihood less its constant, the same for every pixel value."""
    c = target.shape[1]
    z = (target - mean) * torch.exp(-log_scale).view(1, c, 1, 1)
    return 0.5 * z.pow(2).sum(dim=1)


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian kernel of radius ceil(2 sigma)."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def smooth(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of (N, H, W) maps (separable, edges replicated); identity at 0."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel(sigma).to(maps)
    r = len(k) // 2
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0]


def box_mean(x: Tensor, k: int, sigmoid: bool = False) -> Tensor:
    """The k x k local mean of (N, C, H, W) images, same size (edges averaged over what is
    inside the image); ``sigmoid``: of logits' pixel means, returned as logits again."""
    if sigmoid:
        x = torch.sigmoid(x)
    out = F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)[..., : x.shape[-2], : x.shape[-1]]
    return torch.logit(out.clamp(1e-6, 1 - 1e-6)) if sigmoid else out


def kl_pixels(mu: Tensor, logvar: Tensor, h: int, w: int) -> Tensor:
    """The KL per pixel (N, H, W): a spatial latent's cell KL spread over its cell, a dense
    latent's over the image."""
    cells = kl_cells(mu, logvar)
    if cells.dim() == 2:
        return (cells.sum(dim=1) / (h * w)).view(-1, 1, 1).expand(-1, h, w)
    kl = F.interpolate(cells[:, None], size=(h, w), mode="nearest")[:, 0]
    return kl * (cells.shape[-2] * cells.shape[-1]) / (h * w)


def local_parts(recon: Tensor, kl: Tensor) -> tuple[Tensor, Tensor]:
    """Per item, the recon and KL maps (N, H, W) where the ``local`` score's map is largest."""
    at = combine_score(recon, kl, None, "local").flatten(1).argmax(dim=1, keepdim=True)
    return recon.flatten(1).gather(1, at)[:, 0], kl.flatten(1).gather(1, at)[:, 0]
