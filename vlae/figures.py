"""PNG pictures of the explorer's results: image grids and strips, and the latent map.

Drawn with Pillow only (no plotting library), at exact pixel sizes: a grid of R x S images of
H x W pixels is ``(R*H + (R-1)*gap) * scale`` high and ``(S*W + (S-1)*gap) * scale`` wide.
"""

from __future__ import annotations

import io

import numpy as np

from vlae.explore import LatentMap

GAP_GREY = 64
REFERENCE_RGB = (175, 175, 175)
FLAG_RGB = (198, 40, 40)
# Colours of overlaid groups (lines), in order of first appearance: Tableau 10 without red.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


def hwc(chw: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) to (H, W, 3) for display."""
    out = chw.transpose(1, 2, 0)
    return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out


def to_png(rgb: np.ndarray, scale: int = 1) -> bytes:
    """(H, W, 3) uint8 as PNG bytes, upscaled by ``scale`` (nearest neighbour)."""
    from PIL import Image

    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def grid(images: np.ndarray, gap: int = 1) -> np.ndarray:
    """uint8 images (R, S, C, H, W) tiled as R rows of S, separated by ``gap`` grey pixels."""
    if images.ndim == 4:
        images = images[None]
    rows, cols, _, h, w = images.shape
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), GAP_GREY,
                  dtype=np.uint8)  # fmt: skip
    for r in range(rows):
        for s in range(cols):
            y, x = r * (h + gap), s * (w + gap)
            out[y : y + h, x : x + w] = hwc(images[r, s])
    return out


def grid_png(images: np.ndarray, scale: int = 2, gap: int = 1) -> bytes:
    """``grid`` as PNG bytes."""
    return to_png(grid(images, gap), scale)


def latent_map_png(lmap: LatentMap, width: int = 640, height: int = 480, title: str = "") -> bytes:
    """The latent map: normal reference items in grey, overlaid items coloured by group,
    flagged ones ringed in red, the normal centroid as a black cross, and a legend."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    margin, top = 16, 34
    coords = lmap.coords
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)

    def xy(p: np.ndarray) -> tuple[float, float]:
        u = (p - lo) / span
        return (margin + u[0] * (width - 2 * margin), top + (1 - u[1]) * (height - top - margin))

    def dot(p: np.ndarray, r: float, fill: tuple[int, int, int] | None,
            outline: tuple[int, int, int] | None = None, w: int = 1) -> None:  # fmt: skip
        x, y = xy(p)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=w)

    for p in lmap.reference:
        dot(p, 2.5, REFERENCE_RGB)
    names = list(dict.fromkeys(lmap.groups))
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(names)}
    order = np.argsort(lmap.flagged, kind="stable")  # flagged drawn last, on top
    for i in order:
        dot(lmap.items[i], 3.5, colour[lmap.groups[i]])
        if lmap.flagged[i]:
            dot(lmap.items[i], 6.5, None, FLAG_RGB, 2)
    cx, cy = xy(lmap.centroid)
    draw.line((cx - 7, cy, cx + 7, cy), fill=(0, 0, 0), width=2)
    draw.line((cx, cy - 7, cx, cy + 7), fill=(0, 0, 0), width=2)

    head = title or f"latent map ({lmap.method}) of latent means"
    draw.text((margin, 4), head, fill=(29, 35, 48))
    legend = [(f"normal calibration ({lmap.n_reference})", REFERENCE_RGB, False)]
    for g in names:
        n = sum(1 for x in lmap.groups if x == g)
        legend.append((f"{g} ({n})", colour[g], False))
    if lmap.flagged.any():
        legend.append((f"flagged ({int(lmap.flagged.sum())})", FLAG_RGB, True))
    x = margin
    for text, rgb, ring in legend:
        y = 20
        if ring:
            draw.ellipse((x, y, x + 9, y + 9), outline=rgb, width=2)
        else:
            draw.ellipse((x + 1, y + 1, x + 8, y + 8), fill=rgb)
        draw.text((x + 13, y - 1), text, fill=(60, 60, 60))
        x += 13 + int(draw.textlength(text)) + 14
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
