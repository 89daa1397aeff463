"""`vlaewatch demo --exit-after --summary-json`: the whole pipeline as `make demo` runs it."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_console import SHOTS, browser  # noqa: F401  (the browser fixture)

BIN = Path(sys.executable).parent / "vlaewatch"


def free_port() -> int:
    """A free port below the ephemeral range (and above Ray's worker ports): the demo binds it
    minutes later, after training, and an ephemeral port may have gone to a Ray process by
    then (seen: "Failed to bind to address")."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 30_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-30000")


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


def _summary_in_time(
    proc: subprocess.Popen[str], out: Path, err: Path, timeout_s: float = 1200
) -> Any:
    # Two lines' models of 150 epochs each: 400 s ran out for 100 epochs each on a shared
    # 2-core VM where a fit took 2.2 times as long as where the demo was first timed.
    deadline = time.monotonic() + timeout_s
    while not out.exists():
        assert proc.poll() is None, err.read_text()[-3000:]
        assert time.monotonic() < deadline, "no summary in time"
        time.sleep(0.5)
    time.sleep(0.5)
    return json.loads(out.read_text())


def _stop(proc: subprocess.Popen[str], err_file: Path) -> str:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    err = err_file.read_bytes().decode()  # as written: a progress bar's \r kept
    assert proc.returncode == 0, err[-3000:]
    assert "stopping" in err
    return err


