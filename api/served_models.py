"""The model versions the scorer serves, as the API reads them: each version's record and its
normal calibration scores, announced by the scorer in Redis and read once per version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from contract.keys import StreamKeys
from contract.records import ModelRecord
from contract.streams import as_text, line_model_version, load_model_record


@dataclass(frozen=True)
class ServedModel:
    """A model version's calibration scores, sorted, as the consumer and calibration use them."""

    record: ModelRecord
    calibration: np.ndarray  # ascending
    map_calibration: np.ndarray  # each calibration image's map maximum, ascending

    @property
    def version(self) -> str:
        return self.record.model_version


class ModelCache:
    """Model records announced by the scorer, read from Redis once per version."""

    def __init__(self, client: aioredis.Redis, keys: StreamKeys) -> None:
        self.client = client
        self.keys = keys
        self._by_version: dict[str, ServedModel] = {}

    async def get(self, version: str | None = None) -> ServedModel | None:
        """A version (None: the newest one served); None when no scorer announced it."""
        if version is not None and version in self._by_version:
            return self._by_version[version]
        record = await load_model_record(self.client, self.keys, version)
        if record is None:
            return None
        model = ServedModel(record, np.sort(record.calibration_scores()),
                            np.sort(record.calibration_map_max()))  # fmt: skip
        self._by_version[record.model_version] = model
        return model

    async def for_line(self, line: str) -> ServedModel | None:
        """The version the scorer announced for ``line`` (else the newest one served)."""
        return await self.get(await line_model_version(self.client, self.keys, line))

    async def lines(self) -> dict[str, str]:
        """Line -> version as the scorer announced them (``*``: the lines without their own)."""
        raw: Any = await self.client.hgetall(self.keys.line_models)
        return {as_text(k): as_text(v) for k, v in raw.items()}
