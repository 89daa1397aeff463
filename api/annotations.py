"""Grafana annotations for changes operators should see on every dashboard: threshold changes
and model swaps. Best effort: Grafana being down never fails a request or the consumer."""

from __future__ import annotations

import asyncio
import logging
import time

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaException

logger = logging.getLogger("vlaewatch.api")


class Annotator:
    def __init__(self, url: str | None, token: str | None) -> None:
        self.api: GrafanaApi | None = None
        if url:
            self.api = (
                GrafanaApi.from_url(url=url, credential=token, timeout=5)
                if token
                else GrafanaApi.from_url(url, timeout=5)
            )

    async def note(self, text: str, tags: list[str]) -> None:
        """Post a point annotation tagged ``vlaewatch`` (the dashboards show those)."""
        if self.api is None:
            return
        api = self.api
        try:
            await asyncio.to_thread(
                api.annotations.add_annotation, time_from=int(time.time() * 1000),
                tags=["vlaewatch", *tags], text=text,
            )  # fmt: skip
        except (GrafanaException, OSError) as exc:
            logger.warning("Grafana annotation not posted: %s", exc)
