"""The VLAE model family of the seed deck, a convolutional variant, and a fully convolutional
one for photographs of parts; their likelihoods, anomaly maps and scores.

Every model maps images in [0, 1] of shape (N, C, H, W) to a diagonal Gaussian posterior
q(z|x) = N(mu, exp(logvar)) (one vector per image, or one per latent cell for the
``SpatialVLAE``) and decodes z back to pixel logits, read as Bernoulli probabilities or as the
means of a Gaussian of fixed scale. The anomaly score starts from the negative ELBO evaluated
deterministically at z = mu:

    elbo(x) = recon(x) + KL(q(z|x) || N(0, I))

Score kinds:

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

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Arch = Literal["mlp", "conv", "spatial"]
ScoreKind = Literal["elbo", "elbo_per_tv", "local"]
Likelihood = Literal["bernoulli", "gaussian"]
MapNorm = Literal["pixel", "pooled"]
# The terms of the anomaly map, in order. COARSE is the side of the local mean in "coarse";
# TEXTURE the side of the local mean a pixel's detail is taken against in "texture", and
# TEXTURE_WINDOW the side over which that detail's energy is pooled.
MAP_TERMS = ("recon", "coarse", "texture", "kl")
RECON_TERMS = ("recon", "coarse", "texture")  # the recon part of the local score: their max
COARSE = 5
TEXTURE = 5
TEXTURE_WINDOW = 7
MIN_PIXEL_STATS = 8  # normal images below which per-pixel map statistics fall back to pooled
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


@dataclass(frozen=True)
class VLAEConfig:
    """MLP VLAE of the deck (slide 2); ``num_conditions > 0`` makes it the ConditionalVLAE."""

    image_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W
    latent_dim: int = 20
    hidden: tuple[int, ...] = (256, 128)
    batch_norm: bool = False  # the deck's slide-14 "ImprovedVLAE"
    num_conditions: int = 0
    score_kind: ScoreKind = "elbo_per_tv"
    likelihood: Likelihood = "bernoulli"
    scale: float = 0.05  # the Gaussian likelihood's standard deviation, in [0, 1] pixel units
    map_norm: MapNorm = "pooled"
    map_sigma: float = 2.0  # Gaussian smoothing of the anomaly map, in pixels
    arch: Arch = field(default="mlp", init=False)

    @property
    def input_dim(self) -> int:
        return math.prod(self.image_shape)


@dataclass(frozen=True)
class ConvVLAEConfig:
    """Convolutional VLAE for images of any size and channel count."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 32
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 256
    batch_norm: bool = False
    num_conditions: int = 0
    score_kind: ScoreKind = "elbo_per_tv"
    likelihood: Likelihood = "bernoulli"
    scale: float = 0.05
    map_norm: MapNorm = "pooled"
    map_sigma: float = 2.0
    arch: Arch = field(default="conv", init=False)


@dataclass(frozen=True)
class SpatialVLAEConfig:
    """Fully convolutional VLAE: the latent is a grid of cells (one per 2**len(channels) pixels
    square), so the model describes a part locally and a local defect touches only its cells.
    Made for textures and parts larger than a dense latent can describe."""

    image_shape: tuple[int, int, int] = (1, 64, 64)
    latent_dim: int = 16  # channels of each latent cell
    channels: tuple[int, ...] = (32, 64)  # a latent cell per 4 x 4 pixels
    batch_norm: bool = False
    num_conditions: int = 0
    score_kind: ScoreKind = "local"
    likelihood: Likelihood = "gaussian"
    scale: float = 0.05  # the Gaussian likelihood's standard deviation, in [0, 1] pixel units
    map_norm: MapNorm = "pooled"
    map_sigma: float = 2.0
    arch: Arch = field(default="spatial", init=False)


ModelConfig = VLAEConfig | ConvVLAEConfig | SpatialVLAEConfig


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


