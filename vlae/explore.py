"""The latent space of a trained VLAE, as the seed deck explores it (slides 5, 6, 8, 9, 14).

Pure functions over a model and uint8 images (N, C, H, W), returning arrays and dataclasses;
``trainer/figures.py`` renders them. Every item is represented by its latent mean (z = mu), the
same deterministic point the score is computed at. Conditions are indices into the model's
conditions; ``-1`` (or None) means "the condition under which the item looks most normal",
as scoring does for a conditional model without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from vlae.base import VLAEBase
from vlae.checkpoint import CalibrationLatents
from vlae.condition import one_hot
from vlae.images import to_float
from vlae.model import SpatialVLAEConfig
from vlae.score import best_conditions

MapMethod = Literal["auto", "tsne", "pca"]
CodeDtype = Literal["float32", "float16"]
# Above this many points "auto" embeds with PCA: t-SNE's cost grows faster than the set.
TSNE_MAX_POINTS = 3000


def _device(model: VLAEBase) -> torch.device:
    return next(model.parameters()).device


def latent_shape(model: VLAEBase) -> tuple[int, ...]:
    """The shape of one item's latent means: (D,), or (channels, h, w) for a model with a
    grid of latent cells. The explorer handles every latent as its flat vector."""
    cfg = model.config
    if isinstance(cfg, SpatialVLAEConfig):
        step = 2 ** len(cfg.channels)
        return (int(cfg.latent_dim), cfg.image_shape[1] // step, cfg.image_shape[2] // step)
    return (int(cfg.latent_dim),)


def latent_size(model: VLAEBase) -> int:
    """The length of one item's flat latent vector."""
    return math.prod(latent_shape(model))


def _num_conditions(model: VLAEBase) -> int:
    return int(getattr(model.config, "num_conditions", 0))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Pixel means in [0, 1] to uint8 images (CPU numpy)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _one_hot(model: VLAEBase, conditions: np.ndarray | None, n: int) -> torch.Tensor | None:
    k = _num_conditions(model)
    if k == 0:
        return None
    if conditions is None or (np.asarray(conditions) < 0).any():
        raise ValueError("decoding with a conditional model needs a condition for every item")
    c = torch.as_tensor(np.broadcast_to(np.asarray(conditions), (n,)).copy(), dtype=torch.long)
    return one_hot(c, k).to(_device(model))


