"""Consume ``{prefix}:scores`` as one member of a consumer group: each entry is compared with
its line's threshold, an alert is stored when it is above, and only then is the entry acked.

Delivery is at-least-once: entries a dead consumer left pending are taken over with
XAUTOCLAIM after ``reclaim_idle_ms``, and alert creation is idempotent by item id, so a
redelivered entry never makes a second alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.alerts import AlertStore
from api.annotations import Annotator
from api.calibrate import conformal_threshold, false_alarm_rate, p_values, supported_alpha
from api.config import ApiConfig
from api.metrics import Metrics
from api.schemas.alerts import Alert
from api.schemas.thresholds import FalseAlarmRateOut, Threshold
from api.served_models import ModelCache
from api.thresholds import ThresholdStore, effective
from contract.keys import DEFAULT_LINE, RecordError, StreamKeys
from contract.records import DeadLetterRecord, ScoreRecord
from contract.streams import (
    as_text,
    connect,
    dead_letter,
    ensure_group,
    read_group,
)

logger = logging.getLogger("vlaewatch.api")
DEADLETTER_MAXLEN = 10_000
# How often a stopping consumer thread is cancelled again (``ConsumerThread.stop``).
RECANCEL_S = 0.5


def _letter(eid: str, fields: dict[Any, Any], reason: str, status: int) -> DeadLetterRecord:
    """A dead letter for a score entry, named by its item id where the entry has one."""
    item = fields.get(b"item_id", fields.get("item_id"))
    line = fields.get(b"line", fields.get("line"))
    try:
        item_id = as_text(item)[:128] if item else f"score-{eid}"
        line_id = as_text(line)[:64] if line else "?"
    except UnicodeDecodeError:
        item_id, line_id = f"score-{eid}", "?"
    return DeadLetterRecord(item_id=item_id, line=line_id, source="scores", reason=reason,
                            status=status, ts=time.time(), frame_id=eid)  # fmt: skip


class ScoreConsumer:
    """The background task of one API process."""

    def __init__(
        self,
        client: aioredis.Redis,
        cfg: ApiConfig,
        thresholds: ThresholdStore,
        alerts: AlertStore,
        models: ModelCache,
        metrics: Metrics,
        annotator: Annotator,
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.keys = StreamKeys(cfg.key_prefix)
        self.thresholds = thresholds
        self.alerts = alerts
        self.models = models
        self.metrics = metrics
        self.annotator = annotator
        self.versions_seen: set[str] = set()
        self.running = False
        self.last_error: str | None = None
        # entry id -> (why its alert is not stored yet, when): forgotten once the entry must
        # have been stored or dead-lettered, here or by another consumer
        self.unstored: dict[str, tuple[str, float]] = {}

    async def run(self) -> None:
        """Consume until cancelled; Redis outages are waited out with backoff."""
        group_ready, backoff = False, 0.1
        last_reclaim = last_trim = 0.0
        self.running = True
        try:
            while True:
                try:
                    if not group_ready:
                        await ensure_group(self.client, self.keys.scores, self.cfg.scores_group)
                        await self._prepare()
                        group_ready = True
                    reclaim = None
                    if time.monotonic() - last_reclaim > self.cfg.reclaim_idle_ms / 2000:
                        reclaim, last_reclaim = self.cfg.reclaim_idle_ms, time.monotonic()
                    read = await read_group(
                        self.client, self.keys.scores, self.cfg.scores_group, self.cfg.consumer,
                        self.cfg.batch_size, self.cfg.block_ms, reclaim,
                        self.cfg.max_deliveries,
                    )  # fmt: skip
                    if read.entries or read.exhausted:
                        await self.handle(read.entries, read.exhausted)
                    if time.monotonic() - last_trim > 60:
                        await self.alerts.trim()
                        last_trim = time.monotonic()
                    backoff, self.last_error = 0.1, None
                except asyncio.CancelledError:
                    raise
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    self.last_error = f"Redis unavailable: {exc}"
                    logger.warning("score consumer: %s; retrying", self.last_error)
                    group_ready = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except ResponseError as exc:  # e.g. NOGROUP after the stream was deleted
                    self.last_error = str(exc)
                    logger.warning("score consumer: %s", exc)
                    group_ready = False
                    await asyncio.sleep(backoff)
                except Exception as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.exception("score consumer: unexpected error; continuing")
                    await asyncio.sleep(1.0)
        finally:
            self.running = False

    async def handle(
        self,
        entries: list[tuple[str, dict[Any, Any]]],
        exhausted: list[tuple[str, dict[Any, Any]]] | None = None,
    ) -> None:
        """Apply one batch: alerts for entries above threshold, dead letters for malformed
        entries and for ``exhausted`` ones (delivered ``max_deliveries`` times, never stored),
        then ack exactly the entries whose effect is stored. An entry whose alert could not be
        stored (a Redis error: out of memory, a key of the wrong type) stays pending, and is
        delivered again after ``reclaim_idle_ms``."""
        records, bad, done = self._parse(entries, exhausted or [])
        for version in {r.model_version for _, r in records} - self.versions_seen:
            await self._model_seen(version)
        current = await self.thresholds.current()
        if DEFAULT_LINE not in current and records and self.cfg.initial_fpr > 0:
            await self._initial_default(records[0][1].model_version)
            current = await self.thresholds.current()
        alerts: list[tuple[str, Alert]] = []
        now = time.time()
        for eid, rec in records:
            self._observe(rec)
            th = effective(current, rec.line)
            if th is None or not rec.score > th.value:
                done.append(eid)
                continue
            alerts.append((eid, await self._alert(rec, th, now)))
        if alerts:
            await self._store(alerts, done, bad)
        if bad:
            await dead_letter(self.client, self.keys, bad, DEADLETTER_MAXLEN)
            self.metrics.deadletters.inc(len(bad))
        if done:
            await self.client.xack(self.keys.scores, self.cfg.scores_group, *done)

    def _parse(
        self,
        entries: list[tuple[str, dict[Any, Any]]],
        exhausted: list[tuple[str, dict[Any, Any]]],
    ) -> tuple[list[tuple[str, ScoreRecord]], list[DeadLetterRecord], list[str]]:
        """The batch's score records, the dead letters of malformed and exhausted entries,
        and the ids of those (done once their letters are written)."""
        records: list[tuple[str, ScoreRecord]] = []
        bad: list[DeadLetterRecord] = []
        done: list[str] = []
        for eid, fields in entries:
            try:
                records.append((eid, ScoreRecord.from_fields(fields)))
            except RecordError as exc:
                bad.append(_letter(eid, fields, f"bad score entry: {exc}", 422))
                done.append(eid)
        for eid, fields in exhausted:
            why = self.unstored.pop(eid, ("its alert was never stored", 0.0))[0]
            bad.append(_letter(eid, fields, f"delivered {self.cfg.max_deliveries} times and "
                                            f"not stored: {why}", 500))  # fmt: skip
            done.append(eid)
        return records, bad, done

    def _observe(self, rec: ScoreRecord) -> None:
        """Every score, alerting or not, in the line's metrics."""
        self.metrics.items.labels(rec.line).inc()
        self.metrics.scores.labels(rec.line).observe(rec.score)
        if rec.defect_area is not None:
            self.metrics.defect_area.labels(rec.line).observe(rec.defect_area)

    async def _alert(self, rec: ScoreRecord, th: Threshold, now: float) -> Alert:
        """The alert of a score above ``th``, with its conformal p-value where the model's
        calibration scores are known."""
        model = await self.models.get(rec.model_version)
        p = None
        if model is not None:
            p = float(p_values(model.calibration, np.array([rec.score]))[0])
        return Alert(
            item_id=rec.item_id, line=rec.line, score=rec.score, recon=rec.recon,
            kl=rec.kl, complexity=rec.complexity, threshold=th.value,
            threshold_version=th.version, p_value=p,
            model_version=rec.model_version, ts_ingested=rec.ts_ingested,
            ts_scored=rec.ts_scored, created_at=now, state="open",
            preview_url=f"/v1/items/{rec.item_id}/preview.png", regions=rec.regions,
            defect_area=rec.defect_area, pixel_threshold=rec.pixel_threshold,
        )  # fmt: skip

    async def _store(
        self, alerts: list[tuple[str, Alert]], done: list[str], bad: list[DeadLetterRecord]
    ) -> None:
        """Create the alerts in one round; an entry whose alert is stored (or already was)
        joins ``done``, one whose item id alerted on another line also joins ``bad``."""
        results = await self.alerts.create_many([alert for _, alert in alerts])
        for (eid, alert), created in zip(alerts, results, strict=True):
            if isinstance(created, Exception):  # nothing of it stored: retried later
                self._failed(eid, f"{type(created).__name__}: {created}")
                continue
            done.append(eid)
            self.unstored.pop(eid, None)
            if created == -1:
                bad.append(DeadLetterRecord(
                    item_id=alert.item_id, line=alert.line, source="scores", status=409,
                    reason=f"item id {alert.item_id!r} already alerted on another line; "
                    "item ids are unique across lines", ts=time.time(), frame_id=eid,
                ))  # fmt: skip
            elif created == 1:
                self.metrics.alerts.labels(alert.line).inc()
                if alert.regions is not None:
                    self.metrics.alert_regions.labels(alert.line).observe(len(alert.regions))

    def _failed(self, eid: str, why: str) -> None:
        """An entry whose alert was not stored: kept for the dead letter's reason should it
        exhaust its deliveries here (bounded: reasons are a courtesy, the entry is what counts)."""
        if len(self.unstored) > 10_000:
            self.unstored.clear()
        self.unstored[eid] = (why, time.monotonic())
        logger.warning("score consumer: alert of entry %s not stored, left pending: %s", eid, why)

    def problem(self) -> str | None:
        """What health reports: the loop's last error, else alerts waiting to be stored."""
        horizon = time.monotonic() - 2 * self.cfg.max_deliveries * self.cfg.reclaim_idle_ms / 1000
        for eid in [e for e, (_, at) in self.unstored.items() if at < horizon]:
            del self.unstored[eid]
        if self.last_error or not self.unstored:
            return self.last_error
        last = next(reversed(self.unstored.values()))[0]
        return f"{len(self.unstored)} alert(s) not stored, their entries pending: {last}"

    async def _prepare(self) -> None:
        """Before the first entry: the newest served model's record, and the initial default
        threshold from it, so the first scores are not delayed by setting them up."""
        if self.cfg.initial_fpr <= 0 or DEFAULT_LINE in await self.thresholds.current():
            return
        newest = await self.models.get()
        if newest is not None:
            await self._initial_default(newest.version)

    async def _model_seen(self, version: str) -> None:
        """The first score of a model version marks a swap on the dashboards, once across all
        API processes (SET NX)."""
        self.versions_seen.add(version)
        key = self.keys.model_annotated(version)
        if await self.client.set(key, "1", nx=True):
            await self.annotator.note(f"model {version} scoring", ["model"])

    async def _initial_default(self, model_version: str) -> None:
        """Without any threshold, alerts wait for an operator; unless configured otherwise,
        the first score sets the default from data: the conformal threshold at
        ``initial_fpr`` on the model's calibration scores."""
        model = await self.models.get(model_version)
        if model is None:
            return
        n = len(model.calibration)
        if n == 0:
            return
        alpha = supported_alpha(self.cfg.initial_fpr, n)
        value = conformal_threshold(model.calibration, alpha)
        far = false_alarm_rate(model.calibration, value)
        made = await self.thresholds.set(
            DEFAULT_LINE, value, "fpr", {"alpha": alpha, "confidence": far.confidence},
            who="system", why="initial default (no threshold was set)",
            model_version=model.version,
            false_alarm_rate=FalseAlarmRateOut(**far.__dict__), only_if_absent=True,
        )  # fmt: skip
        if made is not None:
            logger.info("initial default threshold %.4g (fpr %.3g on %s)", value, alpha,
                        model.version)  # fmt: skip