def combine_score(recon: Tensor, kl: Tensor, complexity: Tensor, kind: ScoreKind) -> Tensor:
    """The anomaly score from its parts; higher is more anomalous."""
    if kind in ("elbo", "local"):
        return recon + kl
    if kind == "elbo_per_tv":
        return (recon + kl) / (complexity + 1.0)
    raise ValueError(f"unknown score kind {kind!r}")


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


def _box(x: Tensor, k: int, sigmoid: bool = False) -> Tensor:
    """The k x k local mean of (N, C, H, W) images, same size (edges averaged over what is
    inside the image); ``sigmoid``: of logits' pixel means, returned as logits again."""
    if sigmoid:
        x = torch.sigmoid(x)
    out = F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)[..., : x.shape[-2], : x.shape[-1]]
    return torch.logit(out.clamp(1e-6, 1 - 1e-6)) if sigmoid else out


def _kl_pixels(mu: Tensor, logvar: Tensor, h: int, w: int) -> Tensor:
    """The KL per pixel (N, H, W): a spatial latent's cell KL spread over its cell, a dense
    latent's over the image."""
    cells = kl_cells(mu, logvar)
    if cells.dim() == 2:
        return (cells.sum(dim=1) / (h * w)).view(-1, 1, 1).expand(-1, h, w)
    kl = F.interpolate(cells[:, None], size=(h, w), mode="nearest")[:, 0]
    return kl * (cells.shape[-2] * cells.shape[-1]) / (h * w)


