"""The ``{prefix}:frames`` consumer of a replica: a background task that reads the stream as
one consumer of the group, scores what it reads and acks it after publishing."""

import asyncio
import functools
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from ray import serve
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contract.http import ItemError
from contract.keys import FRAMES_GROUP, RecordError
from contract.records import FrameRecord
from contract.streams import as_text, ensure_group, entry_ms, read_group
from scorer.decode import Raw
from scorer.holder import CONCURRENT_BATCHES
from scorer.scoring import ScorePath

logger = logging.getLogger("ray.serve")


def _done(
    slots: asyncio.Semaphore, handling: set[asyncio.Task[None]], task: asyncio.Task[None]
) -> None:
    """A frames read is handled (or failed: its entries stay pending for reclaiming)."""
    slots.release()
    handling.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("frames consumer: a read was not handled, left pending: %r",
                       task.exception())  # fmt: skip


class FramesConsumer:
    """Reads ``{prefix}:frames`` while ``consume_frames`` is on. Up to ``CONCURRENT_BATCHES``
    reads are handled at once: the next one is read and decoded while the last one is
    scored. A read whose handling fails stays pending in the group and is reclaimed (by this
    or another replica) after ``reclaim_idle_ms``."""

    def __init__(self, path: ScorePath) -> None:
        self.path = path
        self._task: asyncio.Task[None] | None = None
        self._group_ready = False
        self._last_reclaim = 0.0

    def run(self, on: bool) -> None:
        """Start the task, or stop it."""
        if on and self._task is None:
            self._task = asyncio.create_task(self._consume())
        elif not on and self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _consume(self) -> None:
        consumer = f"scorer-{serve.get_replica_context().replica_id.unique_id}"
        self._group_ready, self._last_reclaim, backoff = False, 0.0, 0.1
        slots = asyncio.Semaphore(CONCURRENT_BATCHES)
        handling: set[asyncio.Task[None]] = set()
        while True:
            client = self.path.client
            assert client is not None
            try:
                await slots.acquire()
                entries = await self._read(client, consumer)
                backoff = 0.1
            except asyncio.CancelledError:
                for task in handling:
                    task.cancel()
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("frames consumer: Redis unavailable (%s); retrying", exc)
                self._group_ready, entries = False, []
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except ResponseError as exc:
                logger.warning("frames consumer: %s", exc)
                self._group_ready, entries = False, []
                await asyncio.sleep(backoff)
            except Exception:
                logger.exception("frames consumer: unexpected error; continuing")
                entries = []
                await asyncio.sleep(1.0)
            if not entries:
                slots.release()
                continue
            task = asyncio.create_task(self._handle(entries, client))
            handling.add(task)
            task.add_done_callback(functools.partial(_done, slots, handling))

    async def _read(
        self, client: aioredis.Redis, consumer: str
    ) -> list[tuple[str, dict[Any, Any]]]:
        """One read of the group (reclaiming idle entries now and then); entries delivered
        too often are dead-lettered on the way."""
        cfg, keys = self.path.cfg, self.path.keys
        assert cfg is not None
        if not self._group_ready:
            await ensure_group(client, keys.frames, FRAMES_GROUP)
            self._group_ready = True
        reclaim = None
        if time.monotonic() - self._last_reclaim > cfg.reclaim_idle_ms / 2000:
            reclaim, self._last_reclaim = cfg.reclaim_idle_ms, time.monotonic()
        read = await read_group(
            client, keys.frames, FRAMES_GROUP, consumer, cfg.max_batch_size,
            cfg.frames_block_ms, reclaim, cfg.max_deliveries,
        )  # fmt: skip
        if read.exhausted:
            await self._exhausted(read.exhausted, client)
        return read.entries

    async def _exhausted(
        self, entries: list[tuple[str, dict[Any, Any]]], client: aioredis.Redis
    ) -> None:
        """Frames read ``max_deliveries`` times and never acked (each read failed, or the
        replicas holding them died): dead-lettered with the reason, then acked."""
        assert self.path.cfg is not None
        errors = []
        for eid, fields in entries:
            item = as_text(fields.get(b"item_id", fields.get("item_id", b""))) or f"frame-{eid}"
            line = as_text(fields.get(b"line", fields.get("line", b""))) or "?"
            errors.append(ItemError(item_id=item[:128], line=line[:64], status=500,
                                    error=f"frame delivered {self.path.cfg.max_deliveries} "
                                    "times and never scored (each read failed, or its replica "
                                    "died); left the stream"))  # fmt: skip
        logger.warning("frames consumer: %d frame(s) exhausted their deliveries", len(entries))
        await self.path.dead_letter(errors, "frames", [eid for eid, _ in entries])
        await self._ack(entries, client)

    async def _handle(
        self, entries: list[tuple[str, dict[Any, Any]]], client: aioredis.Redis
    ) -> None:
        """Score a read's frames, dead-letter the bad ones, then ack them all."""
        assert self.path.cfg is not None
        raws: list[Raw] = []
        frame_ids: list[str] = []
        bad: list[tuple[ItemError, str]] = []
        for eid, fields in entries:
            try:
                rec = FrameRecord.from_fields(fields)
            except RecordError as exc:
                err = ItemError(item_id=f"frame-{eid}", line="?", status=422,
                                error=f"bad frame entry: {exc}")  # fmt: skip
                bad.append((err, eid))
                continue
            ts = rec.ts or entry_ms(eid)
            raws.append(Raw(rec.item_id or f"frame-{eid}", rec.line, rec.image, ts, eid))
            frame_ids.append(eid)
        items, errors = await self.path.decode(raws, self.path.cfg.limits())
        bad += [(err, frame_ids[i]) for i, err in errors.items()]
        if bad:
            await self.path.dead_letter([b for b, _ in bad], "frames", [eid for _, eid in bad])
        if items:
            await self.path.score_items(items)
        await self._ack(entries, client)

    async def _ack(self, entries: list[tuple[str, dict[Any, Any]]], client: aioredis.Redis) -> None:
        # Acked frames are done (their images live on under the item keys for retention):
        # deleting them keeps the frames stream as long as the backlog, not the history.
        ids = [eid for eid, _ in entries]
        keys = self.path.keys
        pipe = client.pipeline(transaction=False)
        pipe.xack(keys.frames, FRAMES_GROUP, *ids)
        pipe.xdel(keys.frames, *ids)
        await pipe.execute()
