"""The scorer is the ingestion path: only keys of the one key ring, each with its role, get in
(issue "Trust"). The running scorer is given the key ring in place, as an operator would
(``user_config``: digests only), then its open mode is restored. Before, anyone who reached
its port could score, overwrite stored images and read any of them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.auth import digests, parse_api_keys
from scorer.config import DeploymentConfig, ScorerConfig
from scorer.service import DeployError, deploy
from tests.conftest import API_KEYS
from tests.scorer.test_service import _npy

pytestmark = pytest.mark.reliability

NPY = {"content-type": "application/x-npy"}


def _as(role: str) -> dict[str, str]:
    return {"X-API-Key": API_KEYS[role]}


def test_only_the_right_role_may_score_or_read_images(
    scorer_url: str, api_url: str, redis_server: Any, checkpoint: Path, digits: Any
) -> None:
    port = int(scorer_url.rsplit(":", 1)[1])
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    ring = parse_api_keys(",".join(f"{k}:{role}" for role, k in API_KEYS.items()))
    keyed = base.model_copy(update={"api_key_digests": digests(ring)})
    assert not any(k in keyed.model_dump_json() for k in API_KEYS.values())  # digests only
    body = _npy(digits.test.images[:2, 0])
    line = f"auth{uuid.uuid4().hex[:6]}"
    sent = 0

    def score(headers: dict[str, str]) -> httpx.Response:
        nonlocal sent
        sent += 2
        ids = [f"{line}-{sent}", f"{line}-{sent + 1}"]
        return httpx.post(f"{scorer_url}/v1/score", content=body, headers={**NPY, **headers},
                          params={"line": line, "item_id": ids}, timeout=60)  # fmt: skip

    def preview(headers: dict[str, str], item: str) -> httpx.Response:
        return httpx.post(f"{scorer_url}/v1/preview", json={"item_ids": [item]},
                          headers=headers, timeout=60)  # fmt: skip

    try:
        deploy(keyed, DeploymentConfig(num_cpus=0.25), port=port)
        assert score({}).status_code == 401
        assert score({"X-API-Key": "not-a-key-0123456789"}).json()["detail"] == "unknown API key"
        for role in ("viewer", "operator", "service"):
            r = score(_as(role))
            assert r.status_code == 403 and "needs ingest" in r.json()["detail"], (role, r.text)
        r = score(_as("ingest"))
        assert r.status_code == 200 and r.json()["n_scored"] == 2, r.text
        item = r.json()["results"][0]["item_id"]
        bearer = {"Authorization": f"Bearer {API_KEYS['ingest']}"}
        assert score(bearer).status_code == 200
        # A page on another site cannot make the operator's browser score.
        evil = score({**_as("ingest"), "Origin": "http://evil.example"})
        assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
        assert score({**_as("ingest"), "Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert score({**_as("ingest"), "Origin": f"http://127.0.0.1:{port}"}).status_code == 200

        assert preview({}, item).status_code == 401
        assert preview(_as("ingest"), item).status_code == 403
        for role in ("service", "viewer", "operator"):
            r = preview(_as(role), item)
            assert r.status_code == 200 and r.json()["previews"][0]["ok"], (role, r.text)
        r = httpx.post(f"{scorer_url}/v1/explore", json={"view": "samples"}, timeout=60)
        assert r.status_code == 401
        r = httpx.post(f"{scorer_url}/v1/explore", json={"view": "samples"},
                       headers=_as("ingest"), timeout=60)  # fmt: skip
        assert r.status_code == 403

        # The API calls the scorer with its 'service' key: previews keep working.
        r = httpx.get(f"{api_url}/v1/items/{item}/preview.png", headers=_as("viewer"),
                      timeout=60)  # fmt: skip
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text[:200]
    finally:
        deploy(base, DeploymentConfig(num_cpus=0.25), port=port)

    # Open mode (no keys): loopback only, and still no cross-site requests.
    assert score({}).status_code == 200
    r = score({"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    with pytest.raises(DeployError, match="without API keys"):
        deploy(base, DeploymentConfig(num_cpus=0.25), host="0.0.0.0", port=port)

    # The API refuses cross-site state changes too, a right key notwithstanding.
    body = {"line": line, "params": {"method": "manual", "threshold": 1.0}, "why": "csrf"}
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", json=body,
                   headers={**_as("operator"), "Origin": "http://evil.example"})  # fmt: skip
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", json=body, headers=_as("operator"))
    assert r.status_code == 200, r.text