def local_parts(recon: Tensor, kl: Tensor) -> tuple[Tensor, Tensor]:
    """Per item, the recon and KL maps (N, H, W) where their sum is largest."""
    at = (recon + kl).flatten(1).argmax(dim=1, keepdim=True)
    return recon.flatten(1).gather(1, at)[:, 0], kl.flatten(1).gather(1, at)[:, 0]


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I)."""
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std


def _mlp(sizes: list[int], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers.append(nn.Linear(a, b))
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _VLAEBase(nn.Module):
    """What every family member shares: the ELBO terms, the anomaly map and the deterministic
    score. A subclass builds its layers, then calls ``_init_scoring``."""

    config: Any
    log_scale: Tensor  # buffers of ``_init_scoring``
    map_mean: Tensor
    map_std: Tensor
    term_peak: Tensor

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
            self.register_buffer("map_mean", torch.zeros(len(MAP_TERMS), h, w))
            self.register_buffer("map_std", torch.ones(len(MAP_TERMS), h, w))
            self.register_buffer("term_peak", torch.tensor([[0.0, 1.0]] * len(MAP_TERMS)))

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode_logits(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Pixel means in [0, 1], shaped like the input images."""
        return torch.sigmoid(self.decode_logits(z, c))

    def forward(
        self, x: Tensor, c: Tensor | None = None, sample: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return (reconstruction logits, mu, logvar); z is sampled unless ``sample=False``."""
        mu, logvar = self.encode(x, c)
        z = reparameterize(mu, logvar) if sample else mu
        return self.decode_logits(z, c), mu, logvar

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
    ) -> tuple[Tensor, Tensor]:
        """Per-item (recon, kl). ``target`` differs from ``x`` only for denoising training."""
        logits, mu, logvar = self(x, c, sample=sample)
        return self.recon_nll(logits, x if target is None else target), kl_divergence(mu, logvar)

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
          image, in nats.
        The units cancel when each term is standardised against the normal maps."""
        logits, mu, logvar = self(x, c, sample=False)
        recon = self.recon_map(logits, x)
        # Nats of the k x k mean, per pixel of it: unit variance for pixel noise.
        coarse = self.recon_map(_box(logits, COARSE, sigmoid=True), _box(x, COARSE)) * COARSE**2
        detail = (x - _box(x, TEXTURE)).pow(2).sum(dim=1, keepdim=True)
        texture = -_box(detail, TEXTURE_WINDOW)[:, 0].clamp_min(0).sqrt()
        kl = _kl_pixels(mu, logvar, *x.shape[-2:])
        return torch.stack([recon, coarse, texture, kl], dim=1)

    @torch.no_grad()
    def set_map_stats(self, terms: Tensor) -> None:
        """Standardise future maps against these normal map terms (N, T, H, W): per pixel
        (``map_norm='pixel'``, smoothed so a few dozen images suffice; pooled below
        ``MIN_PIXEL_STATS`` images, where a pixel's spread cannot be estimated) or pooled."""
        if self.config.map_norm == "pixel" and len(terms) >= MIN_PIXEL_STATS:
            mean = smooth(terms.mean(dim=0), self.config.map_sigma)
            std = smooth(terms.std(dim=0), self.config.map_sigma)
        else:
            mean = terms.mean(dim=(0, 2, 3))[:, None, None].expand_as(terms[0])
            std = terms.std(dim=(0, 2, 3))[:, None, None].expand_as(terms[0])
        # A floor on the spread: a pixel that never varied must not turn noise into alarms.
        floor = std.mean(dim=(1, 2), keepdim=True) * 0.1
        self.map_mean.copy_(mean)
        self.map_std.copy_(torch.maximum(std, floor.clamp_min(1e-6)))
        # Each term's smoothed map puts its normal maximum somewhere else; in units of that
        # maximum's spread, the terms compare fairly, and the largest can be taken.
        self.term_peak.copy_(torch.tensor([[0.0, 1.0]] * len(MAP_TERMS)))
        if len(terms) >= 2:
            peaks = self._term_maps(terms).flatten(2).max(dim=2).values  # (N, T)
            self.term_peak.copy_(torch.stack([peaks.mean(0), peaks.std(0).clamp_min(1e-6)], 1))

    def _term_maps(self, terms: Tensor) -> Tensor:
        """Terms (N, T, H, W) standardised against the normal maps, then smoothed."""
        z = (terms - self.map_mean) / self.map_std
        n, t, h, w = z.shape
        return smooth(z.reshape(n * t, h, w), self.config.map_sigma).reshape(n, t, h, w)

    def anomaly_maps(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The recon and KL maps (N, H, W) of the ``local`` score; their sum is its anomaly
        map. Each term, standardised and smoothed, is measured from the normal images' mean
        map maximum in units of its spread; recon is the largest of RECON_TERMS, kl the KL
        term above 0 (below, it is the noise of normal latents and would only blur recon)."""
        peak = self.term_peak
        z = (self._term_maps(self.pixel_terms(x, c)) - peak[:, 0, None, None]) / peak[
            :, 1, None, None
        ]
        recon = z[:, [MAP_TERMS.index(t) for t in RECON_TERMS]].max(dim=1).values
        return recon, z[:, MAP_TERMS.index("kl")].clamp_min(0)

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
            return recon + kl
        logits, mu, logvar = self(x, c, sample=False)
        h, w = x.shape[-2:]
        nll = self.recon_nll_map(logits, x) + (kl_divergence(mu, logvar) / (h * w)).view(-1, 1, 1)
        if self.config.score_kind == "elbo_per_tv":
            nll = nll / (total_variation(x) + 1.0).view(-1, 1, 1)
        return nll

    def recon_nll_map(self, logits: Tensor, target: Tensor) -> Tensor:
        """The likelihood's negative log per pixel (N, H, W); sums to ``recon_nll``."""
        if self.config.likelihood == "gaussian":
            c = target.shape[1]
            const = float(self.log_scale.sum()) + 0.5 * c * math.log(2 * math.pi)
            return gaussian_map(torch.sigmoid(logits), target, self.log_scale) + const
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)

    def condition(self, c: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        """One-hot condition vectors for the conditional variants; None for the others."""
        k = self.config.num_conditions
        if k == 0:
            return None
        if c is None:
            raise ValueError("a conditional model needs a condition index for each item")
        if c.dtype.is_floating_point and c.dim() == 2:
            return c.to(device)
        return F.one_hot(c.long().to(device), k).float()


class VLAE(_VLAEBase):
    """The deck's MLP VLAE: 784 -> 256 -> 128 -> (mu, logvar), and back with a sigmoid output."""

    def __init__(self, config: VLAEConfig) -> None:
        super().__init__()
        self.config = config
        k = config.num_conditions
        enc = [config.input_dim + k, *config.hidden]
        dec = [config.latent_dim + k, *reversed(config.hidden)]
        self.encoder = _mlp(enc, config.batch_norm)
        self.fc_mu = nn.Linear(config.hidden[-1], config.latent_dim)
        self.fc_logvar = nn.Linear(config.hidden[-1], config.latent_dim)
        self.decoder = nn.Sequential(
            _mlp(dec, config.batch_norm), nn.Linear(config.hidden[0], config.input_dim)
        )
        self._init_scoring()

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = x.flatten(1)
        onehot = self.condition(c, h.shape[0], h.device)
        if onehot is not None:
            h = torch.cat([h, onehot], dim=1)
        h = self.encoder(h)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        onehot = self.condition(c, z.shape[0], z.device)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        return self.decoder(z).view(-1, *self.config.image_shape)


class ConditionalVLAE(VLAE):
    """The deck's ConditionalVLAE (slide 10): the condition is concatenated to both inputs."""

    def __init__(self, config: VLAEConfig) -> None:
        if config.num_conditions < 1:
            raise ValueError("ConditionalVLAE needs num_conditions >= 1")
        super().__init__(config)


def _conv_out(size: int, n_layers: int) -> int:
    for _ in range(n_layers):
        size = (size + 2 * 1 - 4) // 2 + 1  # kernel 4, stride 2, padding 1
    return size


class ConvVLAE(_VLAEBase):
    """Strided-conv encoder and transposed-conv decoder; works for any C x H x W >= 8 x 8."""

    def __init__(self, config: ConvVLAEConfig) -> None:
        super().__init__()
        self.config = config
        c_in, h, w = config.image_shape
        n = len(config.channels)
        self.feat_shape = (config.channels[-1], _conv_out(h, n), _conv_out(w, n))
        if min(self.feat_shape[1:]) < 1:
            raise ValueError(f"image {h}x{w} is too small for {n} conv layers")
        feat = math.prod(self.feat_shape)
        k = config.num_conditions

        enc: list[nn.Module] = []
        prev = c_in
        for ch in config.channels:
            enc += [nn.Conv2d(prev, ch, 4, 2, 1)]
            if config.batch_norm:
                enc.append(nn.BatchNorm2d(ch))
            enc.append(nn.ReLU())
            prev = ch
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.fc_h = nn.Sequential(nn.Linear(feat + k, config.hidden), nn.ReLU())
        self.fc_mu = nn.Linear(config.hidden, config.latent_dim)
        self.fc_logvar = nn.Linear(config.hidden, config.latent_dim)

        self.fc_dec = nn.Sequential(
            nn.Linear(config.latent_dim + k, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, feat),
            nn.ReLU(),
        )
        dec: list[nn.Module] = []
        chans = list(reversed(config.channels))
        for a, b in itertools.pairwise(chans):
            dec += [nn.ConvTranspose2d(a, b, 4, 2, 1)]
            if config.batch_norm:
                dec.append(nn.BatchNorm2d(b))
            dec.append(nn.ReLU())
        dec.append(nn.ConvTranspose2d(chans[-1], c_in, 4, 2, 1))
        self.decoder = nn.Sequential(*dec)
        self._init_scoring()

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        onehot = self.condition(c, h.shape[0], h.device)
        if onehot is not None:
            h = torch.cat([h, onehot], dim=1)
        h = self.fc_h(h)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        onehot = self.condition(c, z.shape[0], z.device)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        logits = self.decoder(self.fc_dec(z).view(-1, *self.feat_shape))
        size = self.config.image_shape[1:]
        if tuple(logits.shape[-2:]) != size:
            # Odd sizes lose a pixel in each stride-2 step; resample back to the exact shape.
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class SpatialVLAE(_VLAEBase):
    """Strided convolutions down to a grid of latent cells (mu, logvar per cell), transposed
    convolutions back up; no dense layer, so any H x W divisible by 2**len(channels) works.
    A condition is broadcast over the image and the latent grid as extra channels."""

    def __init__(self, config: SpatialVLAEConfig) -> None:
        super().__init__()
        self.config = config
        c_in, h, w = config.image_shape
        n, k = len(config.channels), config.num_conditions
        if h % 2**n or w % 2**n:
            raise ValueError(f"image {h}x{w}: height and width must be multiples of {2**n}")

        def block(a: int, b: int, up: bool) -> list[nn.Module]:
            conv = nn.ConvTranspose2d(a, b, 4, 2, 1) if up else nn.Conv2d(a, b, 4, 2, 1)
            return [conv, *([nn.BatchNorm2d(b)] if config.batch_norm else []), nn.ReLU()]

        enc: list[nn.Module] = []
        prev = c_in + k
        for ch in config.channels:
            enc += block(prev, ch, up=False)
            prev = ch
        enc += [nn.Conv2d(prev, prev, 3, 1, 1), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.conv_mu = nn.Conv2d(prev, config.latent_dim, 1)
        self.conv_logvar = nn.Conv2d(prev, config.latent_dim, 1)
        dec: list[nn.Module] = [nn.Conv2d(config.latent_dim + k, prev, 3, 1, 1), nn.ReLU()]
        chans = list(reversed(config.channels))
        for a, b in itertools.pairwise(chans):
            dec += block(a, b, up=True)
        dec += [nn.ConvTranspose2d(chans[-1], chans[-1], 4, 2, 1), nn.ReLU(),
                nn.Conv2d(chans[-1], c_in, 3, 1, 1)]  # fmt: skip
        self.decoder = nn.Sequential(*dec)
        self._init_scoring()

    def _with_condition(self, t: Tensor, c: Tensor | None) -> Tensor:
        onehot = self.condition(c, t.shape[0], t.device)
        if onehot is None:
            return t
        planes = onehot[:, :, None, None].expand(-1, -1, *t.shape[-2:])
        return torch.cat([t, planes], dim=1)

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.encoder(self._with_condition(x, c))
        return self.conv_mu(h), self.conv_logvar(h)

    def decode_logits(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self.decoder(self._with_condition(z, c))


def build_model(config: ModelConfig) -> _VLAEBase:
    """The family member a config describes."""
    if isinstance(config, SpatialVLAEConfig):
        return SpatialVLAE(config)
    if isinstance(config, ConvVLAEConfig):
        return ConvVLAE(config)
    if config.num_conditions > 0:
        return ConditionalVLAE(config)
    return VLAE(config)


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """JSON-ready form of a model config (recorded in the model card)."""
    return asdict(config)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Inverse of ``config_to_dict``."""
    d = dict(d)
    arch = d.pop("arch", "mlp")
    d.setdefault("score_kind", "elbo")  # checkpoints from before score kinds existed
    d["image_shape"] = tuple(d["image_shape"])
    if arch == "spatial":
        d["channels"] = tuple(d["channels"])
        return SpatialVLAEConfig(**d)
    if arch == "conv":
        d["channels"] = tuple(d["channels"])
        return ConvVLAEConfig(**d)
    if arch == "mlp":
        d["hidden"] = tuple(d["hidden"])
        return VLAEConfig(**d)
    raise ValueError(f"unknown architecture {arch!r}")


def add_noise(x: Tensor, noise_factor: float) -> Tensor:
    """The deck's ``add_noise`` (slide 12): Gaussian noise, clamped back to [0, 1]."""
    return torch.clamp(x + noise_factor * torch.randn_like(x), 0.0, 1.0)
