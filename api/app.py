"""The API application: FastAPI on uvicorn, one score-stream consumer per process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.alerts import AlertStore
from api.annotations import Annotator
from api.backlog import GroupLag
from api.config import ApiConfig
from api.consumer import ConsumerThread
from api.deps import Services
from api.errors import install_handlers
from api.metrics import Metrics
from api.previews import PreviewClient
from api.ratelimit import RateLimiter, StreamSlots
from api.routes import alerts, explore, items, stats, system, thresholds
from api.schemas import ErrorBody
from api.served_models import ModelCache
from api.stats import ScoreWindow
from api.thresholds import ThresholdStore
from contract.auth import KeyRing
from contract.keys import StreamKeys
from contract.streams import connect


def create_app(cfg: ApiConfig) -> FastAPI:
    """The app for ``cfg``; Redis, the consumer and the scorer client live in its lifespan."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect(cfg.redis_url)
        keys = StreamKeys(cfg.key_prefix)
        threshold_store = ThresholdStore(client, cfg.key_prefix)
        alert_store = AlertStore(client, keys, cfg.alert_retention_s)
        models = ModelCache(client, keys)
        annotator = Annotator(cfg.grafana_url, cfg.grafana_token)
        consumer = ConsumerThread(cfg, metrics, annotator)
        # The API's calls to the scorer (previews, views) carry its 'service' key, if any.
        service = next((k for k, p in cfg.api_keys.items() if p.role == "service"), None)
        http = httpx.AsyncClient(timeout=cfg.preview_timeout_s,
                                 headers={"X-API-Key": service} if service else None)  # fmt: skip
        app.state.services = Services(
            cfg=cfg, client=client, keys=keys, thresholds=threshold_store,
            pixel_thresholds=ThresholdStore(client, cfg.key_prefix, "pixel"), alerts=alert_store,
            models=models, consumer=consumer,
            lag=GroupLag(client, keys, cfg.scores_group),
            previews=PreviewClient(http, cfg.scorer_url, client, keys, cfg.preview_cache_s),
            metrics=metrics, http=http, annotator=annotator,
            limiter=RateLimiter(cfg.rate_limit_per_s, cfg.rate_burst),
            keyring=KeyRing.of(cfg.api_keys),
            failed_logins=RateLimiter(cfg.login_failures_per_s, cfg.login_failure_burst),
            streams=StreamSlots(cfg.max_streams_per_key, cfg.max_streams),
            window=ScoreWindow(client, keys, cfg.max_window_entries),
        )  # fmt: skip
        app.state.draining = asyncio.Event()  # set by ApiServer when shutdown starts
        if cfg.consume:
            consumer.start()
        try:
            yield
        finally:
            await asyncio.to_thread(consumer.stop)
            await http.aclose()
            await client.aclose()

    app = FastAPI(
        title="vlaewatch API",
        version=version("vlaewatch"),
        description="Alerts, threshold calibration and previews over the vlaewatch score "
        "stream. Send an API key in `X-API-Key`: viewers read; operators also calibrate, "
        "acknowledge and label.",
        lifespan=lifespan,
    )
    install_handlers(app)
    # Answers any route may give, each an ErrorBody (validation errors too: api.errors).
    common: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "unparseable request body"},
        413: {"model": ErrorBody, "description": "request body over the size limit"},
        422: {"model": ErrorBody, "description": "invalid request, with a reason per field"},
        429: {"model": ErrorBody, "description": "over the key's request rate (Retry-After)"},
    }
    for module in (thresholds, alerts, items, explore, stats, system):
        app.include_router(module.router, responses=common)
    app.add_middleware(_BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(_Timing, metrics=metrics)
    return app


class _BodyLimit:
    """Request bodies of at most ``limit`` bytes; a larger one gets 413 with the reason, an
    ErrorBody like every other error: by its Content-Length before any of it is read, or,
    sent chunked, once the bytes read pass the limit. (Starlette's limit answers a declared
    length with plain text.)"""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reason = f"request body over the limit of {self.limit} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": reason}, status_code=413)(scope, receive, send)
            return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.limit:
                # An HTTPException: FastAPI passes it on from a body read (anything else
                # becomes 400) to its handler, which answers {"detail": reason}.
                raise HTTPException(413, reason)
            return message

        await self.app(scope, counted, send)


class _Timing:
    """Request latency by route template (not raw path: item ids would explode labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - start
            )


class ApiServer(uvicorn.Server):
    """uvicorn that tells live streams to end as soon as its shutdown starts: a stream still
    open (a console left open, a dashboard) then ends cleanly, where uvicorn would wait out
    its graceful timeout and cancel it with a traceback."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: Any = None) -> None:
        draining = getattr(self.app.state, "draining", None)
        if draining is not None:
            draining.set()
        await super().shutdown(sockets=sockets)


def run(cfg: ApiConfig, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and drains the lifespan)."""
    app = create_app(cfg)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            proxy_headers=False, timeout_graceful_shutdown=5)  # fmt: skip
    ApiServer(config, app).run()
