"""Previews of scored items, rendered by the scorer's preview path (``POST /v1/preview``, the
replica that holds the model) and cached in Redis no longer than the item's own retention."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from api.errors import Conflict, NotFound, Unavailable, Upstream
from contract.http import PreviewRequest, PreviewResponse
from contract.keys import StreamKeys
from contract.streams import as_text


@dataclass(frozen=True)
class Preview:
    png: bytes
    model_version: str
    cached: bool


class PreviewClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        scorer_url: str | None,
        client: aioredis.Redis,
        keys: StreamKeys,
        cache_s: int,
    ) -> None:
        self.http = http
        self.scorer_url = scorer_url.rstrip("/") if scorer_url else None
        self.client = client
        self.keys = keys
        self.cache_s = cache_s

    def _cache_key(self, item_id: str, scale: int) -> str:
        return self.keys.preview_cache(item_id, scale)

    async def get(self, item_id: str, kind: str, scale: int) -> Preview:
        """One kind of preview PNG; every kind of the item is cached by the same call."""
        key = self._cache_key(item_id, scale)
        cached: Any = await self.client.hmget(key, [kind, "model_version"])
        if cached[0] is not None:
            return Preview(cached[0], as_text(cached[1] or b""), cached=True)
        images, version = await self._render(item_id, scale)
        ttl_ms: Any = await self.client.pttl(self.keys.item(item_id))
        ttl_s = min(self.cache_s, int(ttl_ms) // 1000) if int(ttl_ms) > 0 else 0
        if ttl_s > 0:
            pipe = self.client.pipeline(transaction=True)
            mapping: Any = {**images, "model_version": version}
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, ttl_s)
            await pipe.execute()
        return Preview(images[kind], version, cached=False)

    async def _render(self, item_id: str, scale: int) -> tuple[dict[str, bytes], str]:
        if self.scorer_url is None:
            raise Unavailable("no scorer URL configured (VLAEWATCH_SCORER_URL): no previews")
        body = PreviewRequest(item_ids=[item_id], scale=scale).model_dump()
        try:
            resp = await self.http.post(f"{self.scorer_url}/v1/preview", json=body)
        except httpx.TimeoutException:
            raise Upstream(f"the scorer at {self.scorer_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"the scorer at {self.scorer_url} is unreachable: {exc}") from None
        if resp.status_code != 200:
            raise Upstream(f"the scorer answered {resp.status_code}: {resp.text[:300]}")
        preview = PreviewResponse.model_validate(resp.json()).previews[0]
        if not preview.ok:
            reason = preview.error or "no preview"
            if preview.status == 404:
                raise NotFound(f"item {item_id}: {reason}")
            if preview.status == 409:
                raise Conflict(f"item {item_id}: {reason}")
            raise Upstream(f"item {item_id}: {reason}")
        images = {k: base64.b64decode(v) for k, v in preview.images.items()}
        return images, preview.model_version or ""
