"""The scorer's HTTP request and response models, which the API calls as a client."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from contract.keys import ID_PATTERN
from contract.records import DefectArea, PixelThreshold, Regions

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
