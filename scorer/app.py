"""The Ray Serve application: replicas score image batches and stream every result to Redis.

A replica loads its models in ``reconfigure`` (its ``user_config``), so pointing the
deployment at a new version swaps the model in place (``scorer.holder``). Two ingestion
paths feed the same batches: the routes here (``POST /v1/score``) and the ``{prefix}:frames``
consumer group, read by a background task in every replica (``scorer.frames``); both go
through ``scorer.scoring`` to the score stream. What a request passes before its route runs
is in ``scorer.ingress``.
"""

import asyncio
import base64
import json
import time
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Response
from ray import serve
from redis.exceptions import RedisError

from contract.auth import KeyRing, digests, load_api_keys
from contract.http import (
    ExploreRequest,
    ExploreResponse,
    Health,
    ItemPreview,
    PreviewRequest,
    PreviewResponse,
    ScoreResponse,
)
from contract.keys import DEFAULT_LINE
from contract.settings import Settings
from scorer import explore
from scorer.config import ScorerConfig
from scorer.decode import Raw, new_ids
from scorer.frames import FramesConsumer
from scorer.holder import ModelHolder
from scorer.ingress import AUTH_RESPONSES, Admission, BodyLimit, caller, read_payloads
from scorer.previews import render
from scorer.scoring import ScorePath

app = FastAPI(
    title="vlaewatch scorer",
    description="Scores image batches with a VLAE (reconstruction error plus KL divergence, "
    "per unit of input complexity by default) and streams results.",
    version="1",
)
app.add_middleware(BodyLimit)


