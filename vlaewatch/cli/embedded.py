"""The embedded defaults a command falls back on: the bundled redis-server under
``VLAEWATCH_HOME`` when no Redis is configured, a local Ray cluster when none is given."""

from __future__ import annotations

import contextlib
from typing import Any

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


def ray_cluster(
    stack: contextlib.ExitStack, address: str | None, settings: Settings, verbose: bool,
    serving: bool = False, num_cpus: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Join ``address`` (else RAY_ADDRESS) or start a local cluster (``num_cpus`` logical
    CPUs, default the machine's), left when the stack closes if this process started it.
    Unless ``verbose``, the workers' logs stay in Ray's files, and so do Serve's INFO lines
    when the command ``serving`` deploys."""
    from vlaewatch import cluster

    info = cluster.connect(address or settings.ray_address, num_cpus=num_cpus,
                           log_to_driver=verbose)  # fmt: skip
    if info["owned"]:
        stack.callback(cluster.shutdown)
    if serving and not verbose:
        cluster.quiet_serve()
    return info
