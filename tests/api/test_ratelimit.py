"""Request rate limits: a key over its rate gets 429 with a reason and Retry-After, other keys
are unaffected, and the key is admitted again once its bucket refills; the routes open to
anyone (health, metrics) are limited the same way per client address."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.ratelimit import RateLimiter
from tests.conftest import API_KEYS, ApiProcess

OP = {"X-API-Key": API_KEYS["operator"]}
VIEW = {"X-API-Key": API_KEYS["viewer"]}


def test_token_bucket_admits_bursts_then_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [None, None, None]
    wait = limiter.take("a", now=0.0)
    assert wait is not None and abs(wait - 0.5) < 1e-9  # one token every 0.5 s
    assert limiter.take("b", now=0.0) is None  # its own bucket
    assert limiter.take("a", now=0.5) is None  # refilled one token
    assert limiter.take("a", now=0.5) is not None
    assert RateLimiter.retry_after_header(0.2) == "1"
    assert RateLimiter(rate=0, burst=1).take("a", now=0.0) is None  # 0: no limit
    small = RateLimiter(rate=1.0, burst=1, max_callers=2)
    for caller in ("x", "y", "z"):
        small.take(caller, now=0.0)
    assert len(small._buckets) == 2  # bounded memory


@pytest.fixture(scope="module")
def limited(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """An API with small limits: 2 requests/s in bursts of 5 per key and per address."""
    home = tmp_path_factory.mktemp("ratelimit")
    # Keys from VLAEWATCH_API_KEYS_FILE join those of VLAEWATCH_API_KEYS.
    keys_file = home / "api-keys"
    keys_file.write_text("# one key per line\nfile-viewer-key-0123456789:viewer:filed\n")
    api = ApiProcess(redis_server.url, None, home, key_prefix=f"rl{uuid.uuid4().hex[:6]}",
                     env={"VLAEWATCH_API_KEYS_FILE": str(keys_file)},
                     rate_limit=2, rate_burst=5, login_failure_burst=3, max_streams_per_key=2,
                     max_streams=3)  # fmt: skip
    yield api
    api.stop()


def test_a_key_over_its_rate_gets_429_and_others_do_not(limited: ApiProcess) -> None:
    with httpx.Client(base_url=limited.url, timeout=10) as http:
        filed = http.get("/v1/me", headers={"X-API-Key": "file-viewer-key-0123456789"})
        assert filed.json() == {"name": "filed", "role": "viewer"}, filed.text
        codes = [http.get("/v1/thresholds", headers=OP).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and 429 in codes[5:], codes
        r = http.get("/v1/thresholds", headers=OP)
        assert r.status_code == 429
        assert "rate limit" in r.json()["detail"] and "olga" in r.json()["detail"]
        retry = int(r.headers["retry-after"])
        assert retry >= 1
        assert http.get("/v1/thresholds", headers=VIEW).status_code == 200  # own bucket
        assert http.get("/v1/health").status_code == 200  # the address's bucket, not a key's
        time.sleep(retry)
        assert http.get("/v1/thresholds", headers=OP).status_code == 200

        # Failed authentications are limited per address, before any key is looked up:
        # past the burst a right key from that address waits too. Before, a guesser was
        # never slowed down (authentication ran before the limiter, which counts keys).
        bad = {"X-API-Key": "wrong-key-0123456789"}
        codes = [http.get("/v1/thresholds", headers=bad).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429], codes
        r = http.get("/v1/thresholds", headers=VIEW)
        assert r.status_code == 429 and "failed authentications" in r.json()["detail"]
        time.sleep(int(r.headers["retry-after"]))
        assert http.get("/v1/thresholds", headers=VIEW).status_code == 200

        # Live streams each hold a Redis connection: at most 2 per key, 3 in all here.
        # Before, any number.
        time.sleep(3)  # the keys' request buckets refill
        with contextlib.ExitStack() as held:

            def open_stream(headers: dict[str, str]) -> httpx.Response:
                return held.enter_context(http.stream("GET", "/v1/stream", headers=headers))

            assert [open_stream(OP).status_code for _ in range(2)] == [200, 200]
            over = open_stream(OP)
            assert over.status_code == 429 and "2 live streams" in over.read().decode()
            assert open_stream(VIEW).status_code == 200
            full = open_stream(VIEW)
            assert full.status_code == 503 and "3 live streams" in full.read().decode()
        # Closed, they are given back (once the server sees the connections go).
        deadline, status = time.monotonic() + 10, 0
        while status != 200 and time.monotonic() < deadline:
            with http.stream("GET", "/v1/stream", headers=VIEW) as again:
                status = again.status_code
            time.sleep(0.2)
        assert status == 200


def test_public_routes_are_limited_per_address(limited: ApiProcess) -> None:
    """/v1/health and /metrics need no key: each client address has a bucket of its own, at
    the keys' rate, with the same 429, reason and Retry-After. Every 127.x.y.z is this host
    (loopback), so two addresses are two clients here."""

    def client(address: str) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=limited.url, transport=transport, timeout=10)

    with client("127.0.0.2") as one, client("127.0.0.3") as two, client("127.0.0.4") as three:
        for http, path, address in [
            (one, "/v1/health", "127.0.0.2"),
            (three, "/metrics", "127.0.0.4"),
        ]:
            answers = [http.get(path) for _ in range(8)]
            codes = [r.status_code for r in answers]
            assert codes[:5] == [200] * 5 and 429 in codes[5:], (path, codes)
            refused = next(r for r in answers if r.status_code == 429)
            detail = refused.json()["detail"]
            assert "rate limit" in detail and f"address {address}" in detail, detail
            assert int(refused.headers["retry-after"]) >= 1
            # Another address is not held back by this one's.
            assert two.get(path).status_code == 200
        time.sleep(int(refused.headers["retry-after"]))
        assert one.get("/v1/health").status_code == 200
        assert three.get("/metrics").status_code == 200
