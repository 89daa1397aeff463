"""The operator console in headless Chromium against the running stack (scorer, API, Redis)."""

from __future__ import annotations

import io
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from playwright.sync_api import Browser, Page, Position

from tests.conftest import API_KEYS

ROOT = Path(__file__).resolve().parents[2]
# Screenshots refresh the README's images in docs/ only when asked (`make docs-shots`): a test
# run leaves tracked files as they are.
SHOTS = (ROOT / "docs" if os.environ.get("VLAEWATCH_DOC_SHOTS")
         else Path(tempfile.gettempdir()) / "vlaewatch-console-shots")  # fmt: skip
SHOTS.mkdir(exist_ok=True)


def _open(browser: Browser, api_url: str, key: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # The page runs under its Content-Security-Policy: anything it blocks is a defect.
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text)
            if "Content Security Policy" in m.text else None)  # fmt: skip
    page.blocked = blocked  # type: ignore[attr-defined]
    response = page.goto(f"{api_url}/")
    assert response is not None
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page.fill("#api-key", key)
    page.press("#api-key", "Tab")  # the change event stores the key and reloads the panels
    return page


def test_console_calibrates_and_handles_an_alert(
    browser: Browser, api_url: str, scorer_url: str, digits: Any
) -> None:
    op = {"X-API-Key": API_KEYS["operator"]}
    line = f"ui{uuid.uuid4().hex[:6]}"
    page = _open(browser, api_url, API_KEYS["operator"])
    page.wait_for_selector("#whoami:has-text('olga (operator)')")

    # Calibrate: preview a manual threshold for a new line, then apply it with a note.
    page.fill("#line", line)
    page.select_option("#method", "manual")
    page.fill("#param", "0")
    page.fill("#note", "browser test")
    page.click("#preview-btn")
    page.wait_for_selector("#result-summary:has-text('Dry run')")
    before = httpx.get(f"{api_url}/v1/thresholds/{line}", headers=op)
    assert before.status_code == 404 or before.json()["line"] == "default"  # nothing applied
    page.click("#apply-btn")
    page.wait_for_selector("#result-summary:has-text('Applied as version 1')")
    current = httpx.get(f"{api_url}/v1/thresholds/{line}", headers=op).json()
    assert (current["line"], current["value"], current["who"], current["why"]) == (
        line, 0.0, "olga", "browser test")  # fmt: skip
    page.wait_for_selector("#history tbody tr:has-text('browser test')")

    # Roll back from the history: a second version, then version 1's button, which makes
    # version 1's threshold current again as version 3 (the rest of the test relies on 0).
    page.fill("#param", "7")
    page.fill("#note", "too strict")
    page.click("#apply-btn")
    page.wait_for_selector("#result-summary:has-text('Applied as version 2')")
    page.fill("#note", "back to 0")
    page.click("#history button.rollback[data-version='1']")
    page.wait_for_selector("#history tbody tr:has-text('rollback'):has-text('current')")
    current = httpx.get(f"{api_url}/v1/thresholds/{line}", headers=op).json()
    assert (
        current["version"],
        current["value"],
        current["method"],
        current["who"],
        current["why"],
        current["params"]["to_version"],
    ) == (3, 0.0, "rollback", "olga", "back to 0", 1)
    history = httpx.get(f"{api_url}/v1/thresholds/{line}/history", headers=op).json()
    rows = [(v["version"], v["value"], v["method"], v["who"]) for v in history["versions"]]
    assert rows == [
        (3, 0.0, "rollback", "olga"),
        (2, 7.0, "manual", "olga"),
        (1, 0.0, "manual", "olga"),
    ]

    # A pixel threshold for the line too: its alerts carry regions and show the overlay.
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=op, json={
        "line": line, "target": "pixel", "params": {"method": "sigma", "k": 0}})  # fmt: skip
    assert r.status_code == 200, r.text
    time.sleep(1.1)  # the scorer rereads pixel thresholds at most once a second

    # Alerts: an item scored on that line appears live, with its preview, and is acknowledged.
    page.click("#tab-alerts")
    page.wait_for_selector("#live:has-text('connected')")
    item = f"{line}-0001"
    buf = io.BytesIO()
    np.save(buf, digits.test.images[digits.test.labels.astype(str) != "0"][:1, 0])
    r = httpx.post(f"{scorer_url}/v1/score", content=buf.getvalue(),
                   headers={"content-type": "application/x-npy"},
                   params={"line": line, "item_id": [item]}, timeout=60)  # fmt: skip
    assert r.status_code == 200
    card = f".alert-card[data-item='{item}']"
    page.wait_for_selector(card, timeout=30_000)
    page.wait_for_function(
        f'() => {{ const i = document.querySelector("{card} img.preview");'
        " return i && i.complete && i.naturalWidth > 0; }",
        timeout=30_000,
    )
    # Where it is defective: the overlay (regions outlined, beside the repaired part) and
    # the regions in words.
    page.wait_for_function(
        f'() => {{ const i = document.querySelector("{card} img.overlay");'
        " return i && i.complete && i.naturalWidth > 0; }",
        timeout=30_000,
    )
    alert = httpx.get(f"{api_url}/v1/alerts/{item}", headers=op).json()
    largest = alert["regions"][0]
    text = page.inner_text(f"{card} .regions")
    assert f"{len(alert['regions'])} region" in text
    assert f"{largest['w']}×{largest['h']} px at ({largest['x']}, {largest['y']})" in text
    # Clicking the largest region on the overlay zooms in on it; the operator marks it wrong.
    box = page.locator(f"{card} img.overlay").bounding_box()
    assert box is not None
    side = 28  # the overlay: the part, a one-pixel gap, the repaired part
    centre: Position = {
        "x": (largest["x"] + largest["w"] / 2) / (2 * side + 1) * box["width"],
        "y": (largest["y"] + largest["h"] / 2) / side * box["height"],
    }
    page.click(f"{card} img.overlay", position=centre)
    page.wait_for_selector(f"{card} canvas.zoom:not([hidden])")
    assert page.inner_text(f"{card} .zoom-caption").startswith("region #1 up close")
    assert page.get_attribute(f"{card} .region.zoomed", "data-index") == "0"
    lit = page.evaluate(
        f'() => {{ const c = document.querySelector("{card} canvas.zoom");'
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " return c.width > 0 && d.some((v, i) => i % 4 !== 3 && v > 0); }"
    )
    assert lit, "the zoom drew nothing"
    page.click(f"{card} .region[data-index='0'] .wrong-btn")
    page.wait_for_selector(f"{card} .region[data-index='0'] .verdict:has-text('marked wrong')")
    events = httpx.get(f"{api_url}/v1/alerts/{item}", headers=op).json()["events"]
    assert (events[-1]["action"], events[-1]["region"], events[-1]["verdict"]) == (
        "region labelled", 0, "wrong")  # fmt: skip
    page.click(f"{card} .ack-btn")
    page.wait_for_selector(f"{card} .state:has-text('acknowledged')")
    alert = httpx.get(f"{api_url}/v1/alerts/{item}", headers=op).json()
    assert alert["state"] == "acknowledged" and alert["events"][-1]["who"] == "olga"
    page.screenshot(path=str(SHOTS / "console-alerts.png"), full_page=True)

    # The calibrate panel as an operator sees it: the default line, live scores of every line
    # beside the calibration set, and a dry-run proposal with its impact.
    page.click("#tab-calibrate")
    page.fill("#line", "default")
    page.press("#line", "Tab")
    page.select_option("#method", "fpr")
    page.fill("#param", "0.05")
    page.fill("#note", "")
    page.click("#preview-btn")
    page.wait_for_selector("#result-summary:has-text('Dry run')")
    page.wait_for_selector("#history-line:has-text('default')")
    page.screenshot(path=str(SHOTS / "console-calibrate.png"), full_page=True)
    assert not page.blocked, page.blocked  # type: ignore[attr-defined]
    # The key is kept for the tab's session only, never in localStorage.
    assert page.evaluate("localStorage.getItem('vlaewatch-key')") is None
    assert page.evaluate("sessionStorage.getItem('vlaewatch-key')") == API_KEYS["operator"]
    page.close()


def test_console_with_a_viewer_key_cannot_change_anything(browser: Browser, api_url: str) -> None:
    page = _open(browser, api_url, API_KEYS["viewer"])
    page.wait_for_selector("#whoami:has-text('victor (viewer)')")
    assert page.is_disabled("#apply-btn")
    page.click("#preview-btn")  # a viewer's dry run is refused by the API, and says so
    page.wait_for_selector("#result .error:has-text('403')")
    page.close()
