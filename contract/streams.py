"""Redis helpers every service shares: the long-lived client, consumer groups, dead letters,
stored items and model records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contract.keys import StreamKeys
from contract.records import DeadLetterRecord, ItemBlob, ModelRecord


def connect(url: str) -> aioredis.Redis:
    """The client of a long-lived service process: keepalive, a health check of idle pooled
    connections, and a retry of a command whose pooled connection died (as after a Redis
    restart) instead of failing the request that found it. A retried write may apply twice:
    delivery is at least once, and alerts are idempotent per item.

    ``?cluster=true`` in the URL makes it a Redis Cluster client, seeded by that node: every
    script declares its keys, and a key prefix with a hash tag (``{vlaewatch}``) keeps a
    deployment's keys in one slot (docs/operations.md, "Redis Cluster")."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = [v for k, v in query if k == "cluster"]
    if cluster:  # not a connection option: redis-py would refuse it
        url = urlunsplit(parts._replace(query=urlencode([q for q in query if q[0] != "cluster"])))
    if cluster and cluster[-1].lower() in ("1", "true", "yes"):
        found: Any = RedisCluster.from_url(
            url, health_check_interval=10, socket_keepalive=True, socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )  # fmt: skip
        return cast(aioredis.Redis, found)
    return aioredis.from_url(
        url, health_check_interval=10, socket_keepalive=True, socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )  # fmt: skip


async def read_item(client: aioredis.Redis, key: str) -> ItemBlob | None:
    """An item's stored image, or None once it has left retention."""
    value: Any = await client.get(key)
    return None if value is None else ItemBlob.parse(value)


async def dead_letter(
    client: aioredis.Redis, keys: StreamKeys, records: list[DeadLetterRecord], maxlen: int
) -> None:
    """Append what could not be scored or consumed to ``{prefix}:deadletter``, with reasons."""
    if not records:
        return
    pipe = client.pipeline(transaction=False)
    for rec in records:
        pipe.xadd(keys.deadletter, rec.to_fields(), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    await pipe.execute()


async def ensure_group(client: aioredis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if missing; from the stream's start, so
    frames sent before any scorer ran are scored too."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def entry_ms(entry_id: str) -> float:
    """The wall time (seconds) encoded in a stream entry id."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


async def line_model_version(client: aioredis.Redis, keys: StreamKeys, line: str) -> str | None:
    """The version the scorer announced for ``line`` (its own model, else the ``*`` one)."""
    found: Any = await client.hmget(keys.line_models, [line, "*"])
    version = found[0] or found[1]
    return as_text(version) if version else None


async def load_model_record(
    client: aioredis.Redis, keys: StreamKeys, version: str | None = None
) -> ModelRecord | None:
    """A served model version's record (the most recently loaded one when ``version`` is None);
    None when no replica has announced it."""
    if version is None:
        newest: Any = await client.zrange(keys.models, -1, -1)
        if not newest:
            return None
        version = as_text(newest[0])
    raw: Any = await client.hgetall(keys.model(version))
    return ModelRecord.from_fields(raw) if raw else None


@dataclass
class Read:
    """What one ``read_group`` call got: entries to handle, and entries delivered
    ``max_deliveries`` times already without being acked (to dead-letter, then ack)."""

    entries: list[tuple[str, dict[Any, Any]]]
    exhausted: list[tuple[str, dict[Any, Any]]]


async def read_group(
    client: aioredis.Redis,
    stream: str,
    group: str,
    consumer: str,
    count: int,
    block_ms: int,
    reclaim_idle_ms: int | None,
    max_deliveries: int | None = None,
) -> Read:
    """Next entries of ``stream`` for this consumer: first entries left pending by a dead
    consumer (when ``reclaim_idle_ms`` is given), else new ones (blocking up to ``block_ms``).
    A pending entry already delivered ``max_deliveries`` times is not handed out again: it
    comes back in ``exhausted``, so one entry that always fails cannot block its stream."""
    if reclaim_idle_ms is not None:
        exhausted: list[tuple[str, dict[Any, Any]]] = []
        if max_deliveries is not None:
            pending: Any = await client.xpending_range(
                stream, group, min="-", max="+", count=count, idle=reclaim_idle_ms
            )
            over = [p["message_id"] for p in pending if p["times_delivered"] >= max_deliveries]
            if over:
                taken: Any = await client.xclaim(stream, group, consumer, reclaim_idle_ms, over)
                exhausted = [(as_text(eid), fields or {}) for eid, fields in taken]
                if taken and len(taken) < len(over):  # trimmed meanwhile: nothing to handle
                    held = {as_text(eid) for eid, _ in taken}
                    await client.xack(stream, group, *[e for e in over if as_text(e) not in held])
        claimed: Any = await client.xautoclaim(
            stream, group, consumer, min_idle_time=reclaim_idle_ms, start_id="0-0",
            count=count,
        )  # fmt: skip
        entries = [(as_text(eid), fields) for eid, fields in claimed[1] if fields]
        # Trimmed from the stream: only past its hard bound, and counted there as lost.
        gone = [eid for eid, fields in claimed[1] if not fields]
        if gone:
            await client.xack(stream, group, *gone)
        if entries or exhausted:
            return Read(entries, exhausted)
    resp: Any = await client.xreadgroup(group, consumer, {stream: ">"}, count=count,
                                   block=block_ms)  # fmt: skip
    if not resp:
        return Read([], [])
    return Read([(as_text(eid), fields) for eid, fields in resp[0][1]], [])


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value
