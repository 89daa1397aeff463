"""Stream entries (docs/http.md): what the scorer publishes and the API consumes, and the
stored item format. Defined once here; both sides parse with these."""

from __future__ import annotations

import io
import json
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

from contract.keys import DEFAULT_LINE, ID_PATTERN, LINE_PATTERN, RecordError


@dataclass(frozen=True)
class ItemBlob:
    """A scored item's image as stored under ``{prefix}:item:<item_id>``: one string, a
    header line then the image bytes::

        b"<kind> <C,H,W> <line> <model_version> <score>[ <ref>]\\n" + payload

    ``kind`` is ``file`` (the PNG or JPEG exactly as received, kept when it is smaller than
    its pixels and decoded again on reading) or ``pixels`` (uint8 C x H x W). With ``ref``,
    the bytes lie in the blob store (``scorer.blobs``) and the payload is empty. One string
    per item, not a hash of fields: Redis stores, expires and rewrites it for a fraction of
    the cost (bench/README.md, "Where the time goes"). The replica's publish script writes
    it (``scorer.publish``); every reader parses it here."""

    kind: Literal["file", "pixels"]
    shape: tuple[int, ...]
    line: str
    model_version: str
    score: float
    payload: bytes
    ref: str | None = None  # where the blob store holds the bytes, when they are not here

    @classmethod
    def parse(cls, value: bytes) -> ItemBlob:
        header, sep, payload = value.partition(b"\n")
        try:
            kind, shape, line, version, score, *ref = header.decode().split(" ")
            if not sep or kind not in ("file", "pixels") or len(ref) > 1 or (ref and payload):
                raise ValueError(kind)
            return cls(kind, tuple(int(d) for d in shape.split(",")), line, version,  # type: ignore[arg-type]
                       float(score), payload, ref[0] if ref else None)  # fmt: skip
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
