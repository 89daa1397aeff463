"""The scorer's contracts: Redis stream entries (DESIGN.md §4) and the HTTP request/response
models. Defined once here; the API imports them."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    field_validator,
)

ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
LINE_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"
DEFAULT_LINE = "default"
PREVIEW_KINDS = ("original", "reconstruction", "denoised", "error", "panel", "overlay")


class RecordError(ValueError):
    """A stream entry with missing or malformed fields."""


def valid_item_id(text: str) -> bool:
    return re.fullmatch(ID_PATTERN, text) is not None


def valid_line(text: str) -> bool:
    return re.fullmatch(LINE_PATTERN, text) is not None


@dataclass(frozen=True)
class StreamKeys:
    """Every Redis key of the layout, under a configurable prefix (so several deployments can
    share one Redis), defined here and nowhere else. Each family that ends in an id or a line
    has a name of its own (``alert:``, ``alert_events:``...): an id may hold ``:``, so no
    family may be another's name plus a suffix."""

    prefix: str = "vlaewatch"

    @property
    def frames(self) -> str:
        return f"{self.prefix}:frames"

    @property
    def scores(self) -> str:
        return f"{self.prefix}:scores"

    @property
    def lines(self) -> str:
        """The lines the scorer has taken items of (a set, at most ``max_lines``): each one
        costs metrics series and index entries for good."""
        return f"{self.prefix}:lines"

    @property
    def lost(self) -> str:
        """Entries trimmed from a stream before every consumer group acknowledged them (a
        hash: stream name -> count); only a stream over its hard bound loses any."""
        return f"{self.prefix}:lost"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}:deadletter"

    def item(self, item_id: str) -> str:
        """The stored image of a scored item (an ``ItemBlob`` string with a retention TTL)."""
        return f"{self.prefix}:item:{item_id}"

    def model(self, version: str) -> str:
        """A served model version's card and calibration scores (a ``ModelRecord`` hash)."""
        return f"{self.prefix}:model:{version}"

    @property
    def models(self) -> str:
        """Sorted set of served model versions by the time a replica loaded them."""
        return f"{self.prefix}:models"

    @property
    def line_models(self) -> str:
        """Which version scores which line: a hash line -> version, ``*`` for every line
        without a model of its own (``ScorerConfig.line_models``)."""
        return f"{self.prefix}:line_models"

    @property
    def thresholds(self) -> str:
        """Current image thresholds: a hash line -> JSON; ``:history:<line>`` lists versions."""
        return f"{self.prefix}:thresholds"

    @property
    def pixel_thresholds(self) -> str:
        """Current pixel (region) thresholds, as ``thresholds``; the scorer reads them."""
        return f"{self.prefix}:pixel_thresholds"

    def threshold_history(self, current: str, line: str) -> str:
        """A line's versions (a list) of the thresholds under ``current`` (one of the two)."""
        return f"{current}:history:{line}"

    # --- the API's: alerts, labels, caches ---------------------------------------------------

    def alert(self, item_id: str) -> str:
        """An item's alert (a hash, with the alert retention as TTL)."""
        return f"{self.prefix}:alert:{item_id}"

    def alert_events(self, item_id: str) -> str:
        """An alert's events (a list: created, acknowledged, labelled...)."""
        return f"{self.prefix}:alert_events:{item_id}"

    @property
    def alerts_by_time(self) -> str:
        """Every alert's item id by scored time (a sorted set, trimmed to retention)."""
        return f"{self.prefix}:alerts:by_time"

    def alerts_of_line(self, line: str) -> str:
        """A line's alerts by scored time, as ``alerts_by_time``."""
        return f"{self.prefix}:alerts:line:{line}"

    @property
    def alert_lines(self) -> str:
        """The lines that have alerts (a set)."""
        return f"{self.prefix}:alerts:lines"

    @property
    def alerts_live(self) -> str:
        """The pub/sub channel of new alerts (live streams)."""
        return f"{self.prefix}:alerts:live"

    @property
    def labels(self) -> str:
        """Operators' item labels (a hash item id -> JSON)."""
        return f"{self.prefix}:labels"

    @property
    def region_labels(self) -> str:
        """Operators' region verdicts (a hash ``<item id>#<region>`` -> JSON)."""
        return f"{self.prefix}:region_labels"

    def model_annotated(self, version: str) -> str:
        """Set once the first score of a model version was annotated in Grafana."""
        return f"{self.prefix}:annotated:model:{version}"

    def explore_cache(self, digest: str) -> str:
        """A cached explorer view (a hash png, data; TTL)."""
        return f"{self.prefix}:explore:{digest}"

    def preview_cache(self, item_id: str, scale: int) -> str:
        """An item's cached previews at one scale (a hash kind -> PNG; TTL)."""
        return f"{self.prefix}:preview:{scale}:{item_id}"


