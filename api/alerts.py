"""Alerts and operator labels in Redis.

An alert is a hash keyed by item id, created only if absent (a Lua script, so redelivered
stream entries and several consumers never make two alerts for one item), indexed by scored
time overall and per line, and announced on a pub/sub channel for live streams in the same
step. State moves open → acknowledged → resolved; labels feed the ``labels`` calibration.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from api.errors import Conflict, NotFound, Unprocessable
from api.schemas.alerts import (
    Alert,
    AlertEvent,
    AlertPage,
    AlertState,
    ItemLabel,
    Label,
    RegionLabel,
    Verdict,
)
from contract.keys import StreamKeys
from contract.records import regions_json
from contract.streams import as_text

# Returns 1 when created, 0 when the item already has an alert of this line (a redelivered
# entry), -1 when its id already alerted on another line (the caller dead-letters the entry).
# Every key is checked before the first write, so a key of a wrong type (written by something
# else) fails the whole create with nothing stored; the entry stays pending and is retried.
_CREATE = """
local line = ARGV[10]  -- the value of field 'line'
local types = {{KEYS[1], 'hash'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'}, {KEYS[4], 'list'},
               {KEYS[5], 'set'}}
for _, kt in ipairs(types) do
  local t = redis.call('TYPE', kt[1])['ok']
  if t ~= 'none' and t ~= kt[2] then
    return redis.error_reply('WRONGTYPE ' .. kt[1] .. ' holds a ' .. t .. ', not a ' .. kt[2])
  end
end
local found = redis.call('HGET', KEYS[1], 'line')
if found then
  if found == line then return 0 end
  return -1
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('RPUSH', KEYS[4], ARGV[5])
redis.call('EXPIRE', KEYS[4], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[5], line)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# Move state if the current one allows it; returns the state found (or "" when missing).
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
for allowed in string.gmatch(ARGV[1], '[^,]+') do
  if allowed == state then
    redis.call('HSET', KEYS[1], 'state', ARGV[2], 'note', ARGV[4])
    redis.call('RPUSH', KEYS[2], ARGV[3])
    return state
  end
end
return state
"""

_FIELDS = ("item_id", "line", "score", "recon", "kl", "complexity", "threshold",
           "threshold_version", "p_value", "model_version", "ts_ingested", "ts_scored",
           "created_at", "regions", "defect_area", "pixel_threshold")  # fmt: skip
_FLOATS = {"score", "recon", "kl", "threshold", "ts_ingested", "ts_scored", "created_at"}

TRANSITIONS: dict[str, tuple[tuple[AlertState, ...], AlertState]] = {
    "acknowledged": (("open",), "acknowledged"),
    "resolved": (("open", "acknowledged"), "resolved"),
}


@dataclass(frozen=True)
class AlertFilter:
    """What ``list`` keeps; None means any."""

    line: str | None = None
    state: AlertState | None = None
    label: Label | None = None
    unlabelled: bool = False
    since: float | None = None
    until: float | None = None
    min_score: float | None = None
    max_score: float | None = None
    min_area: float | None = None  # defect_area; an alert without regions has none
    max_area: float | None = None

    def keeps(self, alert: Alert) -> bool:
        area = alert.defect_area
        if (self.min_area is not None or self.max_area is not None) and area is None:
            return False
        if self.min_area is not None and area is not None and area < self.min_area:
            return False
        if self.max_area is not None and area is not None and area > self.max_area:
            return False
        if self.state is not None and alert.state != self.state:
            return False
        if self.unlabelled and alert.label is not None:
            return False
        if self.label is not None and alert.label != self.label:
            return False
        if self.min_score is not None and alert.score < self.min_score:
            return False
        return not (self.max_score is not None and alert.score > self.max_score)


class AlertStore:
    def __init__(self, client: aioredis.Redis, keys: StreamKeys, retention_s: int) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self.index = keys.alerts_by_time
        self.lines_key = keys.alert_lines
        self.channel = keys.alerts_live
        self.labels_key = keys.labels
        self.region_labels_key = keys.region_labels
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)

    def _key(self, item_id: str) -> str:
        return self.keys.alert(item_id)

    def _events_key(self, item_id: str) -> str:
        return self.keys.alert_events(item_id)

    def _line_index(self, line: str) -> str:
        return self.keys.alerts_of_line(line)

    # --- creation (the consumer) ---------------------------------------------------------

    async def create_many(self, alerts: list[Alert]) -> list[int | Exception]:
        """Create alerts, idempotently: per alert 1 (created), 0 (the item already has one),
        -1 (the id already alerted on another line), or the error that left it unstored. One
        pipeline on a Redis server; on a Redis Cluster, whose pipelines take no scripts,
        concurrent calls (each routed to its keys' slot)."""
        if isinstance(self.client, RedisCluster):
            replies = await asyncio.gather(*(self._create_one(self.client, a) for a in alerts),
                                           return_exceptions=True)  # fmt: skip
            return [r if isinstance(r, Exception) else int(r) for r in replies]
        pipe = self.client.pipeline(transaction=False)
        for alert in alerts:
            await self._create_one(pipe, alert)
        results = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, Exception) else int(r) for r in results]

    async def _create_one(self, client: Any, alert: Alert) -> Any:
        """The create script of one alert, on ``client`` (or queued on a pipeline)."""
        event = AlertEvent(at=alert.created_at, who="system", action="created")
        fields: list[str] = []
        for name in _FIELDS:
            value = getattr(alert, name)
            if name == "regions" and value is not None:
                value = regions_json(value)
            fields += [name, "" if value is None else repr(value) if isinstance(value, float)
                       else str(value)]  # fmt: skip
        fields += ["state", "open", "label", "", "note", ""]
        assert fields[2] == "line"  # the script reads the line value at ARGV[10]
        return await self._create(
            keys=[self._key(alert.item_id), self.index, self._line_index(alert.line),
                  self._events_key(alert.item_id), self.lines_key],
            args=[alert.item_id, repr(alert.ts_scored), self.channel, alert.model_dump_json(),
                  event.model_dump_json(), self.retention_s, *fields],
            client=client,
        )  # fmt: skip

    # --- reading -------------------------------------------------------------------------

    async def get(self, item_id: str) -> Alert:
        alerts = await self._load([item_id])
        if alerts[0] is None:
            raise NotFound(f"no alert for item {item_id!r} (none raised, or past retention)")
        return alerts[0]

    async def _load(self, item_ids: list[str]) -> list[Alert | None]:
        pipe = self.client.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hgetall(self._key(item_id))
            pipe.lrange(self._events_key(item_id), 0, -1)
        raw = await pipe.execute()
        return [_alert(raw[2 * i], raw[2 * i + 1]) for i in range(len(item_ids))]

    async def page(self, flt: AlertFilter, limit: int, cursor: str | None,
                   max_scan: int = 5000) -> AlertPage:  # fmt: skip
        """Newest first by scored time. The cursor is the (time, item id) of the last alert
        returned; at most ``max_scan`` alerts are examined per page, so a selective filter
        over many alerts may return a short page with a cursor to continue."""
        index = self._line_index(flt.line) if flt.line else self.index
        high: Any = "+inf" if flt.until is None else repr(flt.until)
        low: Any = "-inf" if flt.since is None else repr(flt.since)
        after: tuple[float, str] | None = None
        if cursor:
            try:
                ts_text, after_id = cursor.split("|", 1)
                after = (float(ts_text), after_id)
            except ValueError:
                raise Unprocessable(f"cursor {cursor[:40]!r} is not one this API gave") from None
            if flt.until is None or after[0] < flt.until:
                high = repr(after[0])
        out: list[Alert] = []
        scanned, offset, chunk = 0, 0, max(limit * 2, 100)
        last: tuple[float, str] | None = None
        while len(out) < limit and scanned < max_scan:
            rows: Any = await self.client.zrevrangebyscore(
                index, high, low, start=offset, num=chunk, withscores=True
            )
            if not rows:
                last = None
                break
            offset += len(rows)
            ids: list[str] = []
            for member, ts in rows:
                item_id = as_text(member)
                if after is not None and ts == after[0] and item_id >= after[1]:
                    continue  # same time as the cursor: members come in descending id order
                ids.append(item_id)
            for alert in await self._load(ids):
                scanned += 1
                if alert is None:
                    continue  # expired between index and read; the trim removes it
                last = (alert.ts_scored, alert.item_id)
                if flt.keeps(alert):
                    out.append(alert)
                    if len(out) == limit:
                        break
                if scanned >= max_scan:
                    break
            if len(rows) < chunk and len(out) < limit and scanned < max_scan:
                last = None
                break
        next_cursor = f"{last[0]!r}|{last[1]}" if last is not None else None
        return AlertPage(items=out, next_cursor=next_cursor, scanned=scanned)

    async def times_since(self, since: float) -> list[tuple[str, float]]:
        """(line, scored time) of alerts scored at or after ``since``, for summaries."""
        lines: Any = await self.client.smembers(self.lines_key)
        names = sorted(as_text(x) for x in lines)
        pipe = self.client.pipeline(transaction=False)
        for line in names:
            pipe.zrangebyscore(self._line_index(line), repr(since), "+inf", withscores=True)
        out: list[tuple[str, float]] = []
        for line, rows in zip(names, await pipe.execute(), strict=True):
            out += [(line, float(ts)) for _, ts in rows]
        return out

    # --- operator actions ----------------------------------------------------------------

    async def transition(self, item_id: str, action: str, who: str, note: str) -> Alert:
        allowed, new_state = TRANSITIONS[action]
        event = AlertEvent(at=time.time(), who=who, action=action, note=note)  # type: ignore[arg-type]
        found = as_text(
            await self._transition(
                keys=[self._key(item_id), self._events_key(item_id)],
                args=[",".join(allowed), new_state, event.model_dump_json(), note],
            )
        )
        if not found:
            raise NotFound(f"no alert for item {item_id!r} (none raised, or past retention)")
        if found not in allowed:
            raise Conflict(f"alert {item_id} is {found}; it cannot become {new_state}")
        return await self.get(item_id)

    async def label_alert(self, item_id: str, label: Label, who: str, note: str) -> Alert:
        alert = await self.get(item_id)
        now = time.time()
        event = AlertEvent(at=now, who=who, action="labelled", note=note, label=label)
        record = ItemLabel(item_id=item_id, line=alert.line, score=alert.score,
                           model_version=alert.model_version, label=label, who=who, at=now,
                           note=note)  # fmt: skip
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._key(item_id), mapping={"label": label, "note": note})
        pipe.rpush(self._events_key(item_id), event.model_dump_json())
        pipe.hset(self.labels_key, item_id, record.model_dump_json())
        await pipe.execute()
        return await self.get(item_id)

    async def label_region(
        self, item_id: str, region: int, verdict: Verdict, who: str, note: str
    ) -> Alert:
        """An operator's word on one of an alert's regions (its index in ``regions``)."""
        alert = await self.get(item_id)
        regions = alert.regions or []
        if not 0 <= region < len(regions):
            raise Unprocessable(
                f"alert {item_id!r} has {len(regions)} region(s); there is no region {region}"
            )
        now = time.time()
        event = AlertEvent(at=now, who=who, action="region labelled", note=note, region=region,
                           verdict=verdict)  # fmt: skip
        record = RegionLabel(item_id=item_id, region=region, line=alert.line,
                             peak=regions[region].peak, pixel_threshold=alert.pixel_threshold,
                             model_version=alert.model_version, verdict=verdict, who=who,
                             at=now, note=note)  # fmt: skip
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self._events_key(item_id), event.model_dump_json())
        pipe.hset(self.region_labels_key, f"{item_id}#{region}", record.model_dump_json())
        await pipe.execute()
        return await self.get(item_id)

    async def region_labels(self) -> list[RegionLabel]:
        raw: Any = await self.client.hgetall(self.region_labels_key)
        return [RegionLabel.model_validate_json(v) for v in raw.values()]

    async def label_item(self, record: ItemLabel) -> None:
        """Label an item that raised no alert (or whose alert has expired)."""
        await self.client.hset(self.labels_key, record.item_id, record.model_dump_json())

    async def labels(self) -> list[ItemLabel]:
        raw: Any = await self.client.hgetall(self.labels_key)
        return [ItemLabel.model_validate_json(v) for v in raw.values()]

    # --- retention -----------------------------------------------------------------------

    async def trim(self, now: float | None = None) -> int:
        """Drop index entries of alerts past retention (their hashes expire by TTL)."""
        cutoff = repr((now or time.time()) - self.retention_s)
        lines: Any = await self.client.smembers(self.lines_key)
        pipe = self.client.pipeline(transaction=False)
        pipe.zremrangebyscore(self.index, "-inf", f"({cutoff}")
        for line in lines:
            pipe.zremrangebyscore(self._line_index(as_text(line)), "-inf", f"({cutoff}")
        removed = await pipe.execute()
        return int(removed[0])


def _alert(fields: dict[Any, Any], events: list[Any]) -> Alert | None:
    if not fields:
        return None
    f = {as_text(k): as_text(v) for k, v in fields.items()}
    data: dict[str, Any] = {k: f.get(k, "") for k in _FIELDS}
    for k in _FLOATS:
        data[k] = float(data[k])
    data["threshold_version"] = int(data["threshold_version"])
    for k in ("p_value", "complexity", "defect_area", "pixel_threshold"):  # may be absent
        data[k] = float(data[k]) if data[k] else None
    data["regions"] = json.loads(data["regions"]) if data["regions"] else None
    return Alert(
        **data,
        state=f.get("state", "open"),  # type: ignore[arg-type]
        label=f.get("label") or None,  # type: ignore[arg-type]
        note=f.get("note", ""),
        preview_url=f"/v1/items/{data['item_id']}/preview.png",
        events=[AlertEvent.model_validate_json(e) for e in events],
    )
