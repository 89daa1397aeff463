"""`vlaewatch demo --exit-after --summary-json`: the whole pipeline as `make demo` runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from scorer.redis_server import free_port

BIN = Path(sys.executable).parent / "vlaewatch"


def test_demo_runs_the_pipeline_and_summarises(tmp_path: Path) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="vwdemo", dir="/tmp")
    home = tmp_path / "home"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "VLAEWATCH_HOME": str(home), "RAY_ADDRESS": ""}
    for name in ("REDIS_URL", "VLAEWATCH_API_KEYS"):
        env.pop(name, None)
    out = tmp_path / "out.json"
    api_port = free_port()
    proc = subprocess.run(
        [str(BIN), "demo", "--exit-after", "--summary-json", str(out),
         "--scorer-port", str(free_port()), "--api-port", str(api_port)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    # The same summary ends stdout (Ray may print its workers' lines before it).
    stdout = "\n" + proc.stdout
    assert summary == json.loads(stdout[stdout.rindex("\n{\n") + 1 :])
    assert summary["items_scored"] == 1000 and summary["items_failed"] == 0
    assert summary["auroc"] > 0.9
    assert set(summary["alerts_by_line"]) == {"cam1", "cam2"}
    assert all(n > 0 for n in summary["alerts_by_line"].values())
    assert summary["alerts_on_anomalies"] > 0 and summary["precision"] > 0.9
    assert summary["alerts"] == summary["alerts_on_normal"] + summary["alerts_on_anomalies"]
    for key in ("recall", "images_per_s", "latency_ms_p50", "latency_ms_p99", "threshold"):
        assert summary[key] is not None and summary[key] > 0, key
    assert summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    assert summary["urls"]["console"] == f"http://127.0.0.1:{api_port}/"
    assert summary["urls"]["ray_dashboard"].startswith("http://127.0.0.1:")
    assert "[6/6] summary" in proc.stderr and "epoch 5/5" in proc.stderr
    for pattern in (ray_tmp, str(home / "redis")):
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"processes left behind: {pattern}"
