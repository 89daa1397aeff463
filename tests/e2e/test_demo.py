"""`vlaewatch demo --exit-after --summary-json`: the whole pipeline as `make demo` runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from scorer.redis_server import free_port

BIN = Path(sys.executable).parent / "vlaewatch"


def _env(tmp_path: Path) -> tuple[dict[str, str], str, Path]:
    ray_tmp = tempfile.mkdtemp(prefix="vwdemo", dir="/tmp")
    home = tmp_path / "home"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "VLAEWATCH_HOME": str(home), "RAY_ADDRESS": ""}
    for name in ("REDIS_URL", "VLAEWATCH_API_KEYS"):
        env.pop(name, None)
    return env, ray_tmp, home


def _nothing_left(*patterns: str) -> None:
    for pattern in patterns:
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"processes left behind: {pattern}"


def test_demo_runs_the_pipeline_and_summarises(tmp_path: Path) -> None:
    env, ray_tmp, home = _env(tmp_path)
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
    assert summary["auroc"] > 0.95
    assert set(summary["alerts_by_line"]) == {"cam1", "cam2"}
    assert all(n > 0 for n in summary["alerts_by_line"].values())
    assert summary["alerts_on_anomalies"] > 0 and summary["precision"] > 0.9
    assert summary["alerts"] == summary["alerts_on_normal"] + summary["alerts_on_anomalies"]
    for key in ("recall", "images_per_s", "latency_ms_p50", "latency_ms_p99", "threshold"):
        assert summary[key] is not None and summary[key] > 0, key
    assert summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    assert summary["urls"]["console"] == f"http://127.0.0.1:{api_port}/"
    assert summary["urls"]["ray_dashboard"].startswith("http://127.0.0.1:")
    assert "[6/6] summary" in proc.stderr and "epoch 30/30" in proc.stderr
    _nothing_left(ray_tmp, str(home / "redis"))


def test_demo_keeps_serving_the_console_until_ctrl_c(tmp_path: Path) -> None:
    env, ray_tmp, home = _env(tmp_path)
    out, api_port = tmp_path / "out.json", free_port()
    proc = subprocess.Popen(
        [str(BIN), "demo", "--epochs", "1", "--rate", "2000", "--batch", "50",
         "--summary-json", str(out), "--scorer-port", str(free_port()),
         "--api-port", str(api_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not out.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no summary in time"
            time.sleep(0.5)
        time.sleep(0.5)
        page = httpx.get(f"http://127.0.0.1:{api_port}/", timeout=10)
        assert page.status_code == 200 and "vlaewatch console" in page.text
        assert proc.poll() is None  # still serving after the summary
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopping" in err
    _nothing_left(ray_tmp, str(home / "redis"))
