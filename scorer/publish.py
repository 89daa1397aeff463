"""The scorer's side of Redis: publish scores and item images (one Lua script a batch), and
read the pixel thresholds the API calibrated."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from contract.keys import DEFAULT_LINE, StreamKeys
from contract.records import DeadLetterRecord, ModelRecord, regions_json
from contract.streams import as_text, dead_letter, read_item
from scorer.blobs import BlobRef, BlobStore
from vlae.images import Limits, decode_image

logger = logging.getLogger("vlaewatch.scorer")


@dataclass
class StoredItem:
    """A scored item's image kept for previews."""

    item_id: str
    image: np.ndarray  # uint8 (C, H, W)
    line: str
    model_version: str
    score: float


@dataclass
class ScoredBatch:
    """Scored items as columns (one caller's share of a forward pass): what a replica
    publishes and answers with, without an object per item."""

    item_ids: list[str]
    lines: list[str]
    ts_ingested: list[float]
    shape: tuple[int, ...]  # of every item's decoded image (C, H, W)
    stored: list[bytes]  # per item: what to keep for previews (``ItemBlob.payload``)
    as_file: list[bool]  # per item: ``stored`` is the file as received, else its pixels
    score: list[float]
    recon: list[float]
    kl: list[float]
    complexity: list[float]
    ts_scored: float
    model_version: str
    # Per item, its anomaly map (float32 H x W) where the caller asked for it; answered over
    # HTTP only, never published (a map is as large as the image).
    maps: list[np.ndarray | None] | None = None
    # Per item where a pixel threshold applied to its line: the threshold, the map's regions
    # above it and the share of the image they cover (``vlae.regions``); else None.
    pixel_threshold: list[float | None] | None = None
    regions: list[list[dict[str, Any]] | None] | None = None
    defect_area: list[float | None] | None = None
    # Items the publish refused (by position), with the reason: their id is held by an item
    # of another line still in retention, or their line is new past ``max_lines``.
    refused: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.item_ids)

    def results(self) -> list[dict[str, Any]]:
        """Per-item results, the fields of ``ItemScore``."""
        v = self.model_version
        out = [
            {"item_id": i, "ok": True, "line": ln, "score": s, "recon": r, "kl": k,
             "complexity": c, "model_version": v}
            for i, ln, s, r, k, c in zip(self.item_ids, self.lines, self.score, self.recon,
                                         self.kl, self.complexity, strict=True)
        ]  # fmt: skip
        for i, why in self.refused.items():
            out[i] = {"item_id": self.item_ids[i], "ok": False, "line": self.lines[i],
                      "status": 409, "error": why}  # fmt: skip
        for result, m in zip(out, self.maps or [], strict=False):
            if m is not None and result["ok"]:
                result["anomaly_map"] = encode_map(m)
        for result, t, rs, area in zip(out, self.pixel_threshold or [], self.regions or [],
                                       self.defect_area or [], strict=False):  # fmt: skip
            if t is not None and result["ok"]:
                result |= {"pixel_threshold": t, "regions": rs, "defect_area": area}
        return out


def encode_map(m: np.ndarray) -> str:
    """An anomaly map as base64 NPY (float32 H x W), the form ``?maps=true`` answers with."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(m, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def decode_map(text: str) -> np.ndarray:
    """The inverse of ``encode_map``."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def _numbers(values: list[float]) -> str:
    """A numeric column for the publish script: Python's shortest round-trip text."""
    return ",".join(map(repr, values))