@serve.deployment(name="Scorer", health_check_period_s=5)
@serve.ingress(app)
class Scorer:
    """One replica: its models, a Redis client, a frames consumer task, and the routes."""

    def __init__(self) -> None:
        self.holder = ModelHolder()
        self.path = ScorePath(self.holder)
        self.frames = FramesConsumer(self.path)
        self.admission = Admission()  # open mode until configured (loopback only, service.deploy)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new ``user_config``: load a new model version, resize batches, reconnect."""
        cfg = ScorerConfig.model_validate(user_config)
        keys = {**cfg.api_key_digests, **digests(load_api_keys(None, cfg.api_keys_file))}
        self.admission = Admission(KeyRing(keys), cfg.max_request_bytes)
        await self.holder.apply(cfg, self.path.cfg)
        await self.path.apply(cfg)
        self.frames.run(cfg.consume_frames)

    def check_health(self) -> None:
        if self.holder.loaded is None:
            raise RuntimeError("no model loaded")

    async def __del__(self) -> None:
        self.frames.run(False)
        await self.path.close()

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        dependencies=[Depends(caller("ingest"))],
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
        assert self.path.cfg is not None and self.holder.loaded is not None
        ts = time.time()
        limits = self.path.cfg.limits()
        payloads, line, ids = await read_payloads(request, limits, line, item_id or [], self.holder)
        ids = ids or new_ids(len(payloads))
        raws = [Raw(i, line, p, ts) for i, p in zip(ids, payloads, strict=True)]
        items, errors = await self.path.decode(raws, limits)
        for it in items:
            it.want_map = maps
        try:
            if errors:
                await self.path.dead_letter(list(errors.values()), "http", [""] * len(errors))
            scored = iter(await self.path.score_items(items)) if items else iter([])
        except (RedisError, OSError) as exc:
            raise HTTPException(503, f"score stream unavailable: {exc}") from None
        results = [
            errors[i].model_dump() if i in errors else next(scored) for i in range(len(raws))
        ]
        # The body of a ScoreResponse, written directly: validating hundreds of per-item
        # models again on the way out cost as much as the work they describe.
        failed = sum(1 for r in results if not r["ok"])
        out = {"model_version": self.holder.model(line).version, "n_scored": len(results) - failed,
               "n_failed": failed, "results": results}  # fmt: skip
        return Response(json.dumps(out, separators=(",", ":")), media_type="application/json")

    @app.post("/v1/preview", response_model=PreviewResponse, responses=AUTH_RESPONSES,
              dependencies=[Depends(caller("service", "viewer"))])  # fmt: skip
    async def preview(self, req: PreviewRequest) -> PreviewResponse:
        """PNG previews (base64) of stored items: original, reconstruction, denoised, error map,
        the four side by side as a panel, and the overlay (the original with its map and its
        line's regions outlined, beside the denoised image)."""
        assert self.path.sink is not None and self.holder.loaded is not None
        return PreviewResponse(previews=[await self._preview(i, req.scale) for i in req.item_ids])

    async def _preview(self, item_id: str, scale: int) -> ItemPreview:
        assert self.path.sink is not None and self.path.pixel is not None
        try:
            stored = await self.path.sink.load_item(item_id)
        except (RedisError, OSError) as exc:
            raise HTTPException(503, f"item store unavailable: {exc}") from None
        if stored is None:
            return ItemPreview(item_id=item_id, ok=False, status=404,
                               error="no such item: never scored, or expired from "
                                     "retention")  # fmt: skip
        loaded = self.holder.model(stored.line)
        if stored.image.shape != loaded.card.image_shape:
            reason = (f"item shape {list(stored.image.shape)} differs from the model's "
                      f"{list(loaded.card.image_shape)}")  # fmt: skip
            return ItemPreview(item_id=item_id, ok=False, status=409, error=reason)
        condition = explore.line_condition(loaded, stored.line)
        pixel = (await self.path.pixel.for_lines([stored.line]))[stored.line]
        pngs = await asyncio.to_thread(render, loaded, stored.image, scale, condition, pixel)
        return ItemPreview(
            item_id=item_id, ok=True, model_version=loaded.version, line=stored.line,
            images={k: base64.b64encode(v).decode() for k, v in pngs.items()},
        )  # fmt: skip

    @app.post(
        "/v1/explore",
        response_model=ExploreResponse,
        dependencies=[Depends(caller("service", "viewer"))],
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
        assert self.path.sink is not None and self.holder.loaded is not None
        loaded, sink = self.holder.loaded, self.path.sink
        try:
            named = explore.named_items(req)
            first = await sink.load_item(named[0]) if named else None
            if first is not None:
                loaded = self.holder.model(first.line)
            items, lines, flags = await explore.gather(loaded, req, sink.load_item)
            return await asyncio.to_thread(explore.render, loaded, req, items, lines, flags)
        except explore.ExploreError as exc:
            raise HTTPException(exc.status, exc.reason) from None
        except (RedisError, OSError) as exc:
            raise HTTPException(503, f"item store unavailable: {exc}") from None

    @app.get("/v1/health", response_model=Health)
    async def health(self) -> Health:
        """The version this replica serves."""
        loaded = self.holder.loaded
        assert loaded is not None
        return Health(
            status="ok",
            model_version=loaded.version,
            variant=loaded.card.variant,
            image_shape=list(loaded.card.image_shape),
            consuming_frames=self.frames.running,
            load_error=self.holder.load_error,
            conditions=loaded.conditions,
            line_conditions=loaded.line_conditions,
            explorer=loaded.latents is not None,
            line_models={line: m.version for line, m in self.holder.line_models.items()},
        )


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder for declarative deployments (a RayService's serveConfigV2:
    ``import_path: scorer.app:build_app``). ``args`` are ``ScorerConfig`` fields; the others
    come from the environment's ``Settings`` (``ScorerConfig.from_settings``), and Redis,
    unless given, is each replica's own ``REDIS_URL`` or ``REDIS_URL_FILE``: never copied
    into the config the dashboard shows."""
    cfg = ScorerConfig.from_settings(Settings(), **args)
    return Scorer.options(user_config=cfg.model_dump()).bind()  # type: ignore[attr-defined]
