"""The scorer's explorer: views of the served model's latent space (``vlae.views``) for
stored items, rendered by the replica that holds the model (``POST /v1/explore``).

An item is encoded under the condition of its line (a conditional model), or its best one
where the line is unmapped; the views never refuse an item for its line, scoring does.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Awaitable, Callable

import numpy as np

from contract.http import (
    CompressRequest,
    ExploreResponse,
    InterpolateRequest,
    LatentMapRequest,
    NeighboursRequest,
    SampleRequest,
    TraverseRequest,
)
from scorer.publish import StoredItem
from vlae import views
from vlae.checkpoint import LoadedModel, UnmappedLineError
from vlae.condition import Condition, codes_of

ItemLoader = Callable[[str], Awaitable[StoredItem | None]]
AnyRequest = (
    LatentMapRequest | NeighboursRequest | SampleRequest | InterpolateRequest | TraverseRequest
    | CompressRequest
)  # fmt: skip


class ExploreError(Exception):
    """A view that cannot be made, with the HTTP status that fits and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def line_condition(loaded: LoadedModel, line: str) -> Condition:
    """The condition an item of ``line`` is encoded under: its line's, else its best one."""
    try:
        return loaded.line_condition(line)
    except UnmappedLineError:
        return Condition.best()


async def load_items(loaded: LoadedModel, ids: list[str], load: ItemLoader) -> views.Items:
    """Stored items as images with their lines' conditions; 404 or 409 with the reason."""
    found: list[StoredItem] = []
    shape = list(loaded.card.image_shape)
    for item_id in ids:
        item = await load(item_id)
        if item is None:
            raise ExploreError(404, f"item {item_id}: never scored, or expired from retention")
        if list(item.image.shape) != shape:
            raise ExploreError(409, f"item {item_id}: shape {list(item.image.shape)} differs "
                                    f"from the model's {shape}")  # fmt: skip
        found.append(item)
    return views.Items(
        names=[it.item_id for it in found],
        images=np.stack([it.image for it in found]),
        conditions=codes_of([line_condition(loaded, it.line) for it in found]),
    )


async def gather(
    loaded: LoadedModel, req: AnyRequest, load: ItemLoader
) -> tuple[views.Items | None, list[str], np.ndarray]:
    """The stored items a request names (skipping expired ones on a latent map, where items
    are context, not the subject), with their lines and flags."""
    if isinstance(req, LatentMapRequest):
        kept, lines, flags = [], [], []
        for m in req.items:
            item = await load(m.item_id)
            if item is None or item.image.shape != loaded.card.image_shape:
                continue
            kept.append(item)
            lines.append(item.line)
            flags.append(m.flagged)
        items = views.Items(
            names=[it.item_id for it in kept],
            images=np.stack([it.image for it in kept])
            if kept
            else np.zeros((0, *loaded.card.image_shape), np.uint8),
            conditions=codes_of([line_condition(loaded, it.line) for it in kept]),
        )
        return items, lines, np.array(flags, bool)
    ids = named_items(req)
    if not ids:
        return None, [], np.zeros(0, bool)
    return await load_items(loaded, ids, load), [], np.zeros(0, bool)


def named_items(req: AnyRequest) -> list[str]:
    """The items a view is about (none for a latent map, where items are context)."""
    if isinstance(req, NeighboursRequest):
        return [req.item_id]
    if isinstance(req, InterpolateRequest):
        return [req.item_a, req.item_b]
    if isinstance(req, TraverseRequest) and req.item_id:
        return [req.item_id]
    if isinstance(req, CompressRequest):
        return list(req.item_ids)
    return []


def render(
    loaded: LoadedModel, req: AnyRequest, items: views.Items | None, lines: list[str],
    flags: np.ndarray,
) -> ExploreResponse:  # fmt: skip
    """Compute and draw one view (CPU work: run it off the event loop)."""
    try:
        png, data = _view(loaded, req, items, lines, flags)
    except views.MissingLatentsError as exc:
        raise ExploreError(409, str(exc)) from None
    except ValueError as exc:  # a request that does not fit the model
        raise ExploreError(422, str(exc)) from None
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        width, height = im.size
    return ExploreResponse(kind=req.kind, model_version=loaded.version, width=width,
                           height=height, png=base64.b64encode(png).decode(),
                           data=data)  # fmt: skip


def _view(
    loaded: LoadedModel, req: AnyRequest, items: views.Items | None, lines: list[str],
    flags: np.ndarray,
) -> tuple[bytes, dict[str, object]]:  # fmt: skip
    if isinstance(req, SampleRequest):
        return views.sample(loaded, req.n, req.condition, req.seed, req.scale)
    if isinstance(req, TraverseRequest):
        return views.traverse(loaded, items, req.dims, req.n_dims, req.steps, req.span,
                              req.scale, req.condition)  # fmt: skip
    assert items is not None
    if isinstance(req, LatentMapRequest):
        title = f"model {loaded.version}: normal latent means, recent items by line"
        return views.map_view(loaded, items, lines, flags, req.method, (req.width, req.height),
                              title)  # fmt: skip
    if isinstance(req, NeighboursRequest):
        return views.neighbours(loaded, items, req.k, req.scale)
    if isinstance(req, InterpolateRequest):
        return views.interpolate(loaded, items, req.steps, req.scale)
    return views.compress(loaded, items, req.dtype, req.scale)
