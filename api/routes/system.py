"""Health and Prometheus metrics."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from api.deps import ServicesDep, api_key, authenticate
from api.schemas import ApiHealth, ErrorBody

router = APIRouter(tags=["system"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def console() -> HTMLResponse:
    """The operator console: one static page that talks to this API with the user's key."""
    page = resources.files("api").joinpath("console/index.html").read_text()
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get("/v1/health", response_model=ApiHealth)
async def health(services: ServicesDep) -> ApiHealth:
    """Readable without a key: Redis reachable, consumer running, its backlog."""
    consumer = services.consumer
    try:
        await services.client.ping()
        pending, lag, _ = await consumer.lag()
        newest = await services.models.get()
        lines = await services.models.lines()
        lost = await consumer.lost()
    except (RedisError, OSError) as exc:
        return ApiHealth(status="degraded", redis=False, consumer=services.cfg.consumer,
                         consuming=consumer.running, pending=None, lag=None, model_version=None,
                         reason=f"Redis unavailable: {exc}")  # fmt: skip
    problem = consumer.problem()
    ok = (consumer.running or not services.cfg.consume) and not consumer.unstored
    return ApiHealth(
        status="ok" if ok else "degraded", redis=True, consumer=services.cfg.consumer,
        consuming=consumer.running, pending=pending, lag=lag,
        model_version=newest.version if newest else None, reason=problem,
        line_models=lines, items_lost=lost,
    )  # fmt: skip


METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
    401: {"model": ErrorBody},
}


@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSES)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus metrics; needs a key unless ``public_metrics`` is configured."""
    if not services.cfg.public_metrics:
        authenticate(services, api_key(request))
    m = services.metrics
    try:
        pending, lag, age = await services.consumer.lag()
        for gauge, value in ((m.pending, pending), (m.lag, lag), (m.lag_seconds, age)):
            if value is not None:
                gauge.set(value)
        for line, th in (await services.thresholds.current()).items():
            m.threshold.labels(line).set(th.value)
        m.lost.value = await services.consumer.lost()
    except (RedisError, OSError):
        pass  # the counters still say what this process did
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