FRAMES_GROUP = "scorers"


@dataclass(frozen=True)
class ItemBlob:
    """A scored item's image as stored under ``{prefix}:item:<item_id>``: one string, a
    header line then the image bytes::

        b"<kind> <C,H,W> <line> <model_version> <score>\\n" + payload

    ``kind`` is ``file`` (the PNG or JPEG exactly as received, kept when it is smaller than
    its pixels and decoded again on reading) or ``pixels`` (uint8 C x H x W). One string per
    item, not a hash of fields: Redis stores, expires and rewrites it for a fraction of the
    cost (bench/README.md, "Where the time goes"). The replica's publish script writes it
    (``scorer.streams``); every reader parses it here."""

    kind: Literal["file", "pixels"]
    shape: tuple[int, ...]
    line: str
    model_version: str
    score: float
    payload: bytes

    @classmethod
    def parse(cls, value: bytes) -> ItemBlob:
        header, sep, payload = value.partition(b"\n")
        try:
            kind, shape, line, version, score = header.decode().split(" ")
            if not sep or kind not in ("file", "pixels"):
                raise ValueError(kind)
            return cls(kind, tuple(int(d) for d in shape.split(",")), line, version,  # type: ignore[arg-type]
                       float(score), payload)  # fmt: skip
        except (UnicodeDecodeError, ValueError) as exc:
            raise RecordError(f"not an item blob: {header[:80]!r}") from exc