@torch.no_grad()
def encode(
    model: VLAEBase,
    images: np.ndarray,
    conditions: np.ndarray | None = None,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Latent means (N, D) of uint8 images, and the condition each was encoded under ((N,),
    -1 for an unconditional model). A conditional model takes each item's given condition,
    or its best one where none is given (None or -1)."""
    model.eval()
    k, device = _num_conditions(model), _device(model)
    mus, used = [], []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(to_float(images[i : i + batch_size])).to(device)
        if k == 0:
            c = torch.full((len(x),), -1, dtype=torch.long)
            mu, _ = model.encode(x)
        else:
            given = (
                torch.full((len(x),), -1, dtype=torch.long)
                if conditions is None
                else torch.as_tensor(np.asarray(conditions[i : i + batch_size]), dtype=torch.long)
            )
            c = given.clone()
            missing = given < 0
            if bool(missing.any()):
                c[missing] = best_conditions(model, x[missing.to(device)])[0].cpu()
            mu, _ = model.encode(x, c.to(device))
        mus.append(mu.flatten(1).cpu().numpy().astype(np.float32))
        used.append(c.numpy())
    if not mus:
        return np.zeros((0, latent_size(model)), np.float32), np.zeros(0, np.int64)
    return np.concatenate(mus), np.concatenate(used).astype(np.int64)


@torch.no_grad()
def decode(model: VLAEBase, z: np.ndarray, conditions: np.ndarray | None = None) -> np.ndarray:
    """uint8 images (N, C, H, W) of latent points: the decoder's pixel means, rounded.
    ``conditions`` is (N,) indices, or (N, K) condition weights (interpolated one-hots)."""
    model.eval()
    device = _device(model)
    zt = torch.as_tensor(np.asarray(z, dtype=np.float32)).to(device)
    zt = zt.reshape(len(zt), *latent_shape(model))
    if conditions is not None and np.asarray(conditions).ndim == 2:
        c: torch.Tensor | None = torch.as_tensor(np.asarray(conditions, np.float32)).to(device)
    else:
        c = _one_hot(model, conditions, len(zt))
    return to_uint8(model.decode(zt, c))


def calibration_latents(
    model: VLAEBase, images: np.ndarray, conditions: np.ndarray | None, max_items: int = 4096
) -> CalibrationLatents:
    """The normal reference the explorer needs, stored in the checkpoint at training time:
    latent means of the held-out normal images under their own condition, and the images
    (the first ``max_items``: bounded checkpoint size for large calibration sets)."""
    images = images[:max_items]
    conds = None if conditions is None else np.asarray(conditions)[:max_items]
    mu, used = encode(model, images, conds)
    return CalibrationLatents(mu=mu, conditions=used, images=np.ascontiguousarray(images))


# --- latent map (slide 5) ------------------------------------------------------------------


@dataclass(frozen=True)
class LatentMap:
    """A 2-D embedding of normal reference items and overlaid items, with each overlaid item's
    distance from normal. ``coords`` holds the reference first, then the items."""

    coords: np.ndarray  # (N_ref + N_items, 2)
    n_reference: int
    groups: list[str]  # per overlaid item: what it is (a line, "anomalous test", ...)
    flagged: np.ndarray  # (N_items,) bool
    latent_distance: np.ndarray  # (N_items,) standardised distance from the normal centroid
    normal_share_closer: np.ndarray  # (N_items,) share of normal items closer to the centroid
    method: Literal["tsne", "pca"]

    @property
    def reference(self) -> np.ndarray:
        return self.coords[: self.n_reference]

    @property
    def items(self) -> np.ndarray:
        return self.coords[self.n_reference :]

    @property
    def centroid(self) -> np.ndarray:
        """The normal items' centroid on the map."""
        return self.reference.mean(axis=0)

    def map_distance(self) -> np.ndarray:
        """Each overlaid item's distance from the normal centroid on the map, in units of the
        normal items' RMS distance from it (1 = a typical normal item)."""
        ref = np.linalg.norm(self.reference - self.centroid, axis=1)
        scale = float(np.sqrt((ref**2).mean())) or 1.0
        return np.linalg.norm(self.items - self.centroid, axis=1) / scale


def standardised_distance(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each point from the reference centroid under the reference's
    covariance, divided by sqrt(D) (about 1 for a typical normal item). The full covariance,
    not per-dimension spread: a well-trained encoder maps many anomalies inside the normal
    items' per-dimension ranges but off their correlations (measured: on a 10-epoch digit-0
    model the per-dimension distance ranked anomalies below normal items, AUROC 0.46; this
    one 0.62, and 0.88 vs 0.85 on a 3-epoch model)."""
    ref = reference.astype(np.float64)
    n, dims = ref.shape
    mean = ref.mean(axis=0)
    # The covariance through the reference's thin SVD, never as a D x D matrix: a spatial
    # model's latent grid has thousands of dimensions (4,096 at 64 x 64), and inverting that
    # took 3 s a view; the answer is the same. Eigenvalues e of the covariance (n - 1 in the
    # denominator, as np.cov) with directions v; a small ridge r: collapsed latent dimensions
    # have (near) zero variance. (cov + r I)^-1 = V diag(1 / (e + r)) V' + (I - V V') / r.
    _, sigma, vt = np.linalg.svd(ref - mean, full_matrices=False)
    e = sigma**2 / max(n - 1, 1)
    ridge = 1e-3 * float(e.sum()) / dims + 1e-9
    diff = points.astype(np.float64) - mean
    along = diff @ vt.T
    d2 = (along**2 / (e + ridge)).sum(axis=1)
    d2 += ((diff**2).sum(axis=1) - (along**2).sum(axis=1)) / ridge
    return (np.sqrt(np.maximum(d2, 0.0)) / math.sqrt(dims)).astype(np.float32)


def embed_2d(points: np.ndarray, n_reference: int, method: Literal["tsne", "pca"],
             seed: int = 0) -> np.ndarray:  # fmt: skip
    """2-D coordinates of all points. PCA is fitted on the reference (normal) points only, so
    the map's axes are normal variation; t-SNE (the deck's choice) embeds all points jointly."""
    if method == "pca":
        from sklearn.decomposition import PCA

        n_comp = min(2, points.shape[1], max(1, n_reference))
        pca = PCA(n_components=n_comp, random_state=seed).fit(points[:n_reference])
        out = pca.transform(points)
        if out.shape[1] < 2:
            out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        return out.astype(np.float32)
    from sklearn.manifold import TSNE

    n = len(points)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(points), dtype=np.float32)


def latent_map(
    reference_mu: np.ndarray,
    items_mu: np.ndarray,
    groups: list[str],
    flagged: np.ndarray | None = None,
    method: MapMethod = "auto",
    seed: int = 0,
) -> LatentMap:
    """Embed normal reference latents with overlaid items; measure how far from normal each
    overlaid item sits (in latent space, and as the share of normal items closer)."""
    if len(reference_mu) < 3:
        raise ValueError(f"a latent map needs at least 3 normal items, got {len(reference_mu)}")
    if len(groups) != len(items_mu):
        raise ValueError(f"{len(groups)} group names for {len(items_mu)} items")
    points = np.concatenate([reference_mu, items_mu]).astype(np.float32)
    auto: Literal["tsne", "pca"] = "tsne" if len(points) <= TSNE_MAX_POINTS else "pca"
    chosen = auto if method == "auto" else method
    coords = embed_2d(points, len(reference_mu), chosen, seed)
    ref_d = standardised_distance(reference_mu, reference_mu)
    item_d = standardised_distance(reference_mu, items_mu)
    closer = np.searchsorted(np.sort(ref_d), item_d, side="left") / len(ref_d)
    flags = np.zeros(len(items_mu), bool) if flagged is None else np.asarray(flagged, bool)
    return LatentMap(coords, len(reference_mu), list(groups), flags, item_d, closer, chosen)


def nearest_normal(
    reference: CalibrationLatents, mu: np.ndarray, k: int, condition: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and latent distances of the ``k`` calibration items nearest to ``mu`` (D,);
    for a conditional model, among the items of the same condition when one is given."""
    candidates = np.arange(len(reference))
    if condition is not None and condition >= 0:
        same = np.flatnonzero(reference.conditions == condition)
        if len(same):
            candidates = same
    d = np.linalg.norm(reference.mu[candidates] - mu[None, :], axis=1)
    order = np.argsort(d, kind="stable")[:k]
    return candidates[order], d[order]


