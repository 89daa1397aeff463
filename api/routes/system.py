"""Health and Prometheus metrics."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from api.backlog import items_lost
from api.deps import ServicesDep, authenticate, public_rate_limit
from api.schemas import ErrorBody
from api.schemas.system import ApiHealth

router = APIRouter(tags=["system"])


@functools.cache
def _console() -> tuple[str, str]:
    """The console page and its Content-Security-Policy: its one inline script by hash, and
    nothing from elsewhere (no other origin's script, frame, form target or connection)."""
    page = resources.files("api").joinpath("console/index.html").read_text()
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in scripts
    )
    policy = (f"default-src 'none'; script-src {hashes}; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'none'")  # fmt: skip
    return page, policy


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def console() -> HTMLResponse:
    """The operator console: one static page that talks to this API with the user's key; no
    other site may frame it (clickjacking) or run script in it."""
    page, policy = _console()
    return HTMLResponse(page, headers={"Cache-Control": "no-cache",
                                       "Content-Security-Policy": policy,
                                       "X-Frame-Options": "DENY",
                                       "Referrer-Policy": "no-referrer"})  # fmt: skip


@router.get("/v1/health", response_model=ApiHealth)
async def health(request: Request, services: ServicesDep) -> ApiHealth:
    """Readable without a key (and cheap: the backlog is read at most once a second):
    Redis reachable, consumer running, its backlog."""
    public_rate_limit(services, request)
    consumer = services.consumer
    try:
        await services.client.ping()
        pending, lag, _ = await services.lag.read()
        newest = await services.models.get()
        lines = await services.models.lines()
        lost = await items_lost(services.client, services.keys)
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
        authenticate(services, request)
    else:
        public_rate_limit(services, request)
    m = services.metrics
    try:
        pending, lag, age = await services.lag.read()
        for gauge, value in ((m.pending, pending), (m.lag, lag), (m.lag_seconds, age)):
            if value is not None:
                gauge.set(value)
        for line, th in (await services.thresholds.current()).items():
            m.threshold.labels(line).set(th.value)
        m.lost.value = await items_lost(services.client, services.keys)
    except (RedisError, OSError):
        pass  # the counters still say what this process did
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
