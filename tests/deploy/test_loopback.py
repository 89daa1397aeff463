"""Nothing the default set-up starts listens beyond loopback: Redis, the Ray head (GCS,
raylet, dashboard, workers), Serve's HTTP proxy and the API."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.reliability

# Ray Serve 2.60 binds each replica's inter-deployment gRPC server to "[::]:0" in
# ray/serve/_private/replica.py, with no setting to change it (mutual TLS with RAY_USE_TLS).
# The scorer is one deployment and never calls it; docs/reliability.md says how to fence it.
UPSTREAM_WILDCARD = ("ray::ServeReplica:",)


def _listening_beyond_loopback() -> list[str]:
    mine = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    mine.add(os.getpid())
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or conn.pid not in mine:
            continue
        ip = ipaddress.ip_address(conn.laddr.ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        name = psutil.Process(conn.pid).name()
        if not ip.is_loopback and not name.startswith(UPSTREAM_WILDCARD):
            found.append(f"{name} (pid {conn.pid}) on {conn.laddr.ip}:{conn.laddr.port}")
    return found


def test_redis_ray_serve_and_api_listen_on_loopback_only(
    redis_server: Any, ray_cluster: Any, scorer_url: str, api_url: str
) -> None:
    mine = psutil.Process(os.getpid()).children(recursive=True)
    names = {p.name() for p in mine}
    assert {"redis-server", "raylet", "gcs_server"} <= names, names  # they are being checked
    beyond = _listening_beyond_loopback()
    assert not beyond, "\n".join(beyond)
