"""The console's explorer views in headless Chromium: the latent map with flagged items, and
the nearest normal items beside an alert's preview."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import numpy as np
from playwright.sync_api import Browser

from tests.conftest import API_KEYS
from tests.e2e.test_console import SHOTS, _open


def _loaded(selector: str) -> str:
    return (f'() => {{ const i = document.querySelector("{selector}");'
            " return i && i.complete && i.naturalWidth > 0; }")  # fmt: skip


def test_console_shows_the_latent_map_and_nearest_normal_items(
    browser: Browser,
    api_url: str,
    scorer_url: str,
    digits: Any,
) -> None:
    op = {"X-API-Key": API_KEYS["operator"]}
    line = f"ex{uuid.uuid4().hex[:6]}"
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=op,
                   json={"line": line, "params": {"method": "fpr", "alpha": 0.05}})  # fmt: skip
    assert r.status_code == 200, r.text
    labels = digits.test.labels.astype(str)
    images = np.concatenate([digits.test.images[labels == "0"][:30, 0],
                             digits.test.images[labels == "7"][:10, 0]])  # fmt: skip
    ids = [f"{line}-{i:03d}" for i in range(len(images))]
    buf = io.BytesIO()
    np.save(buf, images)
    r = httpx.post(f"{scorer_url}/v1/score", content=buf.getvalue(), timeout=60,
                   headers={"content-type": "application/x-npy"},
                   params={"line": line, "item_id": ids})  # fmt: skip
    assert r.status_code == 200

    page = _open(browser, api_url, API_KEYS["viewer"])
    page.wait_for_selector("#whoami:has-text('victor (viewer)')")
    page.click("#tab-alerts")
    page.fill("#alert-line", line)
    page.press("#alert-line", "Tab")
    card = f".alert-card[data-item='{ids[-1]}']"
    page.wait_for_selector(card, timeout=30_000)
    page.wait_for_function(_loaded(f"{card} img.neighbours"), timeout=30_000)
    width = page.evaluate(f'document.querySelector("{card} img.neighbours").naturalWidth')
    assert width == (6 * 29 - 1) * 3  # the item and its 5 nearest normal items, scale 3

    page.click("#tab-explore")
    page.fill("#map-line", line)
    page.select_option("#map-method", "pca")
    page.wait_for_function(_loaded("#latent-map"), timeout=60_000)
    page.wait_for_selector(f"#map-summary tbody tr:has-text('{line}')", timeout=60_000)
    size = page.evaluate('[document.querySelector("#latent-map").naturalWidth,'
                         ' document.querySelector("#latent-map").naturalHeight]')  # fmt: skip
    assert size == [640, 480]
    row = page.inner_text(f"#map-summary tbody tr:has-text('{line}')").split()
    assert row[1] == str(len(ids)) and int(row[2]) >= 1
    page.screenshot(path=str(SHOTS / "console-explore.png"), full_page=True)
    page.close()
