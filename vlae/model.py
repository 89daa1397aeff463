"""The VLAE family of the seed deck, a convolutional variant, and a fully convolutional one
for photographs of parts: their configs, their layers, and ``build_model``.

Each network only encodes images to a posterior and decodes latents to pixel logits; the ELBO,
the anomaly map and the score every member shares are ``vlae.base.VLAEBase``'s, their math
``vlae.likelihood``'s.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlae.base import VLAEBase
from vlae.head import DefectHead
from vlae.likelihood import ScoreKind

Arch = Literal["mlp", "conv", "spatial"]
Likelihood = Literal["bernoulli", "gaussian"]
MapNorm = Literal["pixel", "pooled"]


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
    head: int = 0  # width of the defect head's first level (``vlae.head``); 0: no head
    # Weight of the KL term in the ``local`` map (recon + kl_weight * kl). 1 in checkpoints
    # written before it existed, so they score as they did.
    kl_weight: float = 1.0
    arch: Arch = field(default="spatial", init=False)


ModelConfig = VLAEConfig | ConvVLAEConfig | SpatialVLAEConfig


def _mlp(sizes: list[int], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers.append(nn.Linear(a, b))
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VLAE(VLAEBase):
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
        onehot = self.condition_input(c, h.device)
        if onehot is not None:
            h = torch.cat([h, onehot], dim=1)
        h = self.encoder(h)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        onehot = self.condition_input(c, z.device)
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


class ConvVLAE(VLAEBase):
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
        onehot = self.condition_input(c, h.device)
        if onehot is not None:
            h = torch.cat([h, onehot], dim=1)
        h = self.fc_h(h)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        onehot = self.condition_input(c, z.device)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        logits = self.decoder(self.fc_dec(z).view(-1, *self.feat_shape))
        size = self.config.image_shape[1:]
        if tuple(logits.shape[-2:]) != size:
            # Odd sizes lose a pixel in each stride-2 step; resample back to the exact shape.
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class SpatialVLAE(VLAEBase):
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
        if config.head:
            self.head = DefectHead(c_in, config.head)
        self._init_scoring()

    def _with_condition(self, t: Tensor, c: Tensor | None) -> Tensor:
        onehot = self.condition_input(c, t.device)
        if onehot is None:
            return t
        planes = onehot[:, :, None, None].expand(-1, -1, *t.shape[-2:])
        return torch.cat([t, planes], dim=1)

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.encoder(self._with_condition(x, c))
        return self.conv_mu(h), self.conv_logvar(h)

    def decode_logits(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self.decoder(self._with_condition(z, c))


def build_model(config: ModelConfig) -> VLAEBase:
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
    arch = d.pop("arch")
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
