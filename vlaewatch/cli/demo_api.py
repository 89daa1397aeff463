"""The demo's side of the API: the API served in a thread of this process, the listener that
times alerts as the API shows them, and the calls that wait for the services and calibrate."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import httpx
import uvicorn

from api.config import ApiConfig
from vlaewatch.cli.args import UsageError


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


class ApiThread:
    """uvicorn serving the API app in a daemon thread (signals stay with the main thread)."""

    def __init__(self, cfg: ApiConfig, host: str, port: int) -> None:
        from api.app import ApiServer, create_app

        app = create_app(cfg)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=2)  # fmt: skip
        self.server = ApiServer(config, app)
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout_s: float = 30) -> ApiThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DemoError(f"the API did not start on {self.url} (port in use?)")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class AlertListener:
    """Reads ``/v1/stream`` and notes when each alert became visible."""

    def __init__(self, api_url: str, headers: dict[str, str]) -> None:
        self.url = f"{api_url}/v1/stream"
        self.headers = headers
        self.seen: dict[str, tuple[float, dict[str, Any]]] = {}
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._resp: httpx.Response | None = None
        self.thread = threading.Thread(target=self._run, name="alerts", daemon=True)

    def start(self) -> AlertListener:
        self.thread.start()
        if not self.ready.wait(15):
            raise DemoError("could not subscribe to the API's alert stream")
        return self

    def _run(self) -> None:
        timeout = httpx.Timeout(10, read=None)
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=timeout) as resp:
                self._resp = resp
                for text in resp.iter_lines():
                    if text.startswith(":"):
                        self.ready.set()
                    elif text.startswith("data:"):
                        alert = json.loads(text[5:])
                        self.seen.setdefault(alert["item_id"], (time.time(), alert))
        except Exception as exc:  # closing from stop() raises whatever the read was doing
            if not self._stop.is_set():  # else: the demo is stopping, as asked
                print(f"alert stream closed: {exc}", file=sys.stderr)

    def stop(self) -> None:
        """Hang up, so the API's shutdown does not wait for this open stream."""
        self._stop.set()
        if self._resp is not None:
            self._resp.close()
        self.thread.join(5)


def wait_consumed(api_url: str, timeout_s: float = 60) -> None:
    """Until the API's consumer group has read and acknowledged everything."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"{api_url}/v1/health", timeout=5).json()
        if health.get("lag") == 0 and health.get("pending") == 0:
            return
        time.sleep(0.2)
    raise DemoError("the API did not consume the score stream in time")


def wait_for_models(api_url: str, versions: set[str], timeout_s: float = 60) -> None:
    """Until the scorer has announced every one of ``versions`` (their calibration scores,
    and the lines they score) to the API."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"{api_url}/v1/health", timeout=5).json()
        if versions <= set((health.get("line_models") or {}).values()):
            return
        time.sleep(0.2)
    raise UsageError(f"the scorer did not announce models {sorted(versions)} in {timeout_s}s")


def calibrate(
    api_url: str,
    headers: dict[str, str],
    line: str,
    target: str,
    version: str,
    alpha: float,
    n_calibration: int,
) -> dict[str, Any]:
    """``fpr`` at ``alpha``, or at the smallest alpha the calibration set supports (the
    answer's ``alpha``)."""
    from api.calibrate import supported_alpha

    used = supported_alpha(alpha, n_calibration)
    body = {"line": line, "target": target, "params": {"method": "fpr", "alpha": used},
            "model_version": version, "why": "vlaewatch demo"}  # fmt: skip
    resp = httpx.post(f"{api_url}/v1/thresholds/calibrate", json=body, headers=headers)
    if resp.status_code != 200:
        raise UsageError(f"calibration failed: {resp.status_code} {resp.text[:300]}")
    return {**resp.json(), "alpha": used}
