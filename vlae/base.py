"""``VLAEBase``: what every model of the VLAE family shares, whatever its layers: the ELBO
terms training minimises, the anomaly map, and the deterministic score (``vlae.likelihood``
has the math). A network (``vlae.model``) builds its layers, implements ``encode`` and
``decode_logits``, then calls ``_init_scoring``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlae.condition import one_hot
from vlae.head import focal_loss
from vlae.likelihood import (
    COARSE,
    HEAD_TERM,
    TEXTURE,
    TEXTURE_WINDOW,
    bernoulli_kl_map,
    bernoulli_nll,
    box_mean,
    combine_score,
    gaussian_map,
    gaussian_nll,
    kl_divergence,
    kl_pixels,
    local_parts,
    map_terms,
    recon_terms,
    smooth,
    total_variation,
)

MIN_PIXEL_STATS = 8  # normal images below which per-pixel map statistics fall back to pooled


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I)."""
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std


class VLAEBase(nn.Module):
    """A model of the family. ``c`` is a batch of conditions (``vlae.condition``): codes (N,)
    or one-hot weights (N, K), None for an unconditional model."""

    config: Any
    log_scale: Tensor  # buffers of ``_init_scoring``
    map_mean: Tensor
    map_std: Tensor
    term_peak: Tensor
    head: nn.Module  # the defect head (``vlae.head``), where the config asks for one

    @property
    def has_head(self) -> bool:
        return bool(getattr(self.config, "head", 0))

    @property
    def map_terms(self) -> tuple[str, ...]:
        """The terms of this model's anomaly map, in order (``vlae.likelihood.map_terms``)."""
        return map_terms(self.has_head)

    def _init_scoring(self) -> None:
        c, h, w = self.config.image_shape
        if self.config.likelihood == "gaussian":
            # The decoder's scale per channel, fixed: learned with the weights, it grows to the
            # texture's own spread and the decoder settles on the mean image (posterior
            # collapse). The anomaly map is standardised against normal maps anyway.
            self.register_buffer("log_scale", torch.full((c,), math.log(self.config.scale)))
        if self.config.score_kind == "local":
            # Map standardisation (set by ``set_map_stats`` after training, saved with the
            # weights): the normal maps' mean and spread per term (MAP_TERMS), per pixel or
            # pooled; then, per term, the mean and spread of the normal images' map maximum.
            t = len(self.map_terms)
            self.register_buffer("map_mean", torch.zeros(t, h, w))
            self.register_buffer("map_std", torch.ones(t, h, w))
            self.register_buffer("term_peak", torch.tensor([[0.0, 1.0]] * t))

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode_logits(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Pixel means in [0, 1], shaped like the input images."""
        return torch.sigmoid(self.decode_logits(z, c))

    def forward(
        self, x: Tensor, c: Tensor | None = None, sample: bool = True, segment: bool = False
    ) -> tuple[Tensor, ...]:
        """Return (reconstruction logits, mu, logvar); z is sampled unless ``sample=False``.
        ``segment``: also the defect head's logits (N, H, W) of x beside its reconstruction,
        detached, so that the head's loss leaves the VLAE alone (and a data-parallel wrapper
        sees every parameter used in one pass)."""
        mu, logvar = self.encode(x, c)
        z = reparameterize(mu, logvar) if sample else mu
        logits = self.decode_logits(z, c)
        if not segment:
            return logits, mu, logvar
        return logits, mu, logvar, self.head(x, torch.sigmoid(logits).detach())

    @torch.no_grad()
    def reconstruct(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The reconstruction the score compares ``x`` with: pixel means at z = mu."""
        mu, _ = self.encode(x, c)
        return self.decode(mu, c)

    def recon_nll(self, logits: Tensor, target: Tensor) -> Tensor:
        """The likelihood's negative log per item (the training objective's recon term)."""
        if self.config.likelihood == "gaussian":
            return gaussian_nll(torch.sigmoid(logits), target, self.log_scale)
        return bernoulli_nll(logits, target)

    def recon_map(self, logits: Tensor, target: Tensor) -> Tensor:
        """The reconstruction term per pixel (N, H, W), 0 for a perfect reconstruction at any
        pixel value: the Bernoulli KL, or the Gaussian's squared standardised error."""
        if self.config.likelihood == "gaussian":
            return gaussian_map(torch.sigmoid(logits), target, self.log_scale)
        return bernoulli_kl_map(logits, target)

    def elbo_terms(
        self,
        x: Tensor,
        target: Tensor | None = None,
        c: Tensor | None = None,
        sample: bool = True,
        forward: nn.Module | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-item (recon, kl) of the negative ELBO: the training loss's terms and the
        ``elbo`` score's parts. ``target`` differs from ``x`` only for denoising training;
        ``forward`` runs the pass instead of the model itself: its data-parallel wrapper
        while training, so that gradients are synchronised."""
        logits, mu, logvar = (forward or self)(x, c, sample=sample)
        return self.recon_nll(logits, x if target is None else target), kl_divergence(mu, logvar)

    def repair_terms(
        self,
        x: Tensor,
        target: Tensor,
        mask: Tensor,
        c: Tensor | None = None,
        sample: bool = True,
        forward: nn.Module | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-item (recon, kl, head) of a model with a defect head, on corrupted images ``x``
        of clean ``target``: the ELBO's terms, and the head's focal loss against ``mask``
        (N, H, W), 1 where the corruption changed a pixel."""
        logits, mu, logvar, seg = (forward or self)(x, c, sample=sample, segment=True)
        return self.recon_nll(logits, target), kl_divergence(mu, logvar), focal_loss(seg, mask)

    def pixel_terms(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """At z = mu, the map terms (N, len(MAP_TERMS), H, W), in order:
        - recon: the reconstruction term per pixel, in nats;
        - coarse: the same for the residual's local mean, in nats of the mean (a stain or a
          tint is a small shift over many pixels: weak in any one pixel, strong in their mean);
        - texture: minus the input's local texture energy, the RMS of its detail about its
          local mean, in pixel units. A worn or smoothed patch has lost its texture; the
          reconstruction reproduces the smooth patch (the best guess of a texture whose phase
          is unknown is its mean), so no reconstruction error can see it, but its missing
          energy can;
        - kl: a spatial latent's cell KL spread over its cell, a dense latent's over the
          image, in nats;
        - defect (a model with a defect head only): the head's logit of x beside its
          reconstruction.
        The units cancel when each term is standardised against the normal maps."""
        logits, mu, logvar = self(x, c, sample=False)[:3]
        recon = self.recon_map(logits, x)
        # Nats of the k x k mean, per pixel of it: unit variance for pixel noise.
        coarse_mean = box_mean(logits, COARSE, sigmoid=True)
        coarse = self.recon_map(coarse_mean, box_mean(x, COARSE)) * COARSE**2
        detail = (x - box_mean(x, TEXTURE)).pow(2).sum(dim=1, keepdim=True)
        texture = -box_mean(detail, TEXTURE_WINDOW)[:, 0].clamp_min(0).sqrt()
        kl = kl_pixels(mu, logvar, *x.shape[-2:])
        terms = [recon, coarse, texture, kl]
        if self.has_head:
            terms.append(self.head(x, torch.sigmoid(logits)))
        return torch.stack(terms, dim=1)

    @torch.no_grad()
    def set_map_stats(self, terms: Tensor) -> None:
        """Standardise future maps against these normal map terms (N, T, H, W): per pixel
        (``map_norm='pixel'``, smoothed so a few dozen images suffice; pooled below
        ``MIN_PIXEL_STATS`` images, where a pixel's spread cannot be estimated) or pooled.
        The defect head's term is always pooled: the head has learned the part's layout, and
        per pixel its logit's small spread on the background would turn noise into alarms
        (washer: image AUROC 0.91 per pixel, 0.98 pooled; bench/README.md)."""
        if self.config.map_norm == "pixel" and len(terms) >= MIN_PIXEL_STATS:
            mean = smooth(terms.mean(dim=0), self.config.map_sigma)
            std = smooth(terms.std(dim=0), self.config.map_sigma)
        else:
            mean = terms.mean(dim=(0, 2, 3))[:, None, None].expand_as(terms[0])
            std = terms.std(dim=(0, 2, 3))[:, None, None].expand_as(terms[0])
        if self.has_head:  # the head's logit is already a judgment of each place: pooled
            mean, std = mean.clone(), std.clone()
            at = self.map_terms.index(HEAD_TERM)
            mean[at], std[at] = terms[:, at].mean(), terms[:, at].std()
        # A floor on the spread: a pixel that never varied must not turn noise into alarms.
        floor = std.mean(dim=(1, 2), keepdim=True) * 0.1
        self.map_mean.copy_(mean)
        self.map_std.copy_(torch.maximum(std, floor.clamp_min(1e-6)))
        # Each term's smoothed map puts its normal maximum somewhere else; in units of that
        # maximum's spread, the terms compare fairly, and the largest can be taken.
        self.term_peak.copy_(torch.tensor([[0.0, 1.0]] * len(self.map_terms)))
        if len(terms) >= 2:
            peaks = self._term_maps(terms).flatten(2).max(dim=2).values  # (N, T)
            self.term_peak.copy_(torch.stack([peaks.mean(0), peaks.std(0).clamp_min(1e-6)], 1))

    def _term_maps(self, terms: Tensor) -> Tensor:
        """Terms (N, T, H, W) standardised against the normal maps, then smoothed."""
        z = (terms - self.map_mean) / self.map_std
        n, t, h, w = z.shape
        return smooth(z.reshape(n * t, h, w), self.config.map_sigma).reshape(n, t, h, w)

    def anomaly_maps(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The recon and KL maps (N, H, W) of the ``local`` score; its anomaly map combines
        them. Each term, standardised and smoothed, is measured from the normal images' mean
        map maximum in units of its spread; recon is the largest of the recon terms
        (``vlae.likelihood.recon_terms``), kl the KL term above 0 (below, it is the noise of
        normal latents and would only blur recon), times the config's ``kl_weight``."""
        peak = self.term_peak
        z = (self._term_maps(self.pixel_terms(x, c)) - peak[:, 0, None, None]) / peak[
            :, 1, None, None
        ]
        terms = self.map_terms
        recon = z[:, [terms.index(t) for t in recon_terms(self.has_head)]].max(dim=1).values
        weight = getattr(self.config, "kl_weight", 1.0)  # only the spatial model weighs it
        return recon, weight * z[:, terms.index("kl")].clamp_min(0)

    @torch.no_grad()
    def anomaly_score(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-item (recon, kl) at z = mu, so the same image always gets the same score. For
        the ``local`` score they are the two parts of the anomaly map at its maximum."""
        if self.config.score_kind != "local":
            return self.elbo_terms(x, c=c, sample=False)
        return local_parts(*self.anomaly_maps(x, c))

    @torch.no_grad()
    def score_map(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The map (N, H, W) the score is built from: for ``local``, the anomaly map (the
        score is its maximum); for ``elbo``, the likelihood's negative log per pixel plus the
        KL spread evenly (the score is its sum); for ``elbo_per_tv``, that over TV + 1."""
        if self.config.score_kind == "local":
            recon, kl = self.anomaly_maps(x, c)
            return combine_score(recon, kl, None, "local")
        logits, mu, logvar = self(x, c, sample=False)[:3]
        h, w = x.shape[-2:]
        kl = (kl_divergence(mu, logvar) / (h * w)).view(-1, 1, 1)
        complexity = total_variation(x).view(-1, 1, 1)
        return combine_score(self.recon_nll_map(logits, x), kl, complexity, self.config.score_kind)

    def recon_nll_map(self, logits: Tensor, target: Tensor) -> Tensor:
        """The likelihood's negative log per pixel (N, H, W); sums to ``recon_nll``."""
        if self.config.likelihood == "gaussian":
            c = target.shape[1]
            const = float(self.log_scale.sum()) + 0.5 * c * math.log(2 * math.pi)
            return gaussian_map(torch.sigmoid(logits), target, self.log_scale) + const
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)

    def condition_input(self, c: Tensor | None, device: torch.device) -> Tensor | None:
        """The condition vectors (N, K) a conditional network takes, from a batch of codes or
        of one-hot weights; None for an unconditional model."""
        k = self.config.num_conditions
        if k == 0:
            return None
        if c is None:
            raise ValueError("a conditional model needs a condition index for each item")
        if c.dtype.is_floating_point and c.dim() == 2:
            return c.to(device)
        return one_hot(c.to(device), k)
