"""Request dependencies: the services of this process, and who is calling."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import httpx
import redis.asyncio as aioredis
from fastapi import Depends, Request

from api.alerts import AlertStore
from api.annotations import Annotator
from api.config import ApiConfig, Principal, Role
from api.consumer import ModelCache, ScoreConsumer
from api.errors import Forbidden, TooManyRequests, Unauthorized
from api.metrics import Metrics
from api.previews import PreviewClient
from api.ratelimit import RateLimiter
from api.thresholds import ThresholdStore
from scorer.schemas import StreamKeys

ANONYMOUS = Principal(name="anonymous", role="operator")


@dataclass
class Services:
    """What one API process holds, built in the app's lifespan."""

    cfg: ApiConfig
    client: aioredis.Redis
    keys: StreamKeys
    thresholds: ThresholdStore
    alerts: AlertStore
    models: ModelCache
    consumer: ScoreConsumer
    previews: PreviewClient
    metrics: Metrics
    http: httpx.AsyncClient
    annotator: Annotator
    limiter: RateLimiter


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def api_key(request: Request) -> str | None:
    """``X-API-Key``, or ``Authorization: Bearer <key>`` (what Prometheus can send)."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authenticate(services: Services, key: str | None) -> Principal:
    keys = services.cfg.api_keys
    if not keys:
        return ANONYMOUS  # open mode: the command line allows it on loopback only
    if key is None:
        raise Unauthorized("send an API key in the X-API-Key header")
    # Constant time: digests of equal length, every configured key compared, no early exit,
    # so response times say nothing about how much of a key was right.
    presented = hashlib.sha256(key.encode()).digest()
    principal = None
    for candidate, holder in keys.items():
        if hmac.compare_digest(hashlib.sha256(candidate.encode()).digest(), presented):
            principal = holder
    if principal is None:
        raise Unauthorized("unknown API key")
    return principal


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits callers holding ``role`` (operators hold viewer too)."""

    async def dependency(request: Request) -> Principal:
        services = get_services(request)
        principal = authenticate(services, api_key(request))
        # Per key; in open mode (no keys) per client address.
        caller = principal.name if principal is not ANONYMOUS else _address(request)
        wait = services.limiter.take(caller)
        if wait is not None:
            raise TooManyRequests(
                f"rate limit: {services.limiter.rate:g} requests/s (bursts of "
                f"{services.limiter.burst}) for {caller}; retry in {wait:.2f} s",
                RateLimiter.retry_after_header(wait),
            )
        if not principal.may(role):
            raise Forbidden(f"{principal.name} is a {principal.role}; this needs {role}")
        return principal

    return dependency


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


ServicesDep = Annotated[Services, Depends(get_services)]
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