def test_demo_streams_two_inspection_lines_and_shows_where(
    tmp_path: Path,
    browser: Any,  # noqa: F811
) -> None:
    # The default demo: two lines of generated parts (a grey fabric surface, a colour pill),
    # a model each, both thresholds calibrated from normal parts, the summary with where; it
    # keeps serving the console, where an alert card shows its overlay and zooms on a region.
    env, ray_tmp, home = _env(tmp_path)
    out, err_file, api_port = tmp_path / "out.json", tmp_path / "demo.err", free_port()
    # stderr to a file, not a pipe: training prints more than a pipe holds unread.
    with err_file.open("w") as stderr:
        proc = subprocess.Popen(
            [str(BIN), "demo", "--summary-json", str(out), "--scorer-port", str(free_port()),
             "--api-port", str(api_port)],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        summary = _summary_in_time(proc, out, err_file)
        _assert_inspection_summary(summary, api_port)
        _console_shows_where(browser, summary)
    finally:
        err = _stop(proc, err_file)
    assert "[6/6] summary" in err and "150/150 [" in err and "located" in err
    _quiet(err)
    # Stopped with the console still open (its live stream): no traceback of the API's.
    assert "Exception in ASGI application" not in err and "graceful shutdown exceeded" not in err
    assert (home / "demo-parts" / "fabric" / "masks").is_dir()  # the parts, as PNGs
    _nothing_left(ray_tmp, str(home / "redis"))


def _quiet(err: str) -> None:
    """What a newcomer sees: the demo's steps, a progress bar each, the summary; Ray's,
    Serve's and the workers' logs stay in files (asked for with --verbose)."""
    lines = err.split("\n")  # a progress bar redraws its line with \r: one line
    assert len(lines) < 40, err
    for noise in ("Traceback", "TrainingReport(", "POST /v1/score", "(RayTrainWorker",
                  "(ServeReplica", "INFO "):  # fmt: skip
        assert noise not in err, noise
    assert "Ray logs in /" in err


def _assert_inspection_summary(summary: dict[str, Any], api_port: int) -> None:
    assert summary["dataset"] == "inspection"
    assert summary["items_scored"] == 655 and summary["items_failed"] == 0
    assert 0.05 <= summary["items_anomalous"] / summary["items_scored"] <= 0.10
    versions = summary["model_versions"]
    assert set(versions) == {"cam1", "cam2"} and versions["cam1"] != versions["cam2"]
    # Precision: 0.70 measured with the defect head (23 alerts on defects, 10 on ~600 good
    # parts), 0.53 in another run (28 and 25): a threshold from 64 calibration images is the
    # largest of them, whose false-alarm rate varies from draw to draw as Beta(1, 64), up to
    # 0.10 at its 99.9th percentile. A model at chance would be near the defects' share, 0.08.
    assert summary["alerts_on_anomalies"] > 0 and summary["precision"] >= 0.4
    assert summary["alerts"] == summary["alerts_on_normal"] + summary["alerts_on_anomalies"]
    for line in ("cam1", "cam2"):
        cal = summary["calibration"][line]
        assert cal["image"]["target"] == "image" and cal["pixel"]["target"] == "pixel"
        figures = summary["lines"][line]
        # The pill (cam2) measured 0.65 to 0.68 image AUROC here; chance is 0.5.
        assert figures["image_auroc"] > 0.6 and figures["pixel_auroc"] > 0.7, figures
        # The 95 % interval is missed by one line in 20 runs by design (fabric: 0.063 against
        # [0, 0.056] once): bounded by the 99.9th percentile above, plus the sampling noise of
        # 300 good parts.
        low, _ = figures["false_region_interval"]
        assert low <= figures["false_region_rate"] <= 0.13, figures
        assert figures["false_region_target"] == cal["pixel"]["alpha"]
        if figures["localisation_hit_rate"] is not None:
            assert figures["localisation_hit_rate"] >= 0.9, figures
    assert any(f["localisation_hit_rate"] is not None for f in summary["lines"].values())
    # Floors a regression would cross (measured: recall 0.22 at a 1.5 % false-alarm target,
    # and p50 22 ms, before the defect head; the rate streamed, 100 images/s since the head
    # halved the model's speed, 47 to 59 of those on a VM where fits took 2.2 times as long),
    # loose enough for a shared VM.
    assert summary["recall"] >= 0.1, summary["recall"]
    assert summary["images_per_s"] >= 0.4 * 100, summary["images_per_s"]  # --rate 100
    assert 0 < summary["latency_ms_p50"] <= 250, summary["latency_ms_p50"]
    assert summary["latency_ms_p50"] <= summary["latency_ms_p99"] <= 3000
    assert summary["urls"]["console"] == f"http://127.0.0.1:{api_port}/"
    assert summary["urls"]["ray_dashboard"].startswith("http://127.0.0.1:")


def _console_shows_where(page_of: Any, summary: dict[str, Any]) -> None:
    """The demo's console (open on loopback, no key): inspection alerts with their overlays;
    the first card's largest region zoomed and marked right. Screenshot for the README."""
    console = summary["urls"]["console"]
    page = page_of.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(console)
        page.click("#tab-alerts")
        page.wait_for_selector("#live:has-text('connected')")
        card = ".alert-card:has(img.overlay)"
        page.wait_for_selector(card, timeout=30_000)
        page.wait_for_function(
            '() => [...document.querySelectorAll(".alert-card img.overlay")]'
            ".every((i) => i.complete && i.naturalWidth > 0)",
            timeout=60_000,
        )
        first = page.locator(card).first
        item = first.get_attribute("data-item")
        first.locator(".region[data-index='0'] .zoom-btn").click()
        first.locator("canvas.zoom:not([hidden])").wait_for()
        first.locator(".region[data-index='0'] .right-btn").click()
        first.locator(".region[data-index='0'] .verdict:has-text('marked right')").wait_for()
        alert = httpx.get(f"{console}v1/alerts/{item}", timeout=10).json()
        assert alert["regions"] and alert["events"][-1]["verdict"] == "right"
        page.screenshot(path=str(SHOTS / "console-inspection.png"), full_page=False)
    finally:
        page.close()


def test_digits_demo_keeps_its_own_summary(tmp_path: Path) -> None:
    # --dataset digits: one model shared by both lines, the test set split between them.
    env, ray_tmp, home = _env(tmp_path)
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [str(BIN), "demo", "--dataset", "digits", "--epochs", "1", "--rate", "2000",
         "--batch", "50", "--exit-after", "--summary-json", str(out),
         "--scorer-port", str(free_port()), "--api-port", str(free_port())],
        env=env, capture_output=True, timeout=600,
    )  # fmt: skip
    stderr = proc.stderr.decode()  # not text=True: that would turn a bar's \r into lines
    assert proc.returncode == 0, stderr[-4000:]
    summary = json.loads(out.read_text())
    assert summary == json.loads((home / "demo-summary.json").read_text())
    assert proc.stdout == b""  # the summary is in its files, in brief on stderr
    _quiet(stderr)
    assert summary["dataset"] == "digits" and summary["items_scored"] == 1000
    assert summary["items_failed"] == 0 and set(summary["alerts_by_line"]) == {"cam1", "cam2"}
    assert summary["lines"] == {} and set(summary["calibration"]) == {"default"}
    assert len(set(summary["model_versions"].values())) == 1
    assert "[6/6] summary" in stderr and "1/1 [" in stderr
    _nothing_left(ray_tmp, str(home / "redis"))
