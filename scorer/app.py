"""The Ray Serve application: replicas score image batches and stream every result to Redis.

A replica loads the model in ``reconfigure`` (its ``user_config``), so pointing the deployment
at a new version swaps the model in place: a batch already running finishes on the model it
started with, and every result names the version that scored it. Two ingestion paths feed the
same ``@serve.batch`` method: ``POST /v1/score`` and the ``{prefix}:frames`` consumer group,
read by a background task in every replica.
"""

import asyncio
import base64
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import redis.asyncio as aioredis
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Response
from ray import serve
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.datastructures import UploadFile

from contract.auth import (
    ANONYMOUS,
    KeyRing,
    Principal,
    Role,
    cross_site,
    digests,
    load_api_keys,
    presented_key,
)
from contract.http import (
    ExploreRequest,
    ExploreResponse,
    Health,
    ItemError,
    ItemPreview,
    PreviewRequest,
    PreviewResponse,
    ScoreResponse,
)
from contract.keys import (
    DEFAULT_LINE,
    FRAMES_GROUP,
    RecordError,
    StreamKeys,
    valid_item_id,
    valid_line,
)
from contract.records import DeadLetterRecord, FrameRecord, ModelRecord
from contract.streams import as_text, connect, ensure_group, entry_ms, read_group
from scorer import explore
from scorer.config import ScorerConfig
from scorer.previews import render
from scorer.publish import PixelThresholds, ScoredBatch, ScoreSink
from vlae.checkpoint import (
    CheckpointError,
    LoadedModel,
    UnmappedLineError,
    load_checkpoint,
    resolve_checkpoint,
)
from vlae.images import (
    InputError,
    Limits,
    decode_array,
    decode_image,
    load_npy,
    source_size,
    split_batch,
)
from vlae.regions import find_regions
from vlae.score import score_images

logger = logging.getLogger("ray.serve")

NPY_TYPES = ("application/x-npy", "application/octet-stream", "application/npy")

# Batches a replica runs at once, and frame reads in flight: one batch's forward pass runs
# while the other's images are decoded or its results published and answered, each forward
# on its share of the replica's CPUs (bench/README.md, "Where the time goes").
CONCURRENT_BATCHES = 2

app = FastAPI(
    title="vlaewatch scorer",
    description="Scores image batches with a VLAE (reconstruction error plus KL divergence, "
    "per unit of input complexity by default) and streams results.",
    version="1",
)


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """Refuses a request body past the replica's ``max_request_bytes`` (``app.state``) while
    it streams in, whatever the request declared: a chunked upload has no Content-Length,
    and before, a multipart one was read whole. 413 with a reason, as JSON."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        # The app serving this request (Serve's copy of ``app`` in the replica).
        limit: int = getattr(scope["app"].state, "max_request_bytes", 64 * 1024 * 1024)
        seen, started = 0, False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        async def watched(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.inner(scope, counted, watched)
        except _BodyTooLarge:
            if started:
                raise
            body = json.dumps({"detail": f"request larger than {limit} bytes"}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})


app.add_middleware(_BodyLimit)


@dataclass
class _Item:
    item_id: str
    line: str
    ts_ingested: float
    image: np.ndarray  # uint8 (C, H, W)
    model: LoadedModel  # its line's, when it was decoded: the one that scores it
    stored: bytes  # kept for previews: the file as received when smaller, else the pixels
    as_file: bool
    want_map: bool = False  # the caller asked for the anomaly map (``?maps=true``)
    source_hw: tuple[int, int] | None = None  # the image as sent, when resized to the model's
    pixel_threshold: float | None = None  # its line's, when it has one: regions are found
    frame_id: str = ""  # its frames-stream entry, when it came that way


def _locate(
    maps: np.ndarray, items: list[_Item]
) -> list[tuple[list[dict[str, Any]], float] | None]:
    """Per item with a pixel threshold: its map's regions above it and their share."""
    return [
        None if it.pixel_threshold is None
        else find_regions(m, it.pixel_threshold, it.source_hw)
        for it, m in zip(items, maps, strict=True)
    ]  # fmt: skip


