"""Views of the served model's latent space, rendered by the scorer (``POST /v1/explore``, the
replica that holds the model) and cached in Redis under the request and the newest served
model version, for a time that suits the view (a latent map of recent items ages fast)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd
from pydantic import BaseModel

from api.alerts import AlertFilter
from api.deps import Services
from api.errors import Conflict, NotFound, Unavailable, Unprocessable, Upstream
from api.stats import recent_scores
from contract.http import MAX_MAP_ITEMS, ExploreResponse, LatentMapRequest, MapItem
from contract.streams import as_text

MAP_CACHE_S = 15  # the latent map shows recent items: a short cache
ITEM_CACHE_S = 60  # views of items: no longer than items are likely to stay in retention


@dataclass(frozen=True)
class View:
    png: bytes
    data: dict[str, Any]
    model_version: str
    width: int
    height: int
    cached: bool


class ExploreClient:
    """Asks the scorer for a view; caches the answer."""

    def __init__(self, services: Services) -> None:
        self.services = services
        url = services.cfg.scorer_url
        self.scorer_url = url.rstrip("/") if url else None

    async def get(self, req: BaseModel, cache_s: int) -> View:
        """The view ``req`` asks for (a scorer explore request)."""
        services = self.services
        newest = await services.models.get()
        version = newest.version if newest else "none"
        body = req.model_dump(mode="json")
        digest = hashlib.sha256(json.dumps([body, version], sort_keys=True).encode()).hexdigest()
        key = services.keys.explore_cache(digest[:32])
        cache_s = min(cache_s, services.cfg.preview_cache_s)
        if cache_s > 0:
            raw: Any = await services.client.hgetall(key)
            if raw:
                fields = {as_text(k): v for k, v in raw.items()}
                return View(fields["png"], json.loads(fields["data"]),
                            as_text(fields["model_version"]), int(fields["width"]),
                            int(fields["height"]), cached=True)  # fmt: skip
        answer = await self._render(body)
        png = base64.b64decode(answer.png)
        if cache_s > 0:
            pipe = services.client.pipeline(transaction=True)
            mapping: Any = {"png": png, "data": json.dumps(answer.data),
                            "model_version": answer.model_version, "width": answer.width,
                            "height": answer.height}  # fmt: skip
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, cache_s)
            await pipe.execute()
        return View(png, answer.data, answer.model_version, answer.width, answer.height, False)

    async def _render(self, body: dict[str, Any]) -> ExploreResponse:
        if self.scorer_url is None:
            raise Unavailable("no scorer URL configured (VLAEWATCH_SCORER_URL): no explorer")
        try:
            resp = await self.services.http.post(f"{self.scorer_url}/v1/explore", json=body)
        except httpx.TimeoutException:
            raise Upstream(f"the scorer at {self.scorer_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"the scorer at {self.scorer_url} is unreachable: {exc}") from None
        if resp.status_code == 200:
            return ExploreResponse.model_validate(resp.json())
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = None
        reason = detail if isinstance(detail, str) else f"{detail or resp.text[:300]}"
        errors = {404: NotFound, 409: Conflict, 422: Unprocessable, 503: Unavailable}
        raise errors.get(resp.status_code, Upstream)(f"explorer: {reason}")


async def map_request(
    services: Services, line: str | None, window_s: float, limit: int, **view: Any
) -> LatentMapRequest:
    """The latent map's overlay: the newest ``limit`` items scored in the window (on one
    line, or all), those that raised an alert flagged."""
    scores = await recent_scores(services.client, services.keys, window_s,
                                 services.cfg.max_window_entries)  # fmt: skip
    if line is not None:
        scores = scores[scores["line"] == line]
    scores = scores.drop_duplicates("item_id").head(min(limit, MAX_MAP_ITEMS))
    since = time.time() - window_s
    page = await services.alerts.page(AlertFilter(line=line, since=since), limit=limit,
                                      cursor=None)  # fmt: skip
    flagged = {a.item_id for a in page.items}
    ids = list(scores["item_id"]) if isinstance(scores, pd.DataFrame) else []
    items = [MapItem(item_id=i, flagged=i in flagged) for i in ids]
    missing = [MapItem(item_id=i, flagged=True) for i in flagged if i not in set(ids)]
    return LatentMapRequest(items=(items + missing)[:MAX_MAP_ITEMS], **view)