# --- generation, interpolation, traversal (slides 6, 9, 14) --------------------------------


def sample_prior(
    model: VLAEBase, n: int, condition: int | None = None, seed: int = 0
) -> np.ndarray:
    """``n`` images decoded from z ~ N(0, I) (seeded); a conditional model needs a condition."""
    if _num_conditions(model) and (condition is None or condition < 0):
        raise ValueError("sampling a conditional model needs a condition")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_size(model), generator=gen).numpy()
    conds = None if condition is None else np.full(n, condition)
    return decode(model, z, conds)


def interpolate(
    model: VLAEBase,
    mu_a: np.ndarray,
    mu_b: np.ndarray,
    steps: int,
    condition_a: int | None = None,
    condition_b: int | None = None,
) -> np.ndarray:
    """Images decoded along the straight line from ``mu_a`` to ``mu_b`` (both ends included);
    a conditional model's one-hot condition moves along with z."""
    if steps < 2:
        raise ValueError("interpolation needs at least 2 steps")
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    z = (1 - t) * mu_a[None, :] + t * mu_b[None, :]
    k = _num_conditions(model)
    if k == 0:
        return decode(model, z)
    if condition_a is None or condition_b is None:
        raise ValueError("interpolating with a conditional model needs both conditions")
    eye = np.eye(k, dtype=np.float32)
    c = (1 - t) * eye[condition_a][None, :] + t * eye[condition_b][None, :]
    return decode(model, z, c)