# Per item: the image (an ItemBlob string with its TTL), then the score entry (the fields of
# ScoreRecord). The batch arrives as columns: the images as one blob with their sizes and
# kinds, everything else comma-joined (item ids and lines cannot hold commas, spaces, or be
# empty: their patterns), so the client packs 23 arguments instead of a dozen per item. Items
# whose line has a pixel threshold also get regions (JSON, one blob with their sizes, like the
# images), defect_area and pixel_threshold; "-" marks the others. An item is refused (not
# stored, not published) when another line's item holds its id, or when its line is new and
# the registry of lines is full. Every key is in KEYS (the stream, the lost hash, the lines'
# registry, then each item's key), as Redis Cluster and ACL key patterns require. Then the
# stream is trimmed, in the same step (below).
_PUBLISH = """
local stream, lost_key, lines_key = KEYS[1], KEYS[2], KEYS[3]
local maxlen, ttl, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local hard, max_lines, known = tonumber(ARGV[21]), tonumber(ARGV[22]), {}
local version, ts_scored = ARGV[4], ARGV[5]
local shape, images = ARGV[6], ARGV[8]
local function col(s)
  local t = {}
  for v in string.gmatch(s, '[^,]+') do t[#t + 1] = v end
  return t
end
local sizes, ids, lines, ts = col(ARGV[7]), col(ARGV[9]), col(ARGV[10]), col(ARGV[11])
local score, recon, kl, cx = col(ARGV[12]), col(ARGV[13]), col(ARGV[14]), col(ARGV[15])
local kinds, refs, pos = col(ARGV[16]), col(ARGV[23]), 1
local rsizes, rjson, area, pth, rpos = col(ARGV[17]), ARGV[18], col(ARGV[19]), col(ARGV[20]), 1
local refused = {}
for i = 1, n do
  local size = tonumber(sizes[i])
  local key = KEYS[3 + i]
  local held = nil  -- the line of an item in retention under this id, if another line's
  if redis.call('TYPE', key)['ok'] == 'string' then
    held = string.match(redis.call('GETRANGE', key, 0, 255), '^%S+ %S+ (%S+) ')
    if held == lines[i] then held = nil end
  end
  local new_line = false  -- a line past the registry's cap
  if not held and not known[lines[i]] then
    if redis.call('SISMEMBER', lines_key, lines[i]) == 1 then
      known[lines[i]] = true
    elseif redis.call('SCARD', lines_key) < max_lines then
      redis.call('SADD', lines_key, lines[i])
      known[lines[i]] = true
    else
      new_line = true
    end
  end
  if held or new_line then
    refused[#refused + 1] = i
    refused[#refused + 1] = held and 'held' or 'lines'
    refused[#refused + 1] = held or ''
    pos = pos + size
    if pth[i] ~= '-' then rpos = rpos + tonumber(rsizes[i]) end
  else
    local header = kinds[i] .. ' ' .. shape .. ' ' .. lines[i] .. ' ' .. version .. ' ' .. score[i]
    if refs[i] ~= '-' then header = header .. ' ' .. refs[i] end
    redis.call('SET', key, header .. '\\n' .. string.sub(images, pos, pos + size - 1), 'EX', ttl)
    pos = pos + size
    local fields = {'item_id', ids[i], 'line', lines[i], 'ts_ingested', ts[i],
                    'ts_scored', ts_scored, 'score', score[i], 'recon', recon[i], 'kl', kl[i],
                    'complexity', cx[i], 'model_version', version}
    if pth[i] ~= '-' then
      local rsize = tonumber(rsizes[i])
      for _, v in ipairs({'regions', string.sub(rjson, rpos, rpos + rsize - 1),
                          'defect_area', area[i], 'pixel_threshold', pth[i]}) do
        fields[#fields + 1] = v
      end
      rpos = rpos + rsize
    end
    redis.call('XADD', stream, '*', unpack(fields))
  end
end
-- Trimming: the stream keeps at least ``maxlen`` entries of history, and never drops an
-- entry a registered consumer group has not acknowledged (pending) or not read yet, unless
-- it holds more than ``hard`` entries: then the oldest go, and the ones some group still
-- needed are counted in the lost hash (field ``scores``), exactly.
local lost = 0
local len = redis.call('XLEN', stream)
if len > maxlen then
  local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
  end
  local function before(a, b)  -- id a sorts before id b
    local am, as = parse(a)
    local bm, bs = parse(b)
    return am < bm or (am == bm and as < bs)
  end
  local safe = nil  -- every entry at or after this id is still needed by some group
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for k = 1, #g, 2 do info[g[k]] = g[k + 1] end
    local need
    if info['pending'] > 0 then
      need = redis.call('XPENDING', stream, info['name'])[2]
    else
      local ms, seq = parse(info['last-delivered-id'])
      need = string.format('%d-%d', ms, seq + 1)
    end
    if safe == nil or before(need, safe) then safe = need end
  end
  if safe == nil then  -- no group: history only
    redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
  else
    local old = redis.call('XRANGE', stream, '-', '(' .. safe, 'COUNT',
                           math.min(len - maxlen, 10000))
    if #old > 0 then
      local ms, seq = parse(old[#old][1])
      redis.call('XTRIM', stream, 'MINID', '~', string.format('%d-%d', ms, seq + 1))
    end
    if redis.call('XLEN', stream) > hard then
      redis.call('XTRIM', stream, 'MINID', safe)  -- history first, then what was needed
      lost = math.max(0, redis.call('XLEN', stream) - hard)
      if lost > 0 then
        redis.call('XTRIM', stream, 'MAXLEN', hard)
        redis.call('HINCRBY', lost_key, 'scores', lost)
      end
    end
  end
end
return {lost, refused}
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
        scores_hard_maxlen: int | None = None,
        max_lines: int = 512,
        store: BlobStore | None = None,
        inline_max_bytes: int | None = None,
    ) -> None:
        self.client = client
        # Images over ``inline_max_bytes`` go to ``store`` (None: none do); the rest stay in
        # Redis. The store is read whatever the limit: an item may have gone there before.
        self.store = store
        self.inline_max_bytes = inline_max_bytes
        self.keys = keys
        self.scores_maxlen = scores_maxlen
        self.scores_hard_maxlen = max(scores_hard_maxlen or 10 * scores_maxlen, scores_maxlen)
        self.max_lines = max_lines
        self.deadletter_maxlen = deadletter_maxlen
        self.retention_s = retention_s
        self._publish = client.register_script(_PUBLISH)

    async def publish(self, batch: ScoredBatch) -> None:
        """Store each image (with TTL), then append its score: a reader of the score stream
        always finds the image of an entry that is still in retention. An item whose id an
        item of another line holds is neither stored nor published: ``batch.refused``. One
        script call per batch, its arguments columns: three pipelined commands per item cost
        more than the model's forward pass, and a dozen arguments per item still held the
        replica's event loop (bench/README.md, "Where the time goes")."""
        if not len(batch):
            return
        n = len(batch)
        stored, refs = await self._offload(batch)
        thresholds = batch.pixel_threshold or [None] * n
        found = [regions_json(r) if r is not None else "" for r in batch.regions or [None] * n]
        keys = [self.keys.scores, self.keys.lost, self.keys.lines]
        keys += [self.keys.item(i) for i in batch.item_ids]
        reply: Any = await self._publish(keys=keys, args=[
            self.scores_maxlen, self.retention_s, len(batch),
            batch.model_version, repr(batch.ts_scored),
            ",".join(map(str, batch.shape)), ",".join(str(len(b)) for b in stored),
            b"".join(stored), ",".join(batch.item_ids), ",".join(batch.lines),
            _numbers(batch.ts_ingested), _numbers(batch.score), _numbers(batch.recon),
            _numbers(batch.kl), _numbers(batch.complexity),
            ",".join("file" if f else "pixels" for f in batch.as_file),
            ",".join(str(len(r)) for r in found), "".join(found),
            ",".join("-" if a is None else repr(a) for a in batch.defect_area or [None] * n),
            ",".join("-" if t is None else repr(t) for t in thresholds),
            self.scores_hard_maxlen, self.max_lines, ",".join(refs),
        ])  # fmt: skip
        lost, refused = reply
        if lost:
            logger.error("score stream over %d entries: %d unacknowledged entries trimmed "
                         "(counted in %s)", self.scores_hard_maxlen, lost,
                         self.keys.lost)  # fmt: skip
        for pos, kind, held in zip(refused[::3], refused[1::3], refused[2::3], strict=True):
            i = int(pos) - 1
            if as_text(kind) == "held":
                batch.refused[i] = (
                    f"item id {batch.item_ids[i]!r} is held by line {as_text(held)!r} (ids "
                    "are unique across lines while the image is retained): give each line's "
                    "items ids of their own, e.g. prefixed by the line"
                )
            else:
                batch.refused[i] = (
                    f"line {batch.lines[i]!r} is new and {self.max_lines} lines are known "
                    f"already (max_lines, {self.keys.lines}): raise max_lines, or remove a "
                    "line no longer in use from that set"
                )

    async def _offload(self, batch: ScoredBatch) -> tuple[list[bytes], list[str]]:
        """Write the batch's images that go to the blob store, as one object, before the
        script makes them visible: what Redis keeps per item (the image, or nothing), and
        the references (``-``: in Redis). A refused item's image stays in its object until
        the bucket's retention ends; nothing refers to it."""
        n, store, cap = len(batch), self.store, self.inline_max_bytes
        if store is None or cap is None:
            return batch.stored, ["-"] * n
        out = [i for i, b in enumerate(batch.stored) if len(b) > cap]
        refs = ["-"] * n
        stored = list(batch.stored)
        if out:
            written = await asyncio.to_thread(
                store.write, [batch.stored[i] for i in out], batch.ts_scored
            )
            for i, ref in zip(out, written, strict=True):
                refs[i], stored[i] = str(ref), b""
        return stored, refs

    async def dead_letter(self, records: list[DeadLetterRecord]) -> None:
        await dead_letter(self.client, self.keys, records, self.deadletter_maxlen)

    async def publish_models(self, records: list[ModelRecord], lines: dict[str, str]) -> None:
        """Announce the loaded model versions (card and calibration scores for the consumers)
        and which version scores which line (``lines``: line -> version, ``*`` the rest)."""
        pipe = self.client.pipeline(transaction=True)
        for record in records:
            pipe.hset(self.keys.model(record.model_version), mapping=record.to_fields())  # type: ignore[arg-type]
            pipe.zadd(self.keys.models, {record.model_version: record.loaded_at})
        pipe.delete(self.keys.line_models)
        pipe.hset(self.keys.line_models, mapping=lines)  # type: ignore[arg-type]
        await pipe.execute()

    async def load_item(self, item_id: str) -> StoredItem | None:
        """The stored image of an item, or None once it has left retention."""
        blob = await read_item(self.client, self.keys.item(item_id))
        if blob is None:
            return None
        payload = blob.payload
        if blob.ref is not None:
            if self.store is None:
                raise RuntimeError(f"item {item_id} lies in a blob store; this replica has none")
            found = await asyncio.to_thread(self.store.read, BlobRef.parse(blob.ref))
            if found is None:  # its bucket went first: retention is over
                return None
            payload = found
        if blob.kind == "file":  # decoded as it was when scored (``shape`` is what came out)
            c, h, w = blob.shape
            image = decode_image(payload, (c, h, w), Limits(resize=True))
        else:
            image = np.frombuffer(payload, dtype=np.uint8).reshape(blob.shape)
        return StoredItem(item_id=item_id, image=image, line=blob.line,
                          model_version=blob.model_version, score=blob.score)  # fmt: skip


class PixelThresholds:
    """The lines' pixel thresholds as the API stores them (``StreamKeys.pixel_thresholds``),
    read at most once per ``ttl_s``: a new threshold applies to items scored after that."""

    def __init__(self, client: aioredis.Redis, keys: StreamKeys, ttl_s: float = 1.0) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._values: dict[str, float] = {}
        self._read_at = -float("inf")

    async def for_lines(self, lines: Iterable[str]) -> dict[str, float | None]:
        """Each line's threshold: its own, else the default's, else None."""
        if time.monotonic() - self._read_at >= self.ttl_s:
            raw: Any = await self.client.hgetall(self.keys.pixel_thresholds)
            values = {}
            for k, v in raw.items():
                try:
                    values[as_text(k)] = float(json.loads(v)["value"])
                except (ValueError, KeyError, TypeError):
                    continue  # not written by the API: no threshold rather than no scoring
            self._values, self._read_at = values, time.monotonic()
        default = self._values.get(DEFAULT_LINE)
        return {line: self._values.get(line, default) for line in set(lines)}
