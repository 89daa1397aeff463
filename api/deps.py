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
from api.schemas import Target
from api.thresholds import ThresholdStore
from scorer.schemas import StreamKeys

ANONYMOUS = Principal(name="anonymous", role="operator")


class KeyRing:
    """The configured API keys as sha256 digests, hashed once at start: a request hashes only
    the key it presents. Lookups take constant time: digests of equal length, every key
    compared, no early exit, so response times say nothing about how much of a key was right."""

    def __init__(self, keys: dict[str, Principal]) -> None:
        self._digests = [(hashlib.sha256(k.encode()).digest(), p) for k, p in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def find(self, key: str) -> Principal | None:
        presented = hashlib.sha256(key.encode()).digest()
        found = None
        for digest, holder in self._digests:
            if hmac.compare_digest(digest, presented):
                found = holder
        return found


@dataclass
class Services:
    """What one API process holds, built in the app's lifespan."""

    cfg: ApiConfig
    client: aioredis.Redis
    keys: StreamKeys
    thresholds: ThresholdStore
    pixel_thresholds: ThresholdStore
    alerts: AlertStore
    models: ModelCache
    consumer: ScoreConsumer
    previews: PreviewClient
    metrics: Metrics
    http: httpx.AsyncClient
    annotator: Annotator
    limiter: RateLimiter
    keyring: KeyRing

    def threshold_store(self, target: Target) -> ThresholdStore:
        return self.thresholds if target == "image" else self.pixel_thresholds


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
    if not services.keyring:
        return ANONYMOUS  # open mode: the command line allows it on loopback only
    if key is None:
        raise Unauthorized("send an API key in the X-API-Key header")
    principal = services.keyring.find(key)
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
