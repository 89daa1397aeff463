"""Connecting to Ray: join ``RAY_ADDRESS`` when given, else start a local cluster on loopback."""

from __future__ import annotations

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
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    import ray

    owned = not ray.is_initialized()
    if owned:
        # Workers import the project as installed in the environment (`make install`).
        kwargs: dict[str, Any] = {"log_to_driver": log_to_driver}
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
    }


def shutdown() -> None:
    """Disconnect (and stop the local cluster this process started)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
