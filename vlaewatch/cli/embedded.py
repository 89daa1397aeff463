"""The embedded default a command falls back on when no Redis is configured: the bundled
redis-server under ``VLAEWATCH_HOME``."""

from __future__ import annotations

import contextlib

from contract.settings import Settings
from vlaewatch.cli.console import err


def redis_url(stack: contextlib.ExitStack, explicit: str | None, settings: Settings) -> str:
    """REDIS_URL when given; else the bundled server another vlaewatch process runs on this
    home, else a new one (owned by this process)."""
    from contract.redis_server import EmbeddedRedis, running_url

    url = explicit or settings.redis_url
    if url:
        return url
    data_dir = settings.home / "redis"
    running = running_url(data_dir)
    if running:
        err(f"using the bundled Redis at {running}")
        return running
    return stack.enter_context(EmbeddedRedis(data_dir)).url
