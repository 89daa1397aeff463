"""The API's request body limit (docs/http.md: "request bodies over 64 KiB are refused with
413"), at its boundary, on every route that takes a body, declared or sent chunked."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEYS, ApiProcess

OP = {"X-API-Key": API_KEYS["operator"], "Content-Type": "application/json"}
LIMIT = 64 * 1024  # ApiConfig.max_body_bytes, which the process below runs with
# Every route with a body, and a body it accepts: each answers as it would to that body
# (200, or 404 for an item or a line without history) once the whole body is read.
ROUTES: list[tuple[str, bytes]] = [
    (
        "/v1/thresholds/calibrate",
        b'{"line": "limits", "params": {"method": "manual", "threshold": 1.0}, "dry_run": true}',
    ),
    ("/v1/thresholds/limits/rollback", b'{"why": "boundary"}'),
    ("/v1/alerts/limits-1/acknowledge", b'{"note": "boundary"}'),
    ("/v1/alerts/limits-1/resolve", b'{"note": "boundary"}'),
    ("/v1/alerts/limits-1/label", b'{"label": "anomaly"}'),
    ("/v1/alerts/limits-1/regions/0/label", b'{"verdict": "right"}'),
    ("/v1/items/limits-1/label", b'{"label": "normal"}'),
]


@pytest.fixture(scope="module")
def api(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    home: Path = tmp_path_factory.mktemp("limits")
    process = ApiProcess(redis_server.url, None, home, key_prefix=f"lim{uuid.uuid4().hex[:6]}")
    yield process
    process.stop()


def _padded(body: bytes, size: int) -> bytes:
    """``body`` (a JSON object) padded with whitespace before its closing brace to ``size``
    bytes: still the same JSON."""
    return body[:-1] + b" " * (size - len(body)) + b"}"


def _chunks(body: bytes) -> Iterator[bytes]:
    """``body`` as a generator: httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(body), 4096):
        yield body[start : start + 4096]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_at_the_limit_is_read_one_byte_over_is_413_with_a_reason(
    api: ApiProcess, chunked: bool
) -> None:
    with httpx.Client(base_url=api.url, headers=OP, timeout=30) as http:

        def post(path: str, body: bytes) -> httpx.Response:
            return http.post(path, content=_chunks(body) if chunked else body)

        for path, body in ROUTES:
            small = post(path, body)
            assert small.status_code in (200, 404), (path, small.text)
            # At the limit: read whole and parsed, the same answer as the small body's.
            at = post(path, _padded(body, LIMIT))
            assert at.status_code == small.status_code, (path, at.text)
            if small.status_code == 404:
                assert at.json() == small.json()
            over = post(path, _padded(body, LIMIT + 1))
            assert over.status_code == 413, (path, over.text)
            # An ErrorBody, as every error is (docs/http.md), with the limit as its reason.
            assert over.headers["content-type"] == "application/json", (path, over.headers)
            assert over.json() == {"detail": f"request body over the limit of {LIMIT} bytes"}