@dataclass
class _Raw:
    item_id: str
    line: str
    payload: bytes | np.ndarray
    ts_ingested: float
    frame_id: str = ""


def _count_items(chunks: list[list[_Item]]) -> int:
    """Batch size in images, not calls: one call may carry many images."""
    return sum(len(c) for c in chunks)


def _frames_done(
    slots: asyncio.Semaphore, handling: set[asyncio.Task[None]], task: asyncio.Task[None]
) -> None:
    """A frames read is handled (or failed: its entries stay pending for reclaiming)."""
    slots.release()
    handling.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("frames consumer: a read was not handled, left pending: %r",
                       task.exception())  # fmt: skip


def _forward_threads() -> int:
    """Torch threads of one forward pass: the replica's CPUs shared by its concurrent
    batches (threads beyond the cores only contend)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus) // CONCURRENT_BATCHES)


def _new_ids(n: int) -> list[str]:
    """Ids for items sent without one: a random request id and the item's position."""
    base = uuid.uuid4().hex
    return [f"{base}-{i}" for i in range(n)]


def _error(item: _Raw, exc: InputError) -> ItemError:
    return ItemError(item_id=item.item_id, line=item.line, status=exc.status, error=exc.reason)


def _caller(*roles: Role) -> Callable[[Request], Principal]:
    """A dependency admitting callers that hold one of ``roles`` (401 without a known key,
    403 without the role), run before the body is read; any cross-site browser request is
    refused, in open mode too. The key ring is the replica's (``app.state``, set by
    ``reconfigure``)."""

    def dependency(request: Request) -> Principal:
        why = cross_site(request.method, request.headers)
        if why is not None:
            raise HTTPException(403, why)
        ring: KeyRing = request.app.state.keyring
        if not ring:
            return ANONYMOUS
        key = presented_key(request.headers)
        if key is None:
            raise HTTPException(401, "send an API key in the X-API-Key header")
        holder = ring.find(key)
        if holder is None:
            raise HTTPException(401, "unknown API key")
        if not holder.may(*roles):
            raise HTTPException(
                403, f"{holder.name} is a {holder.role}; this needs {' or '.join(roles)}"
            )
        return holder

    return dependency


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a body that cannot be read (not JSON)"},
    401: {"description": "no API key, or an unknown one"},
    403: {"description": "the key's role may not do this, or a cross-site browser request"},
}