def _decode_fields(fields: Mapping[Any, Any], binary: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        if isinstance(v, bytes) and key not in binary:
            try:
                v = v.decode()
            except UnicodeDecodeError as exc:
                raise RecordError(f"field {key!r} is not UTF-8") from exc
        out[key] = v
    return out


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_fields(self) -> dict[str, str | bytes]:
        """Flat field map for XADD; a field that is None is left out (absent reads as None)."""
        return {k: v if isinstance(v, bytes) else str(v) for k, v in self.model_dump().items()
                if v is not None}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Any:
        """Parse an XREAD entry's field map; ``RecordError`` says what is wrong."""
        data = _decode_fields(fields, binary=cls._binary_fields())
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise RecordError(problems) from exc

    @classmethod
    def _binary_fields(cls) -> tuple[str, ...]:
        return ()


class Region(BaseModel):
    """A connected region of an item's anomaly map above its line's pixel threshold, in the
    pixel coordinates of the image as sent: bounding box, area in pixels, the map's peak."""

    model_config = ConfigDict(
        frozen=True, json_schema_extra={"examples": [{"x": 12, "y": 30, "w": 9, "h": 5,
                                                      "area": 31, "peak": 4.2}]},
    )  # fmt: skip

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    w: int = Field(ge=1)
    h: int = Field(ge=1)
    area: int = Field(ge=0)
    peak: FiniteFloat


# Where a result says where its item is defective (HTTP answers and alerts alike).
Regions = Annotated[list[Region] | None, Field(
    description="where a pixel threshold applies to the line: the anomaly map's connected "
    "regions above it, largest first (at most 16), in pixels of the image as sent; [] for none",
)]  # fmt: skip
DefectArea = Annotated[
    float | None, Field(description="the share of the image above the pixel threshold")
]
PixelThreshold = Annotated[
    float | None, Field(description="the line's pixel threshold the regions were found with")
]


class ScoreRecord(_Record):
    """One entry of ``{prefix}:scores``: one scored item. ``regions`` (a JSON list),
    ``defect_area`` and ``pixel_threshold`` are present when a pixel threshold applied to the
    item's line; an empty list then means no region."""

    item_id: str = Field(pattern=ID_PATTERN)
    line: str = Field(default=DEFAULT_LINE, pattern=LINE_PATTERN)
    # Finite, every number: a NaN would reach alerts and live streams as JSON null.
    ts_ingested: FiniteFloat
    ts_scored: FiniteFloat
    score: FiniteFloat
    recon: FiniteFloat
    kl: FiniteFloat
    complexity: FiniteFloat | None = None  # absent in entries of older versions
    model_version: str
    regions: list[Region] | None = None
    defect_area: FiniteFloat | None = Field(default=None, ge=0, le=1)
    pixel_threshold: FiniteFloat | None = None

    @field_validator("regions", mode="before")
    @classmethod
    def _regions_from_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def to_fields(self) -> dict[str, str | bytes]:
        fields = super().to_fields()
        if self.regions is not None:
            fields["regions"] = regions_json(self.regions)
        return fields


def regions_json(regions: list[Region] | list[dict[str, Any]]) -> str:
    """Regions as the score stream, alerts and HTTP carry them: a compact JSON list."""
    items = [r.model_dump() if isinstance(r, Region) else r for r in regions]
    return json.dumps(items, separators=(",", ":"))


class FrameRecord(_Record):
    """One entry of ``{prefix}:frames``: an image sent by an inspection line with XADD."""

    item_id: str | None = Field(default=None, pattern=ID_PATTERN)
    line: str = Field(default=DEFAULT_LINE, pattern=LINE_PATTERN)
    ts: FiniteFloat | None = None
    image: bytes
    content_type: str = "image/png"

    @classmethod
    def _binary_fields(cls) -> tuple[str, ...]:
        return ("image",)


class ModelRecord(_Record):
    """What consumers of the score stream need of a served model version: its card and the
    scores of its held-out normal images, published by the replica that loads it, so they
    need no access to the model store."""

    model_version: str
    card: str  # model_card.json
    calibration: str  # calibration.csv: label, recon, kl, complexity, score[, map_max]
    loaded_at: float

    def calibration_scores(self) -> np.ndarray:
        """The calibration set's scores (float64)."""
        return pd.read_csv(io.StringIO(self.calibration))["score"].to_numpy(dtype=np.float64)

    def calibration_map_max(self) -> np.ndarray:
        """Each calibration image's anomaly-map maximum (float64; empty for a checkpoint
        written before pixel thresholds)."""
        frame = pd.read_csv(io.StringIO(self.calibration))
        if "map_max" not in frame:
            return np.zeros(0, dtype=np.float64)
        return frame["map_max"].to_numpy(dtype=np.float64)


class DeadLetterRecord(_Record):
    """One entry of ``{prefix}:deadletter``: what could not be scored or consumed, and why."""

    item_id: str
    line: str
    source: Literal["http", "frames", "scores"]
    reason: str
    status: int
    ts: float
    frame_id: str = ""  # the frames-stream entry id, for entries that came that way


# --- HTTP --------------------------------------------------------------------------------


class ItemScore(BaseModel):
    """A scored item: its score and the parts it is made of (recon, kl, and the input's
    complexity); the model card's ``score_kind`` says how they combine."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "item_id": "cam1-000123", "ok": True, "line": "cam1", "score": 2.373,
                "recon": 228.3, "kl": 3.1, "complexity": 96.5, "model_version": "c96dc36985a2a968",
            }
        }
    )  # fmt: skip

    item_id: str
    ok: Literal[True] = True
    line: str
    score: float
    recon: float
    kl: float
    complexity: float
    model_version: str
    anomaly_map: str | None = Field(
        default=None,
        description="with ?maps=true: the map the score is built from, base64 NPY (float32, "
        "H x W at the model's input size; the local score is its maximum)",
    )
    regions: Regions = None
    defect_area: DefectArea = None
    pixel_threshold: PixelThreshold = None


class ItemError(BaseModel):
    """An item that could not be scored; the rest of its batch was."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "item_id": "cam1-000124", "ok": False, "line": "cam1", "status": 422,
                "error": "cannot decode image: not a PNG or JPEG",
            }
        }
    )  # fmt: skip

    item_id: str
    ok: Literal[False] = False
    line: str
    status: int
    error: str


class ScoreResponse(BaseModel):
    """Per-item results in request order."""

    model_version: str
    n_scored: int
    n_failed: int
    results: list[ItemScore | ItemError]