class ConsumerThread:
    """The score consumer on a thread of its own, with its own event loop and Redis
    connections: no request handler, however heavy its read, holds up the alerts, and the
    consumer holds up no request. Health reads its state (``running``, ``unstored``,
    ``problem``) across the thread: plain values, read whole."""

    def __init__(self, cfg: ApiConfig, metrics: Metrics, annotator: Annotator) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.annotator = annotator
        self.consumer: ScoreConsumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="score-consumer", daemon=True)

    def start(self) -> ConsumerThread:
        self._thread.start()
        self._ready.wait(30)
        return self

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        cfg = self.cfg
        client = connect(cfg.redis_url)
        keys = StreamKeys(cfg.key_prefix)
        self.consumer = ScoreConsumer(
            client, cfg, ThresholdStore(client, cfg.key_prefix),
            AlertStore(client, keys, cfg.alert_retention_s), ModelCache(client, keys),
            self.metrics, self.annotator,
        )  # fmt: skip
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._ready.set()
        try:
            await self.consumer.run()
        except asyncio.CancelledError:
            pass
        finally:
            await client.aclose()

    def stop(self, timeout: float = 10) -> bool:
        """Cancel the consumer (a batch it was handling stays pending, reclaimed later), and
        cancel it again every ``RECANCEL_S`` until its thread ends: a cancellation can be lost
        in a library's await, and one lost cancel must not hold a shutdown for the whole
        ``timeout`` (the API's stop waited 30 s and was killed). False if the thread was still
        running after ``timeout``; it is a daemon and ends with the process."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            loop, task = self._loop, self._task
            if loop is not None and task is not None:
                with contextlib.suppress(RuntimeError):  # its loop has closed: it is ending
                    loop.call_soon_threadsafe(task.cancel)
            self._thread.join(min(RECANCEL_S, max(deadline - time.monotonic(), 0)))
        if self._thread.is_alive():
            logger.warning("score consumer: still running %.0f s after stop; leaving it", timeout)
            return False
        return True

    @property
    def running(self) -> bool:
        return self.consumer is not None and self.consumer.running

    @property
    def unstored(self) -> dict[str, tuple[str, float]]:
        return self.consumer.unstored if self.consumer is not None else {}

    def problem(self) -> str | None:
        return self.consumer.problem() if self.consumer is not None else None
