"""Every Lua script of the service on a real Redis Cluster: three masters of the bundled
redis-server on loopback, made a cluster by its redis-cli, reached by the services' own client
(``connect`` with ``?cluster=true``) under a hash-tagged key prefix."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from api.alerts import AlertStore
from api.schemas.alerts import ALERT_EXAMPLE, Alert
from api.thresholds import ThresholdStore
from contract.keys import StreamKeys
from contract.redis_server import redis_binary
from contract.settings import Settings
from contract.streams import connect, ensure_group
from scorer.publish import ScoredBatch, ScoreSink


def _ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free too."""
    found: list[int] = []
    while len(found) < n:
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        found.append(port)
    return found


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = redis_binary()
    cli = str(Path(server).with_name("redis-cli"))
    ports = _ports(3)
    procs = []
    for port in ports:
        data = tmp_path_factory.mktemp(f"node{port}")
        procs.append(subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(data / "nodes.conf"), "--dir", str(data),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    try:
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=port).ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, f"node {port} did not start"
                    time.sleep(0.05)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        deadline = time.monotonic() + 30
        while redis.Redis(port=ports[0]).cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "the cluster did not become ok"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}/0?cluster=true"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_the_cluster_has_three_masters_and_a_tagged_prefix_keeps_one_slot(
    cluster_url: str,
) -> None:
    plain = RedisCluster.from_url(cluster_url.split("?")[0])
    masters = {n.name for n in plain.get_primaries()}
    assert len(masters) == 3
    keys = StreamKeys("{vw}")
    every = [keys.scores, keys.lost, keys.lines, keys.item("a"), keys.alert("a"),
             keys.alerts_by_time, keys.alerts_of_line("cam1"), keys.thresholds,
             keys.threshold_history(keys.thresholds, "cam1")]  # fmt: skip
    assert len({plain.keyslot(k) for k in every}) == 1
    # Untagged, the same keys spread over slots, and over the masters: a script using
    # several of them could not run.
    plain_keys = StreamKeys("vw")
    assert len({plain.keyslot(k) for k in (plain_keys.scores, plain_keys.item("a"))}) == 2
    assert Settings(key_prefix="{vw}").key_prefix == "{vw}"
    # The flag is the client's, never passed on to redis-py as a connection option.
    assert isinstance(connect(cluster_url), AsyncRedisCluster)
    plain_client = connect("redis://127.0.0.1:1/0?cluster=false&socket_timeout=2")
    assert not isinstance(plain_client, AsyncRedisCluster)
    assert plain_client.connection_pool.connection_kwargs["socket_timeout"] == 2


def _batch(ids: list[str], lines: list[str]) -> ScoredBatch:
    n = len(ids)
    return ScoredBatch(
        item_ids=ids, lines=lines, ts_ingested=[time.time()] * n, shape=(1, 2, 2),
        stored=[bytes([i] * 4) for i in range(n)], as_file=[False] * n,
        score=[1.5] * n, recon=[1.0] * n, kl=[0.5] * n, complexity=[0.0] * n,
        ts_scored=time.time(), model_version="v1",
        pixel_threshold=[2.0] + [None] * (n - 1),
        regions=[[{"x": 0, "y": 0, "w": 1, "h": 1, "area": 1, "peak": 3.0}]] + [None] * (n - 1),
        defect_area=[0.25] + [None] * (n - 1),
    )  # fmt: skip


def test_the_publish_script_stores_publishes_refuses_and_trims_on_a_cluster(
    cluster_url: str,
) -> None:
    async def run() -> tuple[Any, ...]:
        client = connect(cluster_url)
        keys = StreamKeys("{pub}")
        await ensure_group(client, keys.scores, "alerts")
        sink = ScoreSink(client, keys, scores_maxlen=100, deadletter_maxlen=100,
                         retention_s=60, scores_hard_maxlen=150, max_lines=2)  # fmt: skip
        first = _batch(["a", "b", "c"], ["cam1", "cam1", "cam2"])
        await sink.publish(first)
        # "a" is cam1's: cam2 may not take it; a third line is past max_lines.
        second = _batch(["a", "d"], ["cam2", "cam3"])
        await sink.publish(second)
        for k in range(4):  # 200 more entries than the hard bound allows, none acknowledged
            await sink.publish(_batch([f"x{k}-{i}" for i in range(50)], ["cam1"] * 50))
        out = (
            first.refused,
            second.refused,
            await client.get(keys.item("a")),
            await client.xlen(keys.scores),
            await client.hget(keys.lost, "scores"),
        )
        await client.aclose()
        return out

    refused_first, refused_second, item, length, lost = asyncio.run(run())
    assert refused_first == {}
    assert "held by line 'cam1'" in refused_second[0] and "max_lines" in refused_second[1]
    assert item.startswith(b"pixels 1,2,2 cam1 v1 1.5\n")
    assert length == 150 and int(lost) == 203 - 150


def test_the_alert_and_threshold_scripts_run_on_a_cluster(cluster_url: str) -> None:
    async def run() -> tuple[Any, ...]:
        client = connect(cluster_url)
        keys = StreamKeys("{api}")
        alerts = AlertStore(client, keys, retention_s=600)
        alert = Alert.model_validate({**ALERT_EXAMPLE, "events": []})
        created = await alerts.create_many([alert])
        # Redelivered: no second alert; the same id on another line: refused.
        created += await alerts.create_many([alert, alert.model_copy(update={"line": "cam2"})])
        acked = await alerts.transition(alert.item_id, "acknowledged", "olga", "seen")
        store = ThresholdStore(client, keys.prefix)
        versions = [
            await store.set("cam1", v, "manual", {}, "olga", "test", None, None) for v in (1.0, 2.0)
        ]
        current = await store.get("cam1")
        await client.aclose()
        return created, acked, versions, current

    created, acked, versions, current = asyncio.run(run())
    assert created == [1, 0, -1]
    assert acked.state == "acknowledged" and [e.action for e in acked.events] == [
        "created", "acknowledged"]  # fmt: skip
    assert [v.version for v in versions if v] == [1, 2] and current.value == 2.0