class PreviewRequest(BaseModel):
    """Items to render; their images must still be in retention."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"item_ids": ["cam1-000123"], "scale": 4}}
    )

    item_ids: list[str] = Field(min_length=1, max_length=64)
    scale: int = Field(default=4, ge=1, le=16, description="nearest-neighbour upscaling")


class ItemPreview(BaseModel):
    """PNG images of one item, base64-encoded, by kind (original, reconstruction, denoised,
    error, panel); or why there are none."""

    item_id: str
    ok: bool
    model_version: str | None = None
    line: str | None = None
    error: str | None = None
    status: int = 200
    images: dict[str, str] = Field(default_factory=dict)


class PreviewResponse(BaseModel):
    previews: list[ItemPreview]


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str
    variant: str
    image_shape: list[int]
    consuming_frames: bool
    load_error: str | None = None  # why the last model swap was refused, if it was
    conditions: list[str] = Field(default_factory=list)  # a conditional model's
    line_conditions: dict[str, str] = Field(default_factory=dict)  # line -> condition
    explorer: bool = False  # calibration latents present: /v1/explore has its reference
    line_models: dict[str, str] = Field(default_factory=dict)  # line -> version of its own


# --- explorer (the latent space of the served model) ---------------------------------------

MAX_EXPLORE_STEPS = 32
MAX_MAP_ITEMS = 2000
Scale = Annotated[int, Field(ge=1, le=16, description="nearest-neighbour upscaling of tiles")]


class MapItem(BaseModel):
    """An item to overlay on the latent map (still in retention), and whether it alerted."""

    item_id: str = Field(pattern=ID_PATTERN)
    flagged: bool = False


class LatentMapRequest(BaseModel):
    """Normal calibration items' latent means in 2-D, the given items overlaid by line."""

    kind: Literal["latent_map"] = "latent_map"
    items: list[MapItem] = Field(default_factory=list, max_length=MAX_MAP_ITEMS)
    method: Literal["auto", "tsne", "pca"] = Field(
        default="auto", description="auto: t-SNE up to 3,000 points, PCA beyond"
    )
    width: int = Field(default=640, ge=240, le=1600)
    height: int = Field(default=480, ge=180, le=1200)


class NeighboursRequest(BaseModel):
    """The item beside its ``k`` nearest normal calibration items in latent space."""

    kind: Literal["neighbours"] = "neighbours"
    item_id: str = Field(pattern=ID_PATTERN)
    k: int = Field(default=6, ge=1, le=32)
    scale: Scale = 2


class SampleRequest(BaseModel):
    """Images decoded from the prior; a conditional model: one row per condition, or one."""

    kind: Literal["sample"] = "sample"
    n: int = Field(default=16, ge=1, le=64)
    condition: str | None = None
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    scale: Scale = 2


class InterpolateRequest(BaseModel):
    """The decoded straight latent path between two stored items, originals at the ends."""

    kind: Literal["interpolate"] = "interpolate"
    item_a: str = Field(pattern=ID_PATTERN)
    item_b: str = Field(pattern=ID_PATTERN)
    steps: int = Field(default=10, ge=2, le=MAX_EXPLORE_STEPS)
    scale: Scale = 2


class TraverseRequest(BaseModel):
    """One latent dimension at a time around an item (or the normal centroid)."""

    kind: Literal["traverse"] = "traverse"
    item_id: str | None = Field(default=None, pattern=ID_PATTERN)
    dims: list[int] | None = Field(default=None, min_length=1, max_length=16)
    n_dims: int = Field(default=4, ge=1, le=16, description="the most used dims, without dims")
    steps: int = Field(default=9, ge=2, le=MAX_EXPLORE_STEPS)
    span: float = Field(default=3.0, gt=0, le=10, description="normal items' std, each side")
    condition: str | None = None
    scale: Scale = 2


class CompressRequest(BaseModel):
    """Stored items encoded to their latent codes and decoded back."""

    kind: Literal["compress"] = "compress"
    item_ids: list[str] = Field(min_length=1, max_length=64)
    dtype: Literal["float32", "float16"] = "float32"
    scale: Scale = 2


ExploreRequest = Annotated[
    LatentMapRequest | NeighboursRequest | SampleRequest | InterpolateRequest | TraverseRequest
    | CompressRequest,
    Field(discriminator="kind"),
]  # fmt: skip


class ExploreResponse(BaseModel):
    """A rendered view of the served model's latent space: a PNG (base64) and its numbers."""

    kind: str
    model_version: str
    png: str
    width: int
    height: int
    data: dict[str, Any] = Field(default_factory=dict)
