"""The scorer's side of Redis: publish scores and item images, dead-letter bad input, and
read frames through a consumer group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from scorer.schemas import DeadLetterRecord, ModelRecord, ScoreRecord, StreamKeys


@dataclass
class StoredItem:
    """A scored item's image kept for previews."""

    item_id: str
    image: np.ndarray  # uint8 (C, H, W)
    line: str
    model_version: str
    score: float


# Per item: the image hash with its TTL, then the score entry (fields of ScoreRecord). Keys
# are computed by the caller (standalone Redis; a Redis Cluster would need them in KEYS).
_PUBLISH = """
local stream, maxlen, ttl, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
for i = 0, n - 1 do
  local a = 5 + i * 12
  local key = ARGV[a]
  redis.call('HSET', key, 'image', ARGV[a + 1], 'shape', ARGV[a + 2], 'line', ARGV[a + 3],
             'model_version', ARGV[a + 4], 'score', ARGV[a + 5])
  redis.call('EXPIRE', key, ttl)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'item_id', ARGV[a + 6],
             'line', ARGV[a + 3], 'ts_ingested', ARGV[a + 7], 'ts_scored', ARGV[a + 8],
             'score', ARGV[a + 5], 'recon', ARGV[a + 9], 'kl', ARGV[a + 10],
             'complexity', ARGV[a + 11], 'model_version', ARGV[a + 4])
end
return n
"""


class ScoreSink:
    """Writes what the scorer produces: one round trip per batch."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: StreamKeys,
        scores_maxlen: int,
        deadletter_maxlen: int,
        retention_s: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.scores_maxlen = scores_maxlen
        self.deadletter_maxlen = deadletter_maxlen
        self.retention_s = retention_s
        self._publish = client.register_script(_PUBLISH)

    async def publish(self, records: list[ScoreRecord], images: np.ndarray) -> None:
        """Store each image (with TTL), then append its score: a reader of the score stream
        always finds the image of an entry that is still in retention. One script call per
        batch: building three pipelined commands per item cost more than the model's forward
        pass (bench/README.md, "Where the time goes")."""
        args: list[Any] = [self.keys.scores, self.scores_maxlen, self.retention_s, len(records)]
        for rec, img in zip(records, images, strict=True):
            args += [self.keys.item(rec.item_id), img.tobytes(),
                     ",".join(str(d) for d in img.shape), rec.line, rec.model_version,
                     repr(rec.score), rec.item_id, repr(rec.ts_ingested), repr(rec.ts_scored),
                     repr(rec.recon), repr(rec.kl), repr(rec.complexity)]  # fmt: skip
        await self._publish(args=args)

    async def dead_letter(self, records: list[DeadLetterRecord]) -> None:
        await dead_letter(self.client, self.keys, records, self.deadletter_maxlen)

    async def publish_model(self, record: ModelRecord) -> None:
        """Announce a loaded model version: card and calibration scores for the consumers."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.model(record.model_version), mapping=record.to_fields())  # type: ignore[arg-type]
        pipe.zadd(self.keys.models, {record.model_version: record.loaded_at})
        await pipe.execute()

    async def load_item(self, item_id: str) -> StoredItem | None:
        """The stored image of an item, or None once it has left retention."""
        raw: Any = await self.client.hgetall(self.keys.item(item_id))
        if not raw or b"image" not in raw:
            return None
        shape = tuple(int(d) for d in raw[b"shape"].decode().split(","))
        image = np.frombuffer(raw[b"image"], dtype=np.uint8).reshape(shape)
        return StoredItem(
            item_id=item_id,
            image=image,
            line=raw.get(b"line", b"").decode(),
            model_version=raw.get(b"model_version", b"").decode(),
            score=float(raw.get(b"score", b"nan")),
        )


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


async def read_group(
    client: aioredis.Redis,
    stream: str,
    group: str,
    consumer: str,
    count: int,
    block_ms: int,
    reclaim_idle_ms: int | None,
) -> list[tuple[str, dict[Any, Any]]]:
    """Next entries of ``stream`` for this consumer: first entries left pending by a dead
    consumer (when ``reclaim_idle_ms`` is given), else new ones (blocking up to ``block_ms``)."""
    if reclaim_idle_ms is not None:
        claimed: Any = await client.xautoclaim(
            stream, group, consumer, min_idle_time=reclaim_idle_ms, start_id="0-0",
            count=count,
        )  # fmt: skip
        entries = [(as_text(eid), fields) for eid, fields in claimed[1] if fields]
        gone = [eid for eid, fields in claimed[1] if not fields]  # trimmed from the stream
        if gone:
            await client.xack(stream, group, *gone)
        if entries:
            return entries
    resp: Any = await client.xreadgroup(group, consumer, {stream: ">"}, count=count,
                                   block=block_ms)  # fmt: skip
    if not resp:
        return []
    return [(as_text(eid), fields) for eid, fields in resp[0][1]]


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value
