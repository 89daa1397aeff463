"""``/v1/items/{item_id}``: previews of scored items, and labels of items without alerts."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from api.deps import Operator, ServicesDep, Viewer
from api.errors import NotFound
from api.schemas import ErrorBody
from api.schemas.alerts import ItemLabel, LabelRequest
from contract.keys import ID_PATTERN
from contract.streams import read_item

router = APIRouter(prefix="/v1/items", tags=["items"])
ItemPath = Annotated[str, Path(pattern=ID_PATTERN, examples=["cam1-000123"])]
Kind = Literal["panel", "original", "reconstruction", "denoised", "error", "overlay"]


@router.get(
    "/{item_id}/preview.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "a PNG image"},
        **{s: {"model": ErrorBody} for s in (401, 403, 404, 409, 502, 503)},
    },
)
async def preview(
    item_id: ItemPath,
    services: ServicesDep,
    _: Viewer,
    kind: Annotated[
        Kind, Query(description="panel: original, reconstruction, denoised, error side by side")
    ] = "panel",
    scale: Annotated[int, Query(ge=1, le=16)] = 4,
) -> Response:
    """A PNG of the item, rendered by the scorer's model; 404 once the item has left
    retention."""
    found = await services.previews.get(item_id, kind, scale)
    return Response(
        found.png,
        media_type="image/png",
        headers={
            "X-Model-Version": found.model_version,
            "X-Cache": "hit" if found.cached else "miss",
            "Cache-Control": "private, max-age=60",
        },
    )


@router.post(
    "/{item_id}/label",
    response_model=ItemLabel,
    responses={s: {"model": ErrorBody} for s in (401, 403, 404, 422)},
)
async def label_item(
    item_id: ItemPath, body: LabelRequest, services: ServicesDep, who: Operator
) -> ItemLabel:
    """Label any item still in retention (e.g. a missed anomaly below the threshold, or a
    confirmed normal one); labels feed ``labels`` calibration."""
    try:
        alert = await services.alerts.label_alert(item_id, body.label, who.name, body.note)
    except NotFound:
        pass
    else:
        return ItemLabel(item_id=item_id, line=alert.line, score=alert.score,
                         model_version=alert.model_version, label=body.label, who=who.name,
                         at=alert.events[-1].at, note=body.note)  # fmt: skip
    blob = await read_item(services.client, services.keys.item(item_id))
    if blob is None:
        raise NotFound(f"item {item_id}: never scored, or expired from retention")
    record = ItemLabel(item_id=item_id, line=blob.line, score=blob.score,
                       model_version=blob.model_version, label=body.label, who=who.name,
                       at=time.time(), note=body.note)  # fmt: skip
    await services.alerts.label_item(record)
    return record
