"""The score stream's backlog as health and metrics report it: the consumer group's pending
and undelivered entries, and entries trimmed before every group acknowledged them."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from contract.keys import StreamKeys
from contract.streams import as_text, entry_ms


async def items_lost(client: aioredis.Redis, keys: StreamKeys) -> int:
    """Score entries trimmed before every group acknowledged them (the scorer counts)."""
    value: Any = await client.hget(keys.lost, "scores")
    return int(value or 0)


class GroupLag:
    """(pending, undelivered entries, age in s of the oldest undelivered) of the consumer
    group, as health and metrics report it: read at most once a second per process, and
    undelivered entries counted up to 10,000 ("10000": that many or more), so public
    routes stay cheap however often they are called."""

    def __init__(self, client: aioredis.Redis, keys: StreamKeys, group: str) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self._value: tuple[int | None, int | None, float | None] = (None, None, None)
        self._at = -1.0

    async def read(self) -> tuple[int | None, int | None, float | None]:
        if time.monotonic() - self._at < 1.0:
            return self._value
        self._value, self._at = await self._read(), time.monotonic()
        return self._value

    async def _read(self) -> tuple[int | None, int | None, float | None]:
        try:
            groups: Any = await self.client.xinfo_groups(self.keys.scores)
        except ResponseError:
            return None, None, None
        group = next((g for g in groups if as_text(g["name"]) == self.group), None)
        if group is None:
            return None, None, None
        last = as_text(group["last-delivered-id"])
        lag = group.get("lag")
        if lag is not None:  # Redis 7 keeps the count
            first: Any = await self.client.xrange(self.keys.scores, f"({last}", "+", count=1)
            behind = int(lag)
        else:
            first = await self.client.xrange(self.keys.scores, f"({last}", "+", count=10_000)
            behind = len(first)
        age = time.time() - entry_ms(as_text(first[0][0])) if first else 0.0
        return int(group["pending"]), behind, age
