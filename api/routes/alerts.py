"""``/v1/alerts``: list, filter, page, get, acknowledge, resolve, label; ``/v1/stream``: new
alerts as server-sent events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError

from api.alerts import AlertFilter
from api.deps import Operator, ServicesDep, Viewer
from api.errors import TooManyRequests, Unavailable, Unprocessable
from api.schemas import ErrorBody
from api.schemas.alerts import (
    Alert,
    AlertAction,
    AlertPage,
    AlertState,
    Label,
    LabelRequest,
    RegionLabelRequest,
)
from contract.auth import ANONYMOUS
from contract.keys import ID_PATTERN, LINE_PATTERN
from contract.streams import as_text

logger = logging.getLogger("vlaewatch.api")
router = APIRouter(prefix="/v1", tags=["alerts"])
ItemPath = Annotated[str, Path(pattern=ID_PATTERN, examples=["cam1-000123"])]
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody} for s in (401, 403, 404, 409, 422, 503)
}


@router.get("/alerts", response_model=AlertPage, responses=ERRORS)
async def list_alerts(
    services: ServicesDep,
    _: Viewer,
    line: Annotated[str | None, Query(pattern=LINE_PATTERN)] = None,
    state: AlertState | None = None,
    label: Annotated[Label | None, Query(description="only alerts with this label")] = None,
    unlabelled: Annotated[bool, Query(description="only alerts without a label")] = False,
    since: Annotated[float | None, Query(description="scored at or after (unix seconds)")] = None,
    until: Annotated[float | None, Query(description="scored at or before (unix seconds)")] = None,
    min_score: float | None = None,
    max_score: float | None = None,
    min_area: Annotated[
        float | None,
        Query(ge=0, le=1, description="defect_area at least (only alerts with regions)"),
    ] = None,
    max_area: Annotated[
        float | None,
        Query(ge=0, le=1, description="defect_area at most (only alerts with regions)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AlertPage:
    """Alerts, newest first, filtered; follow ``next_cursor`` for more."""
    if since is not None and until is not None and since > until:
        raise Unprocessable(f"since ({since}) is after until ({until})")
    flt = AlertFilter(line=line, state=state, label=label, unlabelled=unlabelled, since=since,
                      until=until, min_score=min_score, max_score=max_score,
                      min_area=min_area, max_area=max_area)  # fmt: skip
    return await services.alerts.page(flt, limit, cursor)


@router.get("/alerts/{item_id}", response_model=Alert, responses=ERRORS)
async def get_alert(item_id: ItemPath, services: ServicesDep, _: Viewer) -> Alert:
    return await services.alerts.get(item_id)


def _transition_route(action: str, path: str, doc: str) -> None:
    async def endpoint(
        item_id: ItemPath,
        services: ServicesDep,
        who: Operator,
        body: Annotated[AlertAction | None, Body()] = None,
    ) -> Alert:
        return await services.alerts.transition(
            item_id, action, who.name, body.note if body else ""
        )

    endpoint.__doc__ = doc
    router.add_api_route(f"/alerts/{{item_id}}/{path}", endpoint, methods=["POST"], name=path,
                         response_model=Alert, responses=ERRORS)  # fmt: skip


_transition_route("acknowledged", "acknowledge", "open → acknowledged (409 from any other state).")
_transition_route("resolved", "resolve", "open or acknowledged → resolved.")


@router.post("/alerts/{item_id}/regions/{region}/label", response_model=Alert,
             responses=ERRORS)  # fmt: skip
async def label_region(
    item_id: ItemPath,
    region: Annotated[int, Path(ge=0, le=15, description="the region's index in `regions`")],
    body: RegionLabelRequest,
    services: ServicesDep,
    who: Operator,
) -> Alert:
    """Mark one region of an alert right (the defect is there) or wrong; region labels tune
    the line's pixel threshold (method ``labels``, target ``pixel``)."""
    return await services.alerts.label_region(item_id, region, body.verdict, who.name,
                                              body.note)  # fmt: skip


@router.post("/alerts/{item_id}/label", response_model=Alert, responses=ERRORS)
async def label_alert(
    item_id: ItemPath, body: LabelRequest, services: ServicesDep, who: Operator
) -> Alert:
    """The operator's verdict (``anomaly`` or ``false_alarm``); feeds ``labels`` calibration."""
    return await services.alerts.label_alert(item_id, body.label, who.name, body.note)


async def _stream_slot(request: Request, services: ServicesDep, who: Viewer) -> str:
    """A live-stream slot of the caller, taken before the response starts (429: the key's
    share is used, 503: the process's); the stream gives it back when it ends."""
    caller = who.name if who is not ANONYMOUS else (request.client.host if request.client
                                                    else "unknown")  # fmt: skip
    refused = services.streams.refusal(caller)
    if refused is not None:
        status, reason = refused
        if status == 429:
            raise TooManyRequests(reason, "5")
        raise Unavailable(reason)
    return caller


@router.get("/stream", response_class=EventSourceResponse,
            responses={**ERRORS, 503: {"model": ErrorBody}})  # fmt: skip
async def stream(
    request: Request,
    services: ServicesDep,
    caller: Annotated[str, Depends(_stream_slot)],
    line: Annotated[str | None, Query(pattern=LINE_PATTERN)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """New alerts as they are raised (event ``alert``, data an ``Alert``), from every API
    process consuming the stream; keep-alive comments keep proxies from closing it. A key
    holds at most ``max_streams_per_key`` of them at once."""
    try:
        pubsub = services.client.pubsub()
        await pubsub.subscribe(services.alerts.channel)
        try:
            yield ServerSentEvent(comment="subscribed")
            # Until the client goes, or the server shuts down (then the stream ends cleanly).
            draining: asyncio.Event = request.app.state.draining
            while not draining.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    alert = Alert.model_validate_json(message["data"])
                except ValidationError as exc:  # one bad message must not end every stream
                    logger.warning("live stream: skipped a message that is no alert: %s", exc)
                    continue
                if line is not None and alert.line != line:
                    continue
                yield ServerSentEvent(raw_data=alert.model_dump_json(), event="alert",
                                      id=as_text(alert.item_id))  # fmt: skip
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()
    finally:
        services.streams.release(caller)