def active_dims(reference_mu: np.ndarray, n: int) -> list[int]:
    """The ``n`` latent dimensions the normal items use most (largest variance of their means);
    dimensions the KL term collapsed to the prior barely move and show nothing."""
    order = np.argsort(-reference_mu.var(axis=0), kind="stable")
    return [int(d) for d in order[:n]]


def traverse(
    model: VLAEBase,
    z0: np.ndarray,
    dims: list[int],
    steps: int,
    span: float = 3.0,
    scale: np.ndarray | None = None,
    condition: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One row per dimension d: z0 with z[d] moved through ``steps`` values from
    ``z0[d] - span * scale[d]`` to ``z0[d] + span * scale[d]``. ``scale`` is the normal items'
    spread per dimension (so the row stays where the decoder has seen data), or None for the
    prior's (1). Returns images (len(dims), steps, C, H, W) and the values (len(dims), steps)."""
    latent = latent_size(model)
    bad = [d for d in dims if not 0 <= d < latent]
    if bad:
        raise ValueError(f"latent dimensions {bad} are outside 0..{latent - 1}")
    if steps < 2:
        raise ValueError("a traversal needs at least 2 steps")
    z0 = np.asarray(z0, np.float32)
    unit = np.ones(latent, np.float32) if scale is None else np.asarray(scale, np.float32)
    offsets = np.linspace(-span, span, steps, dtype=np.float32)
    rows, values = [], []
    for d in dims:
        z = np.repeat(z0[None, :], steps, axis=0)
        z[:, d] = z0[d] + offsets * unit[d]
        conds = None if condition is None else np.full(steps, condition)
        rows.append(decode(model, z, conds))
        values.append(z[:, d])
    return np.stack(rows), np.stack(values)


# --- compression (slide 8) -----------------------------------------------------------------


@dataclass(frozen=True)
class Compression:
    """Images encoded to their latent code (mu, stored as ``code_dtype``) and decoded back."""

    codes: np.ndarray  # (N, D)
    decoded: np.ndarray  # (N, C, H, W) uint8
    input_bytes: int  # per item: the uint8 image
    code_bytes: int  # per item: the latent code
    mse: np.ndarray  # (N,) mean squared error per pixel, pixels in [0, 1]
    psnr: np.ndarray  # (N,) dB

    @property
    def ratio(self) -> float:
        """Input size over code size."""
        return self.input_bytes / self.code_bytes

    def summary(self) -> dict[str, float | int | str]:
        return {
            "n": len(self.codes),
            "latent_dim": int(self.codes.shape[1]),
            "code_dtype": str(self.codes.dtype),
            "input_bytes": self.input_bytes,
            "code_bytes": self.code_bytes,
            "ratio": self.ratio,
            "mse": float(self.mse.mean()) if len(self.mse) else float("nan"),
            "psnr_db": float(self.psnr.mean()) if len(self.psnr) else float("nan"),
        }


def compress(
    model: VLAEBase,
    images: np.ndarray,
    conditions: np.ndarray | None = None,
    code_dtype: CodeDtype = "float32",
) -> Compression:
    """Encode to mu, store it as ``code_dtype``, decode; the reconstruction error per item.
    A conditional model's condition is side information the receiver knows (the item's line),
    so it is not counted in the code."""
    mu, used = encode(model, images, conditions)
    codes = mu.astype(code_dtype)
    decoded = decode(model, codes.astype(np.float32), None if _num_conditions(model) == 0
                     else used)  # fmt: skip
    diff = (to_float(images) - to_float(decoded)).reshape(len(images), -1)
    mse = (diff**2).mean(axis=1) if len(images) else np.zeros(0, np.float32)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    input_bytes = int(np.prod(images.shape[1:])) * images.dtype.itemsize
    code_bytes = int(codes.shape[1]) * codes.dtype.itemsize
    return Compression(codes, decoded, input_bytes, code_bytes, mse, psnr)
