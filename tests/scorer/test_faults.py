"""Faults of the scorer with real processes: a Serve replica SIGKILLed mid-stream, and a
checkpoint directory swapped under a running deployment."""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from contract.keys import FRAMES_GROUP
from tests.api.test_faults import _scored, _send_frames
from tests.scorer.test_service import _npy, _png, _wait_for

pytestmark = pytest.mark.reliability


def _replica_pids() -> set[int]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")])
    # The session scorer's replicas only (other tests deploy apps of their own).
    return {int(a.pid) for a in actors if a.class_name == "ServeReplica:scorer:Scorer" and a.pid}


def _healthy(scorer_url: str) -> bool:
    try:
        return httpx.get(f"{scorer_url}/v1/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_replica_sigkilled_is_replaced_and_frames_sent_meanwhile_are_scored(
    redis_server: Any, scorer_url: str, digits: Any
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    line = f"r{uuid.uuid4().hex[:8]}"
    images = digits.test.images[:120, 0]
    version = httpx.get(f"{scorer_url}/v1/health").json()["model_version"]
    (pid,) = _replica_pids()

    # Kill it while it holds frames it read and has not acked: frozen (SIGSTOP) it cannot ack
    # between the look and the kill; holding none, it is thawed and sent more. Before, the
    # test never checked, and the reclaim path may never have run.
    sent: list[str] = []
    holding: dict[str, set[bytes]] = {}
    for attempt in range(30):
        pipe = client.pipeline(transaction=False)
        for i, im in enumerate(images[:60]):
            item = f"{line}-before{attempt}-{i}"
            pipe.xadd("vlaewatch:frames", {"image": _png(im), "line": line, "item_id": item})
            sent.append(item)
        pipe.execute()
        time.sleep(0.01 * (attempt % 5))
        os.kill(pid, signal.SIGSTOP)
        owners = client.xpending("vlaewatch:frames", FRAMES_GROUP)["consumers"]
        for owner in [o["name"] for o in owners if o["pending"]]:
            rows = client.xpending_range("vlaewatch:frames", FRAMES_GROUP, "-", "+", 10_000,
                                         consumername=owner)  # fmt: skip
            holding[owner] = {r["message_id"] for r in rows}
        if holding:
            break
        os.kill(pid, signal.SIGCONT)
    assert holding, "the replica never held an unacked frame"
    held = {eid: f for eid, f in client.xrange("vlaewatch:frames")
            if any(eid in ids for ids in holding.values())}  # fmt: skip
    os.kill(pid, signal.SIGKILL)
    sent += _send_frames(redis_server.url, images[60:], line, "outage")

    _wait_for(lambda: _replica_pids() - {pid}, timeout=90)
    _wait_for(lambda: _healthy(scorer_url), timeout=90)
    # Every acknowledged frame is scored, those the dead replica held included (reclaimed by
    # its replacement once idle for reclaim_idle_ms).
    _wait_for(lambda: set(sent) <= set(_scored(client, line)), timeout=90)
    assert _replica_pids() & {pid} == set()
    # Exactly what the dead replica held was taken over: scored, and pending nowhere.
    assert {f[b"item_id"].decode() for f in held.values()} <= set(_scored(client, line))
    for owner in holding:
        assert not client.xpending_range("vlaewatch:frames", FRAMES_GROUP, "-", "+", 10,
                                         consumername=owner)  # fmt: skip
    health = httpx.get(f"{scorer_url}/v1/health").json()
    assert health["model_version"] == version and health["consuming_frames"]
    r = httpx.post(f"{scorer_url}/v1/score", content=_npy(images[:4]),
                   headers={"content-type": "application/x-npy"}, timeout=30)  # fmt: skip
    assert r.status_code == 200 and r.json()["n_scored"] == 4, r.text


def test_swapped_checkpoints_are_refused_and_the_running_version_keeps_serving(
    redis_server: Any, scorer_url: str, checkpoint: Path, checkpoint_b: Path, tmp_path: Path,
    digits: Any
) -> None:  # fmt: skip
    """Checkpoint directories with another model's weights, card or calibration scores: the
    content hash does not match, the update is refused before any replica sees it, and the
    running version keeps answering. (Corrupted bytes: test_service's model swap test.)"""
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import DeployError, deploy

    port = int(scorer_url.rsplit(":", 1)[1])
    version = httpx.get(f"{scorer_url}/v1/health").json()["model_version"]
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    for swapped_file in ("model.safetensors", "model_card.json", "calibration.csv"):
        bad = tmp_path / swapped_file
        shutil.copytree(checkpoint, bad)
        shutil.copy(checkpoint_b / swapped_file, bad / swapped_file)
        with pytest.raises(DeployError, match="content hash mismatch"):
            deploy(base.model_copy(update={"checkpoint": str(bad)}),
                   DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
        health = httpx.get(f"{scorer_url}/v1/health")
        assert health.status_code == 200, health.text
        assert health.json()["model_version"] == version
        r = httpx.post(f"{scorer_url}/v1/score", content=_npy(digits.test.images[:3, 0]),
                       headers={"content-type": "application/x-npy"}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        assert {x["model_version"] for x in r.json()["results"]} == {version}

    # A declarative update (a RayService's user_config) does not go through deploy(): Serve
    # calls the running replica's reconfigure in place. The replica itself refuses the
    # swapped checkpoint, keeps serving its version, and says why.
    from ray import serve

    handle = serve.get_deployment_handle("Scorer", app_name="scorer")
    bad = base.model_copy(update={"checkpoint": str(tmp_path / "model.safetensors")})
    try:
        handle.reconfigure.remote(bad.model_dump()).result(timeout_s=60)
        health = httpx.get(f"{scorer_url}/v1/health").json()
        assert health["model_version"] == version, health
        assert "content hash mismatch" in (health["load_error"] or ""), health
        r = httpx.post(f"{scorer_url}/v1/score", content=_npy(digits.test.images[:3, 0]),
                       headers={"content-type": "application/x-npy"}, timeout=30)  # fmt: skip
        assert {x["model_version"] for x in r.json()["results"]} == {version}
    finally:
        handle.reconfigure.remote(base.model_dump()).result(timeout_s=60)
    assert httpx.get(f"{scorer_url}/v1/health").json()["load_error"] is None
