"""Items as received (an HTTP request's or a frames read's) decoded for the model of their
line: ids and lines checked, images decoded to the model's shape, each bad item its own
error so that it never fails the others."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from contract.http import ItemError
from contract.keys import valid_item_id, valid_line
from vlae.checkpoint import LoadedModel, UnmappedLineError
from vlae.images import InputError, Limits, decode_array, decode_image, source_size

logger = logging.getLogger("ray.serve")


@dataclass
class Raw:
    """An item as received: an encoded image (bytes) or its pixels."""

    item_id: str
    line: str
    payload: bytes | np.ndarray
    ts_ingested: float
    frame_id: str = ""


@dataclass
class Item:
    """An item ready to score."""

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


def new_ids(n: int) -> list[str]:
    """Ids for items sent without one: a random request id and the item's position."""
    base = uuid.uuid4().hex
    return [f"{base}-{i}" for i in range(n)]


def item_error(item: Raw, exc: InputError) -> ItemError:
    """The error ``item`` is answered (and dead-lettered) with."""
    return ItemError(item_id=item.item_id, line=item.line, status=exc.status, error=exc.reason)


def decode(
    raws: list[Raw], limits: Limits, model_of: Callable[[str], LoadedModel]
) -> tuple[list[Item], dict[int, ItemError]]:
    """Validate ids and decode images (to the shape of their line's model, ``model_of``);
    errors by position, one per bad item."""
    items: list[Item] = []
    errors: dict[int, ItemError] = {}
    seen: set[str] = set()
    for i, raw in enumerate(raws):
        try:
            model = _admit(raw, seen, model_of)
            seen.add(raw.item_id)
            items.append(_decode_one(raw, model, limits))
        except InputError as exc:
            errors[i] = item_error(raw, exc)
        except Exception as exc:  # a poison item fails alone, never its whole batch
            logger.warning("item %s: cannot decode: %r", raw.item_id[:40], exc)
            errors[i] = item_error(raw, InputError(f"cannot decode: {exc}"[:300], 422))
    return items, errors


def _admit(raw: Raw, seen: set[str], model_of: Callable[[str], LoadedModel]) -> LoadedModel:
    """The model of ``raw``'s line, when its id and line may be taken; else ``InputError``."""
    if not valid_item_id(raw.item_id):
        raise InputError(f"item_id {raw.item_id[:40]!r}: use 1-128 of A-Z a-z 0-9 . _ : -")
    if raw.item_id in seen:
        raise InputError(f"item_id {raw.item_id!r} appears twice in this request")
    if not valid_line(raw.line):
        raise InputError(f"line {raw.line[:40]!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    model = model_of(raw.line)
    try:
        model.line_condition(raw.line)
    except UnmappedLineError as exc:
        raise InputError(str(exc)) from None
    return model


def _decode_one(raw: Raw, model: LoadedModel, limits: Limits) -> Item:
    shape = model.card.image_shape
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
    return Item(raw.item_id, raw.line, raw.ts_ingested, image, model, stored, as_file,
                source_hw=sent, frame_id=raw.frame_id)  # fmt: skip
