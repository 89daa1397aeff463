"""The path every decoded item takes, whichever way it came (HTTP or the frames stream):
batched forward passes on the served models, then the score stream; refused and bad items
to the dead letters. It holds the replica's Redis client and announces the models served."""

import asyncio
import logging
import time
from typing import Any

import pyarrow as pa
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contract.http import ItemError
from contract.keys import StreamKeys
from contract.records import DeadLetterRecord, ModelRecord
from contract.streams import connect
from scorer.blobs import BlobStore
from scorer.config import ScorerConfig
from scorer.decode import Item, Raw, decode
from scorer.holder import ModelHolder
from scorer.publish import PixelThresholds, ScoredBatch, ScoreSink
from vlae.images import Limits

logger = logging.getLogger("ray.serve")


class ScorePath:
    """Decode, score and publish items with the models of ``holder``."""

    def __init__(self, holder: ModelHolder) -> None:
        self.holder = holder
        self.cfg: ScorerConfig | None = None
        self.client: aioredis.Redis | None = None
        self.keys = StreamKeys()
        self.sink: ScoreSink | None = None
        self.pixel: PixelThresholds | None = None
        self._redis_url: str | None = None  # resolved: never logged, never published
        self._announced: dict[str, str] | None = None  # line -> version last published
        self._sweeper: asyncio.Task[None] | None = None

    async def apply(self, cfg: ScorerConfig) -> None:
        """Reconnect when Redis or the key prefix changed; announce the models again."""
        old = self.cfg
        url = cfg.resolved_redis_url()
        if old is None or (url, cfg.key_prefix) != (self._redis_url, old.key_prefix):
            if self.client is not None:
                await self.client.aclose()
            self.client, self._redis_url = connect(url), url
            self.keys = StreamKeys(cfg.key_prefix)
        assert self.client is not None
        # The store is read in every mode: items written before a change of mode preview too.
        store = await asyncio.to_thread(BlobStore, cfg.resolved_blob_uri(), cfg.retention_s)
        inline = {"auto": cfg.inline_max_bytes, "blob": 0, "redis": None}[cfg.image_store]
        self.sink = ScoreSink(
            self.client, self.keys, cfg.scores_maxlen, cfg.deadletter_maxlen,
            cfg.retention_s, cfg.scores_hard_maxlen, cfg.max_lines, store, inline,
        )  # fmt: skip
        self.pixel = PixelThresholds(self.client, self.keys)
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = asyncio.create_task(self._sweep(store))
        self.cfg = cfg
        self._announced = None
        await self.announce()

    async def _sweep(self, store: BlobStore) -> None:
        """Delete the blob store's buckets past retention, once a bucket's time, traffic or
        not (every replica does: deleting twice is harmless)."""
        while True:
            try:
                swept = await asyncio.to_thread(store.sweep)
            except (OSError, pa.ArrowException) as exc:
                logger.warning("blob store %s: sweep failed, retried: %s", store.uri, exc)
            else:
                if swept:
                    logger.info("blob store: %d bucket(s) past retention deleted", swept)
            await asyncio.sleep(store.bucket_s)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.client is not None:
            await self.client.aclose()

    async def announce(self) -> None:
        """Publish each served version's card and calibration scores, and which line each
        scores, once per change and connection; retried before the next batch when Redis is
        unavailable now."""
        if self.holder.loaded is None or self.sink is None:
            return
        lines = self.holder.served()
        if self._announced == lines:
            return
        now = time.time()
        by_version = self.holder.by_version()
        records = [
            ModelRecord(model_version=m.version, card=m.card.to_json(),
                        calibration=m.calibration.to_csv(index=False), loaded_at=now)
            for m in by_version.values()
        ]  # fmt: skip
        try:
            await self.sink.publish_models(records, lines)
        except (RedisError, OSError) as exc:
            logger.warning("could not announce models %s yet: %s", list(by_version), exc)
            return
        self._announced = lines

    async def decode(
        self, raws: list[Raw], limits: Limits
    ) -> tuple[list[Item], dict[int, ItemError]]:
        """``scorer.decode.decode`` off the event loop: health and other requests go on."""
        return await asyncio.to_thread(decode, raws, limits, self.holder.model)

    async def score_items(self, items: list[Item]) -> list[dict[str, Any]]:
        """Score any number of items: chunks of one model's items, at most one batch each,
        batched with other calls; per-item results (the fields of ``ItemScore``) in order."""
        assert self.cfg is not None
        size = self.cfg.max_batch_size
        by_model: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            by_model.setdefault(id(it.model), []).append(i)
        order = [i for picked in by_model.values() for i in picked]
        chunks = [
            [items[i] for i in picked[j : j + size]]
            for picked in by_model.values()
            for j in range(0, len(picked), size)
        ]
        parts = await asyncio.gather(*(self._score_chunk(c) for c in chunks))
        results = [r for part in parts for r in part.results()]
        out: list[dict[str, Any]] = [{}] * len(items)
        for i, r in zip(order, results, strict=True):
            out[i] = r
        return out

    async def _score_chunk(self, items: list[Item]) -> ScoredBatch:
        """Score one chunk (batched with other callers' chunks), then publish it: an item is
        in the score stream before anyone is answered."""
        assert self.sink is not None and self.pixel is not None
        await self.announce()
        thresholds = await self.pixel.for_lines(it.line for it in items)
        for it in items:
            it.pixel_threshold = thresholds[it.line]
        scored = await self.holder.score_chunks(items)
        await self.sink.publish(scored)
        if scored.refused:
            await self._refused(items, scored)
        return scored

    async def _refused(self, items: list[Item], scored: ScoredBatch) -> None:
        """Items the score stream refused (an id another line holds, a line past the cap):
        409 to their callers, and a dead letter from the path each came by."""
        refused = [(i, it) for i, it in enumerate(items) if i in scored.refused]
        logger.warning("%d item(s) refused: %s", len(refused), scored.refused[refused[0][0]])
        for source in ("http", "frames"):
            mine = [(i, it) for i, it in refused if (it.frame_id != "") == (source == "frames")]
            if mine:
                await self.dead_letter(
                    [ItemError(item_id=it.item_id, line=it.line, status=409,
                               error=scored.refused[i]) for i, it in mine],
                    source, [it.frame_id for _, it in mine],
                )  # fmt: skip

    async def dead_letter(self, errors: list[ItemError], source: str, ids: list[str]) -> None:
        """Dead-letter items that were not scored; ``ids``: their frames entries, or ''."""
        assert self.sink is not None
        now = time.time()
        await self.sink.dead_letter(
            [
                DeadLetterRecord(item_id=e.item_id, line=e.line, source=source,  # type: ignore[arg-type]
                                 reason=e.error, status=e.status, ts=now, frame_id=fid)
                for e, fid in zip(errors, ids, strict=True)
            ]
        )  # fmt: skip
