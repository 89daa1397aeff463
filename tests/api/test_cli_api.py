"""`vlaewatch api` as documented: the curl examples of docs/http.md, and its refusals."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import API_KEYS
from vlaewatch.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_documented_curl_examples_work(
    api_url: str, scorer_url: str, digits: Any, tmp_path: Path
) -> None:
    op = {"X-API-Key": API_KEYS["operator"]}
    body = {"line": "cam1", "params": {"method": "manual", "threshold": 0}}
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=op, json=body)
    assert r.status_code == 200
    buf = io.BytesIO()
    np.save(buf, digits.test.images[:1, 0])
    r = httpx.post(f"{scorer_url}/v1/score", content=buf.getvalue(),
                   headers={"content-type": "application/x-npy"},
                   params={"line": "cam1", "item_id": ["cam1-000123"]}, timeout=60)  # fmt: skip
    assert r.status_code == 200

    doc = (ROOT / "docs" / "http.md").read_text()
    commands = re.findall(r"^curl .*http://127\.0\.0\.1:8080/v1/.*$", doc, re.M)
    assert len(commands) == 4, commands
    port = api_url.rsplit(":", 1)[1]
    env = {**os.environ, "VLAEWATCH_KEY": API_KEYS["operator"]}
    outputs = []
    for command in commands:
        for _ in range(50):  # the alert appears once the consumer has read the score
            out = subprocess.run(command.replace("8080", port), shell=True, cwd=tmp_path,
                                 env=env, capture_output=True, text=True, check=True,
                                 timeout=60)  # fmt: skip
            if "/v1/alerts?" not in command or "cam1-000123" in out.stdout:
                break
        outputs.append(out.stdout)
    calibrated, listed, acked, _ = outputs
    assert "applied" in calibrated, calibrated
    assert json.loads(calibrated)["applied"] is False and json.loads(calibrated)["threshold"] > 0
    assert "cam1-000123" in {a["item_id"] for a in json.loads(listed)["items"]}
    assert json.loads(acked)["state"] == "acknowledged"
    with Image.open(tmp_path / "panel.png") as im:
        assert im.format == "PNG" and im.width > im.height

    # The first score set the default from data, as documented.
    default = httpx.get(f"{api_url}/v1/thresholds", headers=op).json()["default"]
    assert default["who"] == "system" and default["method"] == "fpr"
    assert default["params"]["alpha"] == pytest.approx(1 / 81)  # 80 calibration scores


def test_no_keys_means_loopback_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VLAEWATCH_API_KEYS", raising=False)
    assert main(["api", "--host", "0.0.0.0", "--redis-url", "redis://127.0.0.1:1"]) == 2
    assert "without API keys" in capsys.readouterr().err
    monkeypatch.setenv("VLAEWATCH_API_KEYS", "fifteen-chars-k:operator")
    assert main(["api", "--redis-url", "redis://127.0.0.1:1"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    # The example manifests' placeholders are refused, however long.
    monkeypatch.setenv("VLAEWATCH_API_KEYS", "change-me-operator-key:operator:ops")
    assert main(["api", "--redis-url", "redis://127.0.0.1:1"]) == 2
    assert "placeholder" in capsys.readouterr().err
    monkeypatch.setenv("VLAEWATCH_API_KEYS", "long-enough-key-0:admin")
    assert main(["api", "--redis-url", "redis://127.0.0.1:1"]) == 2
    assert "role 'admin'" in capsys.readouterr().err
    assert main(["api", "--alert-retention-s", "10", "--redis-url", "redis://127.0.0.1:1"]) == 2
    assert "--alert-retention-s must be at least 60" in capsys.readouterr().err
    monkeypatch.setenv("VLAEWATCH_API_KEYS", "long-enough-key-0:operator")
    assert main(["api", "--initial-fpr", "2", "--redis-url", "redis://127.0.0.1:1"]) == 2
    assert "initial_fpr" in capsys.readouterr().err  # a one-line reason, not a traceback
