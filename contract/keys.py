"""The Redis key layout (docs/http.md): every key, stream and group name, and the id and line
rules that make keys safe. One owner, so that two features cannot collide on a key."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
