"""Connecting to Ray: join ``RAY_ADDRESS`` when given, else start a local cluster on loopback."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

# Ray reads this at import time: "0" makes a local cluster bind every port to 127.0.0.1 instead
# of the machine's network address. Only the embedded default sets it; a real cluster is joined
# through RAY_ADDRESS and keeps its own networking.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    temp_dir: str | Path | None = None,
    log_to_driver: bool = True,
) -> dict[str, Any]:
    """Initialise Ray unless it already is; return what was connected to.

    ``owned`` is true when this call started the connection: only its caller shuts it down.
    Without ``log_to_driver`` the workers' output (Train workers, Serve replicas, the
    controllers) and Ray's own INFO lines stay in Ray's log files (``logs_dir``) and
    dashboard: the commands' quiet terminal.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    import ray

    owned = not ray.is_initialized()
    if owned:
        # Workers import the project as installed in the environment (`make install`).
        kwargs: dict[str, Any] = {"log_to_driver": log_to_driver}
        if not log_to_driver:
            kwargs["logging_level"] = logging.ERROR
        if address is None:
            kwargs |= {
                "num_cpus": num_cpus,
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "_node_ip_address": "127.0.0.1",
            }
            if temp_dir is not None:
                Path(temp_dir).mkdir(parents=True, exist_ok=True)
                kwargs["_temp_dir"] = str(temp_dir)
        else:
            kwargs["address"] = address
        ctx = ray.init(**kwargs)
        dashboard = getattr(ctx, "dashboard_url", None)
    else:
        dashboard = None
    return {
        "address": ray.get_runtime_context().gcs_address,
        "dashboard_url": f"http://{dashboard}" if dashboard else None,
        "resources": ray.cluster_resources(),
        "owned": owned,
        "logs_dir": _logs_dir(),
    }


def quiet_serve() -> None:
    """Serve's INFO lines in this process (started, deploying, ready) off the terminal: the
    commands say those steps themselves. Its logger is set up when ``ray.serve`` is first
    imported, so this imports it first."""
    import ray.serve  # noqa: F401

    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def _logs_dir() -> str | None:
    """Where this node's Ray processes write their logs (None when it cannot be told)."""
    import ray

    node = getattr(ray._private.worker.global_worker, "node", None)
    return None if node is None else str(node.get_logs_dir_path())


def shutdown() -> None:
    """Disconnect (and stop the local cluster this process started)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
