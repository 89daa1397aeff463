"""``/v1/explore/*`` and ``/v1/items/{item_id}/neighbours``: the served model's latent space
(the seed deck's tools) as PNGs, and their numbers as JSON where numbers matter.

The scorer renders each view (``POST /v1/explore``, the replica that holds the model); the
answer is cached in Redis under the request and the newest served model version, for a time
that suits the view (a latent map of recent items ages fast)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
import pandas as pd
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.alerts import AlertFilter
from api.deps import Services, ServicesDep, Viewer
from api.errors import Conflict, NotFound, Unavailable, Unprocessable, Upstream
from api.schemas import ErrorBody, example
from contract.http import (
    MAX_EXPLORE_STEPS,
    MAX_MAP_ITEMS,
    CompressRequest,
    ExploreResponse,
    InterpolateRequest,
    LatentMapRequest,
    MapItem,
    NeighboursRequest,
    SampleRequest,
    TraverseRequest,
)
from contract.keys import ID_PATTERN, LINE_PATTERN
from contract.streams import as_text

MAP_CACHE_S = 15  # the latent map shows recent items: a short cache
ITEM_CACHE_S = 60  # views of items: no longer than items are likely to stay in retention


@dataclass(frozen=True)
class View:
    """A view the scorer rendered: the PNG, its numbers, and whether the cache answered."""

    png: bytes
    data: dict[str, Any]
    model_version: str
    width: int
    height: int
    cached: bool


class ExploreClient:
    """Asks the scorer for a view; caches the answer."""

    def __init__(self, services: Services) -> None:
        self.services = services
        url = services.cfg.scorer_url
        self.scorer_url = url.rstrip("/") if url else None

    async def get(self, req: BaseModel, cache_s: int) -> View:
        """The view ``req`` asks for (a scorer explore request)."""
        services = self.services
        newest = await services.models.get()
        version = newest.version if newest else "none"
        body = req.model_dump(mode="json")
        digest = hashlib.sha256(json.dumps([body, version], sort_keys=True).encode()).hexdigest()
        key = services.keys.explore_cache(digest[:32])
        cache_s = min(cache_s, services.cfg.preview_cache_s)
        if cache_s > 0:
            raw: Any = await services.client.hgetall(key)
            if raw:
                fields = {as_text(k): v for k, v in raw.items()}
                return View(fields["png"], json.loads(fields["data"]),
                            as_text(fields["model_version"]), int(fields["width"]),
                            int(fields["height"]), cached=True)  # fmt: skip
        answer = await self._render(body)
        png = base64.b64decode(answer.png)
        if cache_s > 0:
            pipe = services.client.pipeline(transaction=True)
            mapping: Any = {"png": png, "data": json.dumps(answer.data),
                            "model_version": answer.model_version, "width": answer.width,
                            "height": answer.height}  # fmt: skip
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, cache_s)
            await pipe.execute()
        return View(png, answer.data, answer.model_version, answer.width, answer.height, False)

    async def _render(self, body: dict[str, Any]) -> ExploreResponse:
        if self.scorer_url is None:
            raise Unavailable("no scorer URL configured (VLAEWATCH_SCORER_URL): no explorer")
        try:
            resp = await self.services.http.post(f"{self.scorer_url}/v1/explore", json=body)
        except httpx.TimeoutException:
            raise Upstream(f"the scorer at {self.scorer_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"the scorer at {self.scorer_url} is unreachable: {exc}") from None
        if resp.status_code == 200:
            return ExploreResponse.model_validate(resp.json())
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = None
        reason = detail if isinstance(detail, str) else f"{detail or resp.text[:300]}"
        errors = {404: NotFound, 409: Conflict, 422: Unprocessable, 503: Unavailable}
        raise errors.get(resp.status_code, Upstream)(f"explorer: {reason}")


async def map_request(
    services: Services, line: str | None, window_s: float, limit: int, **view: Any
) -> LatentMapRequest:
    """The latent map's overlay: the newest ``limit`` items scored in the window (on one
    line, or all), those that raised an alert flagged."""
    scores = await services.window.read(window_s)
    if line is not None:
        scores = scores[scores["line"] == line]
    scores = scores.drop_duplicates("item_id").head(min(limit, MAX_MAP_ITEMS))
    since = time.time() - window_s
    page = await services.alerts.page(AlertFilter(line=line, since=since), limit=limit,
                                      cursor=None)  # fmt: skip
    flagged = {a.item_id for a in page.items}
    ids = list(scores["item_id"]) if isinstance(scores, pd.DataFrame) else []
    items = [MapItem(item_id=i, flagged=i in flagged) for i in ids]
    missing = [MapItem(item_id=i, flagged=True) for i in flagged if i not in set(ids)]
    return LatentMapRequest(items=(items + missing)[:MAX_MAP_ITEMS], **view)


class ExploreView(BaseModel):
    """The numbers of a latent-space view (the PNG endpoint beside it draws them)."""

    model_config = example(
        {"kind": "neighbours", "model_version": "c96dc36985a2a968", "width": 200, "height": 29,
         "cached": False, "data": {"item": "cam1-000123", "k": 6,
                                   "latent_distance": [1.92, 2.01, 2.05, 2.1, 2.2, 2.3],
                                   "distance_from_normal": 2.7}}
    )  # fmt: skip

    kind: str
    model_version: str
    width: int = Field(description="of the PNG view")
    height: int
    cached: bool
    data: dict[str, Any]


router = APIRouter(tags=["explore"])
ItemPath = Annotated[str, Path(pattern=ID_PATTERN, examples=["cam1-000123"])]
ItemQuery = Annotated[str, Query(pattern=ID_PATTERN)]
Scale = Annotated[int, Query(ge=1, le=16, description="nearest-neighbour upscaling")]
Method = Literal["auto", "tsne", "pca"]
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody} for s in (401, 403, 404, 409, 422, 502, 503)
}
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "a PNG image"},
    **ERRORS,
}


def _png(view: View) -> Response:
    return Response(view.png, media_type="image/png", headers={
        "X-Model-Version": view.model_version, "X-Cache": "hit" if view.cached else "miss",
        "Cache-Control": "private, max-age=15"})  # fmt: skip


def _json(kind: str, view: View) -> ExploreView:
    return ExploreView(kind=kind, model_version=view.model_version, width=view.width,
                       height=view.height, cached=view.cached, data=view.data)  # fmt: skip


async def _map(
    services: ServicesDep, line: str | None, window_s: float | None, limit: int, method: Method,
    width: int, height: int,
) -> View:  # fmt: skip
    window = window_s if window_s is not None else services.cfg.window_s
    req = await map_request(services, line, window, limit, method=method, width=width,
                            height=height)  # fmt: skip
    return await ExploreClient(services).get(req, MAP_CACHE_S)


LineQ = Annotated[str | None, Query(pattern=LINE_PATTERN, description="one line (default all)")]
WindowQ = Annotated[float | None, Query(gt=0, le=7 * 86400, description="recent items: seconds")]
LimitQ = Annotated[int, Query(ge=0, le=MAX_MAP_ITEMS, description="newest items overlaid")]
MethodQ = Annotated[Method, Query(description="auto: t-SNE up to 3,000 points, else PCA")]
WidthQ = Annotated[int, Query(ge=240, le=1600)]
HeightQ = Annotated[int, Query(ge=180, le=1200)]


@router.get("/v1/explore/latent-map.png", response_class=Response, responses=PNG)
async def latent_map_png(
    services: ServicesDep, _: Viewer, line: LineQ = None, window_s: WindowQ = None,
    limit: LimitQ = 500, method: MethodQ = "auto", width: WidthQ = 640, height: HeightQ = 480,
) -> Response:  # fmt: skip
    """The normal calibration items' latent means in 2-D (grey), recent items overlaid by
    line, those that raised an alert ringed in red: how far from normal an alert sits."""
    return _png(await _map(services, line, window_s, limit, method, width, height))


@router.get("/v1/explore/latent-map", response_model=ExploreView, responses=ERRORS)
async def latent_map_json(
    services: ServicesDep, _: Viewer, line: LineQ = None, window_s: WindowQ = None,
    limit: LimitQ = 500, method: MethodQ = "auto", width: WidthQ = 640, height: HeightQ = 480,
) -> ExploreView:  # fmt: skip
    """The latent map's numbers: per item its map position, its standardised latent distance
    from the normal centroid and the share of normal items closer; per line a summary."""
    view = await _map(services, line, window_s, limit, method, width, height)
    return _json("latent_map", view)


async def _neighbours(services: ServicesDep, item_id: str, k: int, scale: int) -> View:
    req = NeighboursRequest(item_id=item_id, k=k, scale=scale)
    return await ExploreClient(services).get(req, ITEM_CACHE_S)


@router.get("/v1/items/{item_id}/neighbours.png", response_class=Response,
            responses=PNG)  # fmt: skip
async def neighbours_png(
    item_id: ItemPath, services: ServicesDep, _: Viewer,
    k: Annotated[int, Query(ge=1, le=32)] = 6, scale: Scale = 3,
) -> Response:  # fmt: skip
    """The item, then its ``k`` nearest normal calibration items in latent space: what normal
    looks like next to it."""
    return _png(await _neighbours(services, item_id, k, scale))


@router.get("/v1/items/{item_id}/neighbours", response_model=ExploreView, responses=ERRORS)
async def neighbours_json(
    item_id: ItemPath, services: ServicesDep, _: Viewer,
    k: Annotated[int, Query(ge=1, le=32)] = 6,
) -> ExploreView:  # fmt: skip
    """The nearest normal items' latent distances, and the item's distance from normal."""
    return _json("neighbours", await _neighbours(services, item_id, k, 3))


@router.get("/v1/explore/samples.png", response_class=Response, responses=PNG)
async def samples_png(
    services: ServicesDep, _: Viewer, n: Annotated[int, Query(ge=1, le=64)] = 16,
    condition: Annotated[str | None, Query(max_length=64)] = None,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0, scale: Scale = 2,
) -> Response:  # fmt: skip
    """Images decoded from the prior; a conditional model: a row per condition (or one)."""
    req = SampleRequest(n=n, condition=condition, seed=seed, scale=scale)
    return _png(await ExploreClient(services).get(req, services.cfg.preview_cache_s))


@router.get("/v1/explore/interpolate.png", response_class=Response,
            responses=PNG)  # fmt: skip
async def interpolate_png(
    services: ServicesDep, _: Viewer, a: ItemQuery, b: ItemQuery,
    steps: Annotated[int, Query(ge=2, le=MAX_EXPLORE_STEPS)] = 10, scale: Scale = 2,
) -> Response:  # fmt: skip
    """Item ``a``, the decoded straight latent path from ``a`` to ``b``, item ``b``."""
    req = InterpolateRequest(item_a=a, item_b=b, steps=steps, scale=scale)
    return _png(await ExploreClient(services).get(req, ITEM_CACHE_S))


@router.get("/v1/explore/traverse.png", response_class=Response, responses=PNG)
async def traverse_png(
    services: ServicesDep, _: Viewer,
    item_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    dims: Annotated[str | None, Query(pattern=r"^\d{1,4}(,\d{1,4}){0,15}$",
                                      description="comma-separated latent dimensions")] = None,
    n_dims: Annotated[int, Query(ge=1, le=16)] = 4,
    steps: Annotated[int, Query(ge=2, le=MAX_EXPLORE_STEPS)] = 9,
    span: Annotated[float, Query(gt=0, le=10)] = 3.0,
    condition: Annotated[str | None, Query(max_length=64)] = None, scale: Scale = 2,
) -> Response:  # fmt: skip
    """A row per latent dimension (the most used ones by default), moved from -span to
    +span standard deviations of the normal items around an item (or the normal centroid)."""
    dim_list = [int(d) for d in dims.split(",")] if dims else None
    req = TraverseRequest(item_id=item_id, dims=dim_list, n_dims=n_dims, steps=steps,
                          span=span, condition=condition, scale=scale)  # fmt: skip
    cache = ITEM_CACHE_S if item_id else services.cfg.preview_cache_s
    return _png(await ExploreClient(services).get(req, cache))


def _compress_request(item_id: list[str], dtype: str, scale: int) -> CompressRequest:
    if not item_id:
        raise Unprocessable("give one or more item_id")
    if len(item_id) > 64:
        raise Unprocessable(f"{len(item_id)} items; at most 64")
    return CompressRequest.model_validate({"item_ids": item_id, "dtype": dtype, "scale": scale})


ItemIds = Annotated[list[str], Query(description="items still in retention (1-64)")]
Dtype = Annotated[Literal["float32", "float16"], Query(description="how codes are stored")]


@router.get("/v1/explore/compress", response_model=ExploreView, responses=ERRORS)
async def compress_json(
    services: ServicesDep, _: Viewer, item_id: ItemIds, dtype: Dtype = "float32"
) -> ExploreView:
    """Items encoded to their latent code and decoded back: compression ratio (input bytes
    over code bytes) and reconstruction error (MSE, PSNR), overall and per item."""
    req = _compress_request(item_id, dtype, 2)
    return _json("compress", await ExploreClient(services).get(req, ITEM_CACHE_S))


@router.get("/v1/explore/compress.png", response_class=Response, responses=PNG)
async def compress_png(
    services: ServicesDep, _: Viewer, item_id: ItemIds, dtype: Dtype = "float32",
    scale: Scale = 2,
) -> Response:  # fmt: skip
    """The items (top row) above their decoded latent codes (bottom row)."""
    req = _compress_request(item_id, dtype, scale)
    return _png(await ExploreClient(services).get(req, ITEM_CACHE_S))
