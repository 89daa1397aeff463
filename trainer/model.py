"""The VLAE model family of the seed deck, plus a convolutional variant for larger images.

Every model maps images in [0, 1] of shape (N, C, H, W) to a diagonal Gaussian posterior
q(z|x) = N(mu, exp(logvar)) and decodes z back to Bernoulli pixel logits. The anomaly score of
an image starts from the negative ELBO evaluated deterministically at z = mu:

    elbo(x) = recon(x) + KL(q(z|x) || N(0, I))

where recon is the reconstruction term the model was trained with (binary cross-entropy summed
over pixels, as in the deck's ``loss_function``). That is the ``elbo`` score kind. The default
kind, ``elbo_per_tv``, divides it by the input's complexity, its total variation:

    score(x) = (recon(x) + KL) / (TV(x) + 1)
    TV(x)    = sum over pixels of |x[h, w+1] - x[h, w]| + |x[h+1, w] - x[h, w]|

A VAE's likelihood favours simple inputs: a thin stroke reconstructs with few wrong pixels under
any digit's model, so it scores as more normal than the normal class itself. Normalising by a
model-free complexity estimate removes that bias (Serra et al. 2020, "Input complexity and
out-of-distribution detection with likelihood-based generative models", used compressed length;
total variation measured better here). ``bench/README.md`` has the numbers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Arch = Literal["mlp", "conv"]
ScoreKind = Literal["elbo", "elbo_per_tv"]
SCORE_KIND_TEXT = {
    "elbo": "recon + kl at z = mu (recon: Bernoulli negative log-likelihood, summed)",
    "elbo_per_tv": "(recon + kl) / (complexity + 1) at z = mu; complexity: total variation of "
    "the input in [0, 1] pixel units",
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
    arch: Arch = field(default="conv", init=False)


ModelConfig = VLAEConfig | ConvVLAEConfig


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per item; Kingma & Welling 2013, Appendix B."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def total_variation(x: Tensor) -> Tensor:
    """Per item, the summed absolute differences between horizontal and vertical neighbours
    (all channels, pixels in [0, 1]): the input-complexity estimate of the ``elbo_per_tv``
    score. 0 for a blank image."""
    dh = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(dim=1)
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(dim=1)
    return dh + dv


def combine_score(recon: Tensor, kl: Tensor, complexity: Tensor, kind: ScoreKind) -> Tensor:
    """The anomaly score from its parts; higher is more anomalous."""
    if kind == "elbo":
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
    """What every family member shares: the ELBO terms and the deterministic score."""

    config: Any

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

    def elbo_terms(
        self,
        x: Tensor,
        target: Tensor | None = None,
        c: Tensor | None = None,
        sample: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Per-item (recon, kl). ``target`` differs from ``x`` only for denoising training."""
        logits, mu, logvar = self(x, c, sample=sample)
        return bernoulli_nll(logits, x if target is None else target), kl_divergence(mu, logvar)

    @torch.no_grad()
    def anomaly_score(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-item (recon, kl) at z = mu, so the same image always gets the same score."""
        return self.elbo_terms(x, c=c, sample=False)

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


def build_model(config: ModelConfig) -> _VLAEBase:
    """The family member a config describes."""
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