@serve.deployment(name="Scorer", health_check_period_s=5)
@serve.ingress(app)
class Scorer:
    """One replica: a model (and a model of their own for the lines of ``line_models``), a
    Redis client, and a frames consumer task."""

    def __init__(self) -> None:
        self._cfg: ScorerConfig | None = None
        self._loaded: LoadedModel | None = None
        self._line_models: dict[str, LoadedModel] = {}
        self._load_error: str | None = None
        self._client: aioredis.Redis | None = None
        self._redis_url: str | None = None  # resolved: never logged, never published
        self._sink: ScoreSink | None = None
        self._pixel: PixelThresholds | None = None
        self._keys = StreamKeys()
        self._consumer: asyncio.Task[None] | None = None
        self._announced: dict[str, str] | None = None  # line -> version last published
        app.state.keyring = KeyRing({})  # empty: open mode (loopback only, service.deploy)

    # --- configuration and model swap ----------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new ``user_config``: load a new model version, resize batches, reconnect."""
        cfg = ScorerConfig.model_validate(user_config)
        old = self._cfg
        app.state.max_request_bytes = cfg.max_request_bytes
        app.state.keyring = KeyRing(
            {**cfg.api_key_digests, **digests(load_api_keys(None, cfg.api_keys_file))}
        )
        import torch

        torch.set_num_threads(cfg.torch_threads or _forward_threads())
        if old is None or (cfg.checkpoint, cfg.model_version) != (
            old.checkpoint,
            old.model_version,
        ):
            try:
                loaded = await asyncio.to_thread(self._load, cfg)
            except CheckpointError as exc:
                if self._loaded is None:
                    raise
                # Keep serving the version we have; health and logs say why nothing changed.
                self._load_error = str(exc)
                logger.error("model swap refused, still serving %s: %s", self.version, exc)
            else:
                self._loaded, self._load_error = loaded, None
                logger.info("serving model %s from %s", loaded.version, loaded.path)
        if old is None or cfg.line_models != old.line_models:
            await self._load_line_models(cfg, {} if old is None else old.line_models)
        url = cfg.resolved_redis_url()
        if old is None or (url, cfg.key_prefix) != (self._redis_url, old.key_prefix):
            if self._client is not None:
                await self._client.aclose()
            self._client, self._redis_url = connect(url), url
            self._keys = StreamKeys(cfg.key_prefix)
        assert self._client is not None
        self._sink = ScoreSink(
            self._client, self._keys, cfg.scores_maxlen, cfg.deadletter_maxlen,
            cfg.retention_s, cfg.scores_hard_maxlen, cfg.max_lines,
        )  # fmt: skip
        self._pixel = PixelThresholds(self._client, self._keys)
        batcher: Any = self._score_chunks  # serve.batch adds these setters at runtime
        batcher.set_max_batch_size(cfg.max_batch_size)
        batcher.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self._cfg = cfg
        self._announced = None
        await self._announce()
        if cfg.consume_frames and self._consumer is None:
            self._consumer = asyncio.create_task(self._consume_frames())
        elif not cfg.consume_frames and self._consumer is not None:
            self._consumer.cancel()
            self._consumer = None

    async def _load_line_models(self, cfg: ScorerConfig, before: dict[str, str]) -> None:
        """Load the models of ``cfg.line_models`` that changed. A line whose new model is
        refused keeps the one it had (health says why); a line new to the map gets its model
        or the configuration fails, as the first model does."""
        models = {line: m for line, m in self._line_models.items() if line in cfg.line_models}
        for line, ref in cfg.line_models.items():
            if before.get(line) == ref and line in models:
                continue
            try:
                models[line] = await asyncio.to_thread(self._load, cfg, ref, None)
            except CheckpointError as exc:
                if line not in models:
                    raise
                self._load_error = f"line {line}: {exc}"
                logger.error("model swap refused for line %s, still serving %s: %s", line,
                             models[line].version, exc)  # fmt: skip
            else:
                logger.info("line %s: serving model %s", line, models[line].version)
        self._line_models = models

    def _model(self, line: str) -> LoadedModel:
        """The model that scores ``line``."""
        loaded = self._line_models.get(line, self._loaded)
        assert loaded is not None
        return loaded

    async def _announce(self) -> None:
        """Publish each served version's card and calibration scores, and which line each
        scores, once per change and connection; retried before the next batch when Redis is
        unavailable now."""
        loaded, sink = self._loaded, self._sink
        if loaded is None or sink is None:
            return
        lines = {"*": loaded.version} | {k: m.version for k, m in self._line_models.items()}
        if self._announced == lines:
            return
        now = time.time()
        by_version = {m.version: m for m in (loaded, *self._line_models.values())}
        records = [
            ModelRecord(model_version=m.version, card=json.dumps(m.card),
                        calibration=m.calibration.to_csv(index=False), loaded_at=now)
            for m in by_version.values()
        ]  # fmt: skip
        try:
            await sink.publish_models(records, lines)
        except (RedisError, OSError) as exc:
            logger.warning("could not announce models %s yet: %s", list(by_version), exc)
            return
        self._announced = lines

    @staticmethod
    def _load(cfg: ScorerConfig, ref: str | None = None, version: str | None = None) -> LoadedModel:
        """The model of ``ref`` (default: ``cfg.checkpoint`` at ``cfg.model_version``)."""
        import ray
        import torch

        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        if ref is None:
            ref, version = cfg.checkpoint, cfg.model_version
        return load_checkpoint(resolve_checkpoint(ref, version), device)

    @property
    def version(self) -> str:
        return self._loaded.version if self._loaded else "none"

    def check_health(self) -> None:
        if self._loaded is None:
            raise RuntimeError("no model loaded")

    async def __del__(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
        if self._client is not None:
            await self._client.aclose()

    # --- scoring -------------------------------------------------------------------------

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.0,
                 max_concurrent_batches=CONCURRENT_BATCHES, batch_size_fn=_count_items)  # fmt: skip
    async def _score_chunks(self, chunks: list[list[_Item]]) -> list[ScoredBatch]:
        """The models' forward passes over every waiting chunk at once (one pass a model: a
        chunk holds the items of one model), and nothing more: the next batch's forward
        starts while the callers of this one publish their results."""
        out: dict[int, ScoredBatch] = {}
        by_model: dict[int, list[int]] = {}
        for i, chunk in enumerate(chunks):
            by_model.setdefault(id(chunk[0].model), []).append(i)
        for picked in by_model.values():
            group = [chunks[i] for i in picked]
            out |= dict(zip(picked, await self._forward(group), strict=True))
        return [out[i] for i in range(len(chunks))]

    @staticmethod
    async def _forward(chunks: list[list[_Item]]) -> list[ScoredBatch]:
        """One model's forward pass over chunks of its items."""
        loaded = chunks[0][0].model
        images = np.stack([it.image for chunk in chunks for it in chunk])
        # A conditional model scores each item under its line's condition (-1: its best).
        conditions = (
            np.array([explore.line_condition(loaded, it.line) for chunk in chunks for it in chunk])
            if loaded.conditions
            else None
        )
        # Maps cost a little more (nothing for the local score): computed for the batch only
        # when one of its callers asks, or a line of it has a pixel threshold.
        items = [it for chunk in chunks for it in chunk]
        maps = any(it.want_map or it.pixel_threshold is not None for it in items)
        scores = await asyncio.to_thread(
            score_images, loaded.model, images, conditions, len(images), maps
        )
        located: list[tuple[list[dict[str, Any]], float] | None] = [None] * len(items)
        if scores.maps is not None and any(it.pixel_threshold is not None for it in items):
            located = await asyncio.to_thread(_locate, scores.maps, items)
        now, out, start = time.time(), [], 0
        for chunk in chunks:
            part = slice(start, start + len(chunk))
            out.append(ScoredBatch(
                item_ids=[it.item_id for it in chunk], lines=[it.line for it in chunk],
                ts_ingested=[it.ts_ingested for it in chunk], shape=images.shape[1:],
                stored=[it.stored for it in chunk], as_file=[it.as_file for it in chunk],
                score=scores.score[part].tolist(), recon=scores.recon[part].tolist(),
                kl=scores.kl[part].tolist(), complexity=scores.complexity[part].tolist(),
                ts_scored=now, model_version=loaded.version,
                maps=([m if it.want_map else None for it, m in zip(chunk, scores.maps[part],
                                                                   strict=True)]
                      if scores.maps is not None else None),
                pixel_threshold=[it.pixel_threshold for it in chunk],
                regions=[x[0] if x else None for x in located[part]],
                defect_area=[x[1] if x else None for x in located[part]],
            ))  # fmt: skip
            start += len(chunk)
        return out

    async def _score_chunk(self, items: list[_Item]) -> ScoredBatch:
        """Score one chunk (batched with other callers' chunks), then publish it: an item is
        in the score stream before anyone is answered."""
        assert self._sink is not None and self._pixel is not None
        await self._announce()
        thresholds = await self._pixel.for_lines(it.line for it in items)
        for it in items:
            it.pixel_threshold = thresholds[it.line]
        scored = await self._score_chunks(items)
        await self._sink.publish(scored)
        if scored.refused:  # an id another line holds, a line past the cap: 409, dead letter
            refused = [(i, it) for i, it in enumerate(items) if i in scored.refused]
            logger.warning("%d item(s) refused: %s", len(refused), scored.refused[refused[0][0]])
            for source in ("http", "frames"):
                mine = [(i, it) for i, it in refused if (it.frame_id != "") == (source == "frames")]
                if mine:
                    await self._dead_letter(
                        [ItemError(item_id=it.item_id, line=it.line, status=409,
                                   error=scored.refused[i]) for i, it in mine],
                        source, [it.frame_id for _, it in mine],
                    )  # fmt: skip
        return scored

    async def _score_items(self, items: list[_Item]) -> list[dict[str, Any]]:
        """Score any number of items: chunks of one model's items, at most one batch each,
        batched with other calls; per-item results (the fields of ``ItemScore``) in order."""
        assert self._cfg is not None
        size = self._cfg.max_batch_size
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

    def _decode(self, raws: list[_Raw], limits: Limits) -> tuple[list[_Item], dict[int, ItemError]]:
        """Validate ids and decode images (to the shape of their line's model); errors by
        position, one per bad item."""
        items: list[_Item] = []
        errors: dict[int, ItemError] = {}
        seen: set[str] = set()
        for i, raw in enumerate(raws):
            try:
                if not valid_item_id(raw.item_id):
                    raise InputError(
                        f"item_id {raw.item_id[:40]!r}: use 1-128 of A-Z a-z 0-9 . _ : -"
                    )
                if raw.item_id in seen:
                    raise InputError(f"item_id {raw.item_id!r} appears twice in this request")
                if not valid_line(raw.line):
                    raise InputError(f"line {raw.line[:40]!r}: use 1-64 of A-Z a-z 0-9 . _ -")
                model = self._model(raw.line)
                try:
                    model.condition_for_line(raw.line)
                except UnmappedLineError as exc:
                    raise InputError(str(exc)) from None
                seen.add(raw.item_id)
                shape = tuple(model.card["image_shape"])
                if isinstance(raw.payload, np.ndarray):
                    image = decode_array(raw.payload, shape, limits)
                else:
                    image = decode_image(raw.payload, shape, limits)
                # Regions are reported in pixels of the image as sent.
                sent = source_size(raw.payload, limits) if limits.resize else None
                # A camera's PNG is a third of its pixels: kept as sent, decoded on reading.
                if isinstance(raw.payload, bytes) and len(raw.payload) < image.nbytes:
                    stored, as_file = raw.payload, True
                else:
                    stored, as_file = image.tobytes(), False
                items.append(_Item(raw.item_id, raw.line, raw.ts_ingested, image, model, stored,
                                   as_file, source_hw=sent, frame_id=raw.frame_id))  # fmt: skip
            except InputError as exc:
                errors[i] = _error(raw, exc)
            except Exception as exc:  # a poison item fails alone, never its whole batch
                logger.warning("item %s: cannot decode: %r", raw.item_id[:40], exc)
                errors[i] = _error(raw, InputError(f"cannot decode: {exc}"[:300], 422))
        return items, errors

    async def _dead_letter(self, errors: list[ItemError], source: str, ids: list[str]) -> None:
        assert self._sink is not None
        now = time.time()
        await self._sink.dead_letter(
            [
                DeadLetterRecord(item_id=e.item_id, line=e.line, source=source,  # type: ignore[arg-type]
                                 reason=e.error, status=e.status, ts=now, frame_id=fid)
                for e, fid in zip(errors, ids, strict=True)
            ]
        )  # fmt: skip

    # --- HTTP ----------------------------------------------------------------------------

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        dependencies=[Depends(_caller("ingest"))],
        responses={
            **AUTH_RESPONSES,
            400: {"description": "no images in the request"},
            413: {"description": "request too large"},
            415: {"description": "unsupported content type"},
            503: {"description": "the score stream (Redis) is unavailable"},
        },
    )
    async def score(
        self,
        request: Request,
        line: Annotated[str, Query(description="camera line id")] = DEFAULT_LINE,
        item_id: Annotated[
            list[str] | None, Query(description="client item ids, one per image")
        ] = None,
        maps: Annotated[
            bool, Query(description="add each item's anomaly_map: base64 NPY, float32 H x W")
        ] = False,
    ) -> Response:
        """Score a batch: multipart files in field ``files`` (PNG/JPEG), or an NPY body
        (uint8 N x H x W[x C]). Each item gets a score or its own error."""
        assert self._cfg is not None and self._loaded is not None
        ts = time.time()
        limits = self._cfg.limits()
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_request_bytes:
            raise HTTPException(413, f"request larger than {limits.max_request_bytes} bytes")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            payloads, line, item_id = await self._read_form(request, limits, line, item_id or [])
        elif ctype in NPY_TYPES:
            body = await request.body()
            try:
                shape = tuple(self._model(line).card["image_shape"])
                # Off the event loop: health and other requests go on meanwhile.
                arrays = await asyncio.to_thread(
                    lambda: split_batch(load_npy(body, limits), shape, limits)
                )
                payloads = list(arrays)
            except InputError as exc:
                raise HTTPException(exc.status, exc.reason) from None
        else:
            raise HTTPException(
                415, "send multipart/form-data (field 'files') or application/x-npy"
            )
        if not payloads:
            raise HTTPException(400, "no images: add one or more files in the field 'files'")
        if len(payloads) > limits.max_items:
            raise HTTPException(413, f"{len(payloads)} images; at most {limits.max_items}")
        if item_id and len(item_id) != len(payloads):
            raise HTTPException(400, f"{len(item_id)} item ids for {len(payloads)} images")
        ids = item_id or _new_ids(len(payloads))
        raws = [_Raw(i, line, p, ts) for i, p in zip(ids, payloads, strict=True)]
        items, errors = await asyncio.to_thread(self._decode, raws, limits)
        for it in items:
            it.want_map = maps
        try:
            if errors:
                await self._dead_letter(list(errors.values()), "http", [""] * len(errors))
            scored = iter(await self._score_items(items)) if items else iter([])
        except (RedisError, OSError) as exc:
            raise HTTPException(503, f"score stream unavailable: {exc}") from None
        results = [
            errors[i].model_dump() if i in errors else next(scored) for i in range(len(raws))
        ]
        # The body of a ScoreResponse, written directly: validating hundreds of per-item
        # models again on the way out cost as much as the work they describe.
        failed = sum(1 for r in results if not r["ok"])
        out = {"model_version": self._model(line).version, "n_scored": len(results) - failed,
               "n_failed": failed, "results": results}  # fmt: skip
        return Response(json.dumps(out, separators=(",", ":")), media_type="application/json")

    async def _read_form(
        self, request: Request, limits: Limits, line: str, item_id: list[str]
    ) -> tuple[list[bytes | np.ndarray], str, list[str]]:
        try:
            form = await request.form(max_files=limits.max_items, max_fields=limits.max_items + 8)
        except _BodyTooLarge:
            raise
        except Exception as exc:  # starlette raises MultiPartException and HTTPException variants
            raise HTTPException(400, f"cannot read multipart form: {exc}") from None
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        payloads: list[bytes | np.ndarray] = []
        for f in files:
            payloads.append(await f.read(limits.max_image_bytes + 1))
        form_line = form.get("line")
        if isinstance(form_line, str) and form_line:
            line = form_line
        form_ids = [v for v in form.getlist("item_id") if isinstance(v, str)]
        if len(form_ids) == 1 and "," in form_ids[0]:
            form_ids = form_ids[0].split(",")
        return payloads, line, form_ids or item_id

    @app.post("/v1/preview", response_model=PreviewResponse, responses=AUTH_RESPONSES,
              dependencies=[Depends(_caller("service", "viewer"))])  # fmt: skip
    async def preview(self, req: PreviewRequest) -> PreviewResponse:
        """PNG previews (base64) of stored items: original, reconstruction, denoised, error map,
        the four side by side as a panel, and the overlay (the original with its map and its
        line's regions outlined, beside the denoised image)."""
        assert self._sink is not None and self._loaded is not None
        out = []
        for item_id in req.item_ids:
            try:
                stored = await self._sink.load_item(item_id)
            except (RedisError, OSError) as exc:
                raise HTTPException(503, f"item store unavailable: {exc}") from None
            if stored is None:
                out.append(ItemPreview(item_id=item_id, ok=False, status=404,
                                       error="no such item: never scored, or expired from "
                                             "retention"))  # fmt: skip
                continue
            loaded = self._model(stored.line)
            if list(stored.image.shape) != list(loaded.card["image_shape"]):
                reason = (f"item shape {list(stored.image.shape)} differs from the model's "
                          f"{loaded.card['image_shape']}")  # fmt: skip
                out.append(ItemPreview(item_id=item_id, ok=False, status=409, error=reason))
                continue
            condition = explore.line_condition(loaded, stored.line)
            assert self._pixel is not None
            pixel = (await self._pixel.for_lines([stored.line]))[stored.line]
            pngs = await asyncio.to_thread(render, loaded, stored.image, req.scale, condition,
                                           pixel)  # fmt: skip
            out.append(
                ItemPreview(
                    item_id=item_id, ok=True, model_version=loaded.version, line=stored.line,
                    images={k: base64.b64encode(v).decode() for k, v in pngs.items()},
                )
            )  # fmt: skip
        return PreviewResponse(previews=out)

    @app.post(
        "/v1/explore",
        response_model=ExploreResponse,
        dependencies=[Depends(_caller("service", "viewer"))],
        responses={
            **AUTH_RESPONSES,
            404: {"description": "an item named is not (or no longer) stored"},
            409: {"description": "the model has no calibration latents, or an item's shape "
                                 "differs from the model's"},
            422: {"description": "a request that does not fit the model"},
        },
    )  # fmt: skip
    async def explore_view(self, req: Annotated[ExploreRequest, Body()]) -> ExploreResponse:
        """A view of the served model's latent space (PNG, base64) and its numbers: latent map,
        nearest normal items, prior samples, interpolation, traversal, compression. A view of
        items is drawn by the model of the first item's line; the others by ``checkpoint``'s."""
        assert self._sink is not None and self._loaded is not None
        loaded, sink = self._loaded, self._sink
        try:
            named = explore.named_items(req)
            first = await sink.load_item(named[0]) if named else None
            if first is not None:
                loaded = self._model(first.line)
            items, lines, flags = await explore.gather(loaded, req, sink.load_item)
            return await asyncio.to_thread(explore.render, loaded, req, items, lines, flags)
        except explore.ExploreError as exc:
            raise HTTPException(exc.status, exc.reason) from None
        except (RedisError, OSError) as exc:
            raise HTTPException(503, f"item store unavailable: {exc}") from None

    @app.get("/v1/health", response_model=Health)
    async def health(self) -> Health:
        """The version this replica serves."""
        assert self._loaded is not None
        return Health(
            status="ok",
            model_version=self._loaded.version,
            variant=str(self._loaded.card.get("variant")),
            image_shape=list(self._loaded.card["image_shape"]),
            consuming_frames=self._consumer is not None and not self._consumer.done(),
            load_error=self._load_error,
            conditions=self._loaded.conditions,
            line_conditions=self._loaded.line_conditions,
            explorer=self._loaded.latents is not None,
            line_models={line: m.version for line, m in self._line_models.items()},
        )

    # --- the frames consumer -------------------------------------------------------------

    async def _consume_frames(self) -> None:
        """Read ``{prefix}:frames`` as one consumer of the group; ack after publishing. Up to
        ``CONCURRENT_BATCHES`` reads are handled at once: the next one is read and decoded
        while the last one is scored. A read whose handling fails stays pending in the group
        and is reclaimed (by this or another replica) after ``reclaim_idle_ms``."""
        ctx = serve.get_replica_context()
        consumer = f"scorer-{ctx.replica_id.unique_id}"
        group_ready, backoff, last_reclaim = False, 0.1, 0.0
        slots = asyncio.Semaphore(CONCURRENT_BATCHES)
        handling: set[asyncio.Task[None]] = set()
        while True:
            cfg, client = self._cfg, self._client
            assert cfg is not None and client is not None
            try:
                await slots.acquire()
                if not group_ready:
                    await ensure_group(client, self._keys.frames, FRAMES_GROUP)
                    group_ready = True
                reclaim = None
                if time.monotonic() - last_reclaim > cfg.reclaim_idle_ms / 2000:
                    reclaim, last_reclaim = cfg.reclaim_idle_ms, time.monotonic()
                read = await read_group(
                    client, self._keys.frames, FRAMES_GROUP, consumer, cfg.max_batch_size,
                    cfg.frames_block_ms, reclaim, cfg.max_deliveries,
                )  # fmt: skip
                if read.exhausted:
                    await self._frames_exhausted(read.exhausted, client)
                entries = read.entries
                backoff = 0.1
            except asyncio.CancelledError:
                for task in handling:
                    task.cancel()
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("frames consumer: Redis unavailable (%s); retrying", exc)
                group_ready, entries = False, []
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except ResponseError as exc:
                logger.warning("frames consumer: %s", exc)
                group_ready, entries = False, []
                await asyncio.sleep(backoff)
            except Exception:
                logger.exception("frames consumer: unexpected error; continuing")
                entries = []
                await asyncio.sleep(1.0)
            if not entries:
                slots.release()
                continue
            task = asyncio.create_task(self._handle_frames(entries, client))
            handling.add(task)
            task.add_done_callback(functools.partial(_frames_done, slots, handling))

    async def _frames_exhausted(
        self, entries: list[tuple[str, dict[Any, Any]]], client: aioredis.Redis
    ) -> None:
        """Frames read ``max_deliveries`` times and never acked (each read failed, or the
        replicas holding them died): dead-lettered with the reason, then acked."""
        assert self._cfg is not None
        errors = []
        for eid, fields in entries:
            item = as_text(fields.get(b"item_id", fields.get("item_id", b""))) or f"frame-{eid}"
            line = as_text(fields.get(b"line", fields.get("line", b""))) or "?"
            errors.append(ItemError(item_id=item[:128], line=line[:64], status=500,
                                    error=f"frame delivered {self._cfg.max_deliveries} times "
                                    "and never scored (each read failed, or its replica "
                                    "died); left the stream"))  # fmt: skip
        logger.warning("frames consumer: %d frame(s) exhausted their deliveries", len(entries))
        await self._dead_letter(errors, "frames", [eid for eid, _ in entries])
        ids = [eid for eid, _ in entries]
        pipe = client.pipeline(transaction=False)
        pipe.xack(self._keys.frames, FRAMES_GROUP, *ids)
        pipe.xdel(self._keys.frames, *ids)
        await pipe.execute()

    async def _handle_frames(
        self, entries: list[tuple[str, dict[Any, Any]]], client: aioredis.Redis
    ) -> None:
        assert self._cfg is not None and self._loaded is not None
        raws: list[_Raw] = []
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
            raws.append(_Raw(rec.item_id or f"frame-{eid}", rec.line, rec.image, ts, eid))
            frame_ids.append(eid)
        items, errors = await asyncio.to_thread(self._decode, raws, self._cfg.limits())
        bad += [(err, frame_ids[i]) for i, err in errors.items()]
        if bad:
            await self._dead_letter([b for b, _ in bad], "frames", [eid for _, eid in bad])
        if items:
            await self._score_items(items)
        # Acked frames are done (their images live on under the item keys for retention):
        # deleting them keeps the frames stream as long as the backlog, not the history.
        ids = [eid for eid, _ in entries]
        pipe = client.pipeline(transaction=False)
        pipe.xack(self._keys.frames, FRAMES_GROUP, *ids)
        pipe.xdel(self._keys.frames, *ids)
        await pipe.execute()


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder for declarative deployments (a RayService's serveConfigV2:
    ``import_path: scorer.app:build_app``). ``args`` are ``ScorerConfig`` fields; the model
    store defaults to ``VLAEWATCH_MODEL_STORE``, and Redis, unless given, is each replica's
    own ``REDIS_URL`` or ``REDIS_URL_FILE``: never copied into the config the dashboard
    shows."""
    import os

    values = dict(args)
    values.setdefault("checkpoint", os.environ.get("VLAEWATCH_MODEL_STORE", ""))
    values.setdefault("key_prefix", os.environ.get("VLAEWATCH_KEY_PREFIX", "vlaewatch"))
    cfg = ScorerConfig.model_validate(values)
    return Scorer.options(user_config=cfg.model_dump()).bind()  # type: ignore[attr-defined]
