"""Thresholds in Redis: per line with a default, every change a new version with who, when,
how and why, rollback as one more version. Every API process reads the current values per
batch it consumes, so a change applies to the next scored item without a restart."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from api.errors import NotFound, Unprocessable
from api.schemas.thresholds import FalseAlarmRateOut, Method, Target, Threshold
from contract.keys import DEFAULT_LINE, StreamKeys
from contract.streams import as_text

# Append a version and make it current in one step; ARGV[3] == "1" sets only if the line
# has no threshold yet (the automatic initial default, raced by several API processes).
_SET = """
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local version = redis.call('LLEN', KEYS[2]) + 1
local entry = string.gsub(ARGV[2], '"__VERSION__"', tostring(version), 1)
redis.call('RPUSH', KEYS[2], entry)
redis.call('HSET', KEYS[1], ARGV[1], entry)
return version
"""


class ThresholdStore:
    """Current thresholds (a hash line → entry) and each line's history (a list), of one
    target: image thresholds under ``{prefix}:thresholds``, pixel thresholds under
    ``{prefix}:pixel_thresholds``."""

    def __init__(self, client: aioredis.Redis, prefix: str, target: Target = "image") -> None:
        self.client = client
        self.target: Target = target
        self.keys = keys = StreamKeys(prefix)
        self.base = keys.thresholds if target == "image" else keys.pixel_thresholds
        self.current_key = self.base
        self._set = client.register_script(_SET)

    def _history_key(self, line: str) -> str:
        return self.keys.threshold_history(self.base, line)

    async def current(self) -> dict[str, Threshold]:
        """Every line's current threshold (``default`` included when set)."""
        raw: Any = await self.client.hgetall(self.current_key)
        return {as_text(k): Threshold.model_validate_json(v) for k, v in raw.items()}

    async def get(self, line: str) -> Threshold:
        raw: Any = await self.client.hget(self.current_key, line)
        if raw is None:
            raise NotFound(f"line {line!r} has no threshold of its own")
        return Threshold.model_validate_json(raw)

    async def history(self, line: str, limit: int = 100) -> list[Threshold]:
        """Newest first."""
        raw: Any = await self.client.lrange(self._history_key(line), -limit, -1)
        return [Threshold.model_validate_json(r) for r in reversed(raw)]

    async def set(
        self,
        line: str,
        value: float,
        method: Method,
        params: dict[str, Any],
        who: str,
        why: str,
        model_version: str | None,
        false_alarm_rate: FalseAlarmRateOut | None,
        only_if_absent: bool = False,
    ) -> Threshold | None:
        """Store a new version and make it current; None when ``only_if_absent`` and the line
        already has one."""
        entry = Threshold(
            line=line, target=self.target, version=0, value=value, method=method, params=params,
            who=who, at=time.time(), why=why, model_version=model_version,
            false_alarm_rate=false_alarm_rate,
        )  # fmt: skip
        doc = entry.model_dump(mode="json")
        doc["version"] = "__VERSION__"
        version = int(
            await self._set(
                keys=[self.current_key, self._history_key(line)],
                args=[line, json.dumps(doc), "1" if only_if_absent else "0"],
            )
        )
        if version == 0:
            return None
        return entry.model_copy(update={"version": version})

    async def rollback(self, line: str, to_version: int | None, who: str, why: str) -> Threshold:
        """Make an earlier version current again, as a new version that names it."""
        history = await self.history(line, limit=1_000_000)
        if not history:
            raise NotFound(f"line {line!r} has no threshold history")
        current = history[0]
        target_version = to_version if to_version is not None else current.version - 1
        target = next((t for t in history if t.version == target_version), None)
        if target is None:
            raise Unprocessable(
                f"line {line!r} has versions 1..{current.version}; no version {target_version}"
            )
        if target.version == current.version:
            raise Unprocessable(f"version {target.version} is already current")
        params = {"to_version": target.version, "restored_method": target.method,
                  "restored_params": target.params}  # fmt: skip
        new = await self.set(
            line, target.value, "rollback", params, who, why, target.model_version,
            target.false_alarm_rate,
        )  # fmt: skip
        assert new is not None
        return new


def effective(thresholds: dict[str, Threshold], line: str) -> Threshold | None:
    """The threshold that applies to ``line``: its own, else the default."""
    return thresholds.get(line) or thresholds.get(DEFAULT_LINE)
