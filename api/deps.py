"""Request dependencies: the services of this process, and who is calling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import httpx
import redis.asyncio as aioredis
from fastapi import Depends, Request

from api.alerts import AlertStore
from api.annotations import Annotator
from api.backlog import GroupLag
from api.config import ApiConfig
from api.consumer import ConsumerThread
from api.errors import Forbidden, TooManyRequests, Unauthorized
from api.metrics import Metrics
from api.previews import PreviewClient
from api.ratelimit import RateLimiter, StreamSlots
from api.schemas.thresholds import Target
from api.served_models import ModelCache
from api.stats import ScoreWindow
from api.thresholds import ThresholdStore
from contract.auth import (
    ANONYMOUS,
    KeyRing,
    Principal,
    Refused,
    Role,
    authorize,
    cross_site,
    identify,
)
from contract.keys import StreamKeys


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
    consumer: ConsumerThread  # on its own thread and event loop
    lag: GroupLag
    previews: PreviewClient
    metrics: Metrics
    http: httpx.AsyncClient
    annotator: Annotator
    limiter: RateLimiter
    keyring: KeyRing
    failed_logins: RateLimiter  # per client address
    streams: StreamSlots  # live streams held open
    window: ScoreWindow  # recent scores, read one at a time

    def threshold_store(self, target: Target) -> ThresholdStore:
        return self.thresholds if target == "image" else self.pixel_thresholds


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def authenticate(services: Services, request: Request) -> Principal:
    """The caller of ``request``, by its key. Failed attempts are limited per client address
    (``login_failure_burst``, then ``login_failures_per_s``): past the limit every attempt
    from that address is refused with 429, a right key too, so keys cannot be guessed fast."""
    if not services.keyring:
        return ANONYMOUS  # open mode: the command line allows it on loopback only
    address = _address(request)
    wait = services.failed_logins.wait(address)
    if wait is not None:
        raise TooManyRequests(
            f"too many failed authentications from {address}; retry in {wait:.2f} s",
            RateLimiter.retry_after_header(wait),
        )
    try:
        return identify(services.keyring, request.headers)
    except Refused as exc:
        services.failed_logins.take(address)
        raise Unauthorized(exc.reason) from None


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits callers holding ``role`` (operators hold viewer too), and
    refuses cross-site browser requests that change state, in open mode too."""

    async def dependency(request: Request) -> Principal:
        services = get_services(request)
        why = cross_site(request.method, request.headers)
        if why is not None:
            raise Forbidden(why)
        principal = authenticate(services, request)
        # Per key; in open mode (no keys) per client address.
        _spend(services, principal.name if principal is not ANONYMOUS else _address(request))
        try:
            return authorize(principal, role)
        except Refused as exc:
            raise Forbidden(exc.reason) from None

    return dependency


def public_rate_limit(services: Services, request: Request) -> None:
    """The routes anyone may call (health, public metrics) share the request limit, per
    client address."""
    _spend(services, f"address {_address(request)}")


def _spend(services: Services, caller: str) -> None:
    """One request of ``caller``'s rate; 429 with ``Retry-After`` past it."""
    wait = services.limiter.take(caller)
    if wait is not None:
        raise TooManyRequests(
            f"rate limit: {services.limiter.rate:g} requests/s (bursts of "
            f"{services.limiter.burst}) for {caller}; retry in {wait:.2f} s",
            RateLimiter.retry_after_header(wait),
        )


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


ServicesDep = Annotated[Services, Depends(get_services)]
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
