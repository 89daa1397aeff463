"""One model's forward pass over the chunks of items batched together, into one
``ScoredBatch`` a chunk (its caller's share)."""

import asyncio
import time
from typing import Any

import numpy as np

from scorer import explore
from scorer.decode import Item
from scorer.publish import ScoredBatch
from vlae.condition import codes_of
from vlae.regions import find_regions
from vlae.score import Scores, score_images

Located = tuple[list[dict[str, Any]], float] | None


async def forward(chunks: list[list[Item]]) -> list[ScoredBatch]:
    """Score chunks of one model's items in one pass (off the event loop)."""
    loaded = chunks[0][0].model
    items = [it for chunk in chunks for it in chunk]
    images = np.stack([it.image for it in items])
    # A conditional model scores each item under its line's condition (or its best).
    conditions = (
        codes_of([explore.line_condition(loaded, it.line) for it in items])
        if loaded.conditions
        else None
    )
    # Maps cost a little more (nothing for the local score): computed for the batch only
    # when one of its callers asks, or a line of it has a pixel threshold.
    maps = any(it.want_map or it.pixel_threshold is not None for it in items)
    scores = await asyncio.to_thread(
        score_images, loaded.model, images, conditions, len(images), maps
    )
    located: list[Located] = [None] * len(items)
    if scores.maps is not None and any(it.pixel_threshold is not None for it in items):
        located = await asyncio.to_thread(_locate, scores.maps, items)
    now, out, start = time.time(), [], 0
    for chunk in chunks:
        part = slice(start, start + len(chunk))
        out.append(_columns(chunk, scores, part, located[part], now))
        start += len(chunk)
    return out


def _columns(
    chunk: list[Item], scores: Scores, part: slice, located: list[Located], now: float
) -> ScoredBatch:
    """One chunk's share (``part``) of the pass's scores."""
    return ScoredBatch(
        item_ids=[it.item_id for it in chunk], lines=[it.line for it in chunk],
        ts_ingested=[it.ts_ingested for it in chunk], shape=chunk[0].image.shape,
        stored=[it.stored for it in chunk], as_file=[it.as_file for it in chunk],
        score=scores.score[part].tolist(), recon=scores.recon[part].tolist(),
        kl=scores.kl[part].tolist(), complexity=scores.complexity[part].tolist(),
        ts_scored=now, model_version=chunk[0].model.version,
        maps=([m if it.want_map else None for it, m in zip(chunk, scores.maps[part],
                                                           strict=True)]
              if scores.maps is not None else None),
        pixel_threshold=[it.pixel_threshold for it in chunk],
        regions=[x[0] if x else None for x in located],
        defect_area=[x[1] if x else None for x in located],
    )  # fmt: skip


def _locate(maps: np.ndarray, items: list[Item]) -> list[Located]:
    """Per item with a pixel threshold: its map's regions above it and their share."""
    return [
        None if it.pixel_threshold is None
        else find_regions(m, it.pixel_threshold, it.source_hw)
        for it, m in zip(items, maps, strict=True)
    ]  # fmt: skip
