"""`vlaewatch demo --exit-after --summary-json`: the whole pipeline as `make demo` runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.demo_run import BIN, DEMO_TIMEOUT, DemoRun, demo_env, free_port
from tests.e2e.test_console import SHOTS


def _nothing_left(*patterns: str) -> None:
    for pattern in patterns:
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"processes left behind: {pattern}"


@DEMO_TIMEOUT
def test_demo_streams_two_inspection_lines_and_shows_where(demo_run: DemoRun, browser: Any) -> None:
    # The default demo: two lines of generated parts (a grey fabric surface, a colour pill),
    # a model each, both thresholds calibrated from normal parts, the summary with where; it
    # keeps serving the console, where an alert card shows its overlay and zooms on a region.
    try:
        _assert_inspection_summary(demo_run.summary, demo_run.api_port)
        _console_shows_where(browser, demo_run.summary)
    finally:
        err = demo_run.stop()
    assert demo_run.proc.returncode == 0, err[-3000:]
    assert "stopping" in err
    assert "[6/6] summary" in err and "150/150 [" in err and "located" in err
    assert "64 calibration scores cannot guarantee alpha 0.01: using 1/(n+1) = 0.0154" in err
    _quiet(err)
    # Stopped with the console still open (its live stream): no traceback of the API's.
    assert "Exception in ASGI application" not in err and "graceful shutdown exceeded" not in err
    assert (demo_run.home / "demo-parts" / "fabric" / "masks").is_dir()  # the parts, as PNGs
    _nothing_left(demo_run.ray_tmp, str(demo_run.home / "redis"))


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
        # 64 calibration images cannot guarantee the asked 1 %: the demo calibrates at the
        # smallest rate they can, 1/65, and says so (checked on stderr by the caller).
        for target in ("image", "pixel"):
            assert cal[target]["false_alarm_rate"]["n_calibration"] == 64, cal[target]
            assert cal[target]["alpha"] == pytest.approx(1 / 65), cal[target]
        figures = summary["lines"][line]
        # Measured at the demo's 150 epochs: fabric 0.985 image, 0.999 pixel AUROC; the pill
        # 0.818 and 0.823 (0.882 and 0.891 in an earlier run); chance is 0.5.
        floors = {"cam1": (0.93, 0.95), "cam2": (0.7, 0.7)}[line]
        assert figures["image_auroc"] >= floors[0], figures
        assert figures["pixel_auroc"] >= floors[1], figures
        # Inside the interval the calibration promised for the rate on good parts (measured
        # 0.007 and 0.003 in [0, 0.056]). The promise is a 95 % one: the demo's parts and fits
        # are seeded, so a build holds it or not, and a change that takes a line outside it
        # moves what the operator was told to expect.
        low, high = figures["false_region_interval"]
        assert low <= figures["false_region_rate"] <= high, figures
        assert figures["false_region_target"] == cal["pixel"]["alpha"]
        if figures["localisation_hit_rate"] is not None:
            assert figures["localisation_hit_rate"] >= 0.9, figures
    assert any(f["localisation_hit_rate"] is not None for f in summary["lines"].values())
    # Floors a regression would cross, loose enough for a shared VM. Measured: recall 0.53
    # (fabric 0.76, the pill 0.33) at the 1/65 target; the rate streamed, 100 images/s since
    # the defect head halved the model's speed, 47 to 59 of those on a VM where fits took 2.2
    # times as long, 45 in the clean-clone run; p50 120 ms in earlier runs, 192 ms in that
    # run and 243 ms while a second demo trained beside this one.
    assert summary["recall"] >= 0.3, summary["recall"]
    assert summary["images_per_s"] >= 0.4 * 100, summary["images_per_s"]  # --rate 100
    assert 0 < summary["latency_ms_p50"] <= 300, summary["latency_ms_p50"]
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
    env, ray_tmp, home = demo_env(tmp_path)
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
