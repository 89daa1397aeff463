"""Grafana provisioning end to end over HTTP, and the API's annotations.

No Grafana server can be installed on these machines, so the test serves the Grafana HTTP
endpoints that grafana-client calls from a small stand-in (``FakeGrafana`` below: a real HTTP
server on loopback, storing what it is sent the way Grafana's API does). It is a stand-in for
Grafana, not for grafana-client or HTTP: both run for real."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI, HTTPException, Request

from contract.records import ScoreRecord
from contract.redis_server import free_port
from deploy.dashboards import DASHBOARDS, DATASOURCE_UID, RULES
from deploy.grafana import agrees
from tests.api.test_api import _consumed
from tests.conftest import API_KEYS, ApiProcess
from vlaewatch.cli import main


class FakeGrafana:
    """The subset of Grafana's HTTP API that provisioning and annotations use."""

    def __init__(self) -> None:
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.contact_points: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.annotations: list[dict[str, Any]] = []
        self.writes: list[str] = []
        self.app = self._routes()

    def _routes(self) -> FastAPI:
        app = FastAPI()

        def find(store: dict[str, Any], uid: str) -> Any:
            if uid not in store:
                raise HTTPException(404, detail="not found")
            return copy.deepcopy(store[uid])

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            if request.method != "GET":
                self.writes.append(f"{request.method} {request.url.path}")
            return await call_next(request)

        @app.get("/api/datasources/uid/{uid}")
        async def get_ds(uid: str) -> Any:
            return find(self.datasources, uid)

        # Grafana stores what it is sent with ids, versions and defaults of its own added, at
        # every depth (so "unchanged" must mean "agrees with what we set", not "equal").
        def datasource(body: dict[str, Any]) -> dict[str, Any]:
            return {"basicAuth": False, "withCredentials": False, "readOnly": False, **body,
                    "jsonData": {"httpHeaderName1": None, **body.get("jsonData", {})}}  # fmt: skip

        def rule(body: dict[str, Any]) -> dict[str, Any]:
            data = [{**d, "model": {"intervalMs": 1000, "maxDataPoints": 43200, **d["model"]}}
                    for d in body["data"]]  # fmt: skip
            return {"isPaused": False, "provenance": "api", **body, "data": data}

        @app.post("/api/datasources")
        async def create_ds(body: dict[str, Any]) -> Any:
            self.datasources[body["uid"]] = {**datasource(body), "id": len(self.datasources) + 1}
            return {"message": "Datasource added", "datasource": self.datasources[body["uid"]]}

        @app.put("/api/datasources/uid/{uid}")
        async def update_ds(uid: str, body: dict[str, Any]) -> Any:
            find(self.datasources, uid)
            self.datasources[uid] = {**self.datasources[uid], **datasource(body)}
            return {"message": "Datasource updated"}

        @app.get("/api/folders/{uid}")
        async def get_folder(uid: str) -> Any:
            return find(self.folders, uid)

        @app.post("/api/folders")
        async def create_folder(body: dict[str, Any]) -> Any:
            self.folders[body["uid"]] = {**body, "id": len(self.folders) + 1}
            return self.folders[body["uid"]]

        @app.get("/api/dashboards/uid/{uid}")
        async def get_dashboard(uid: str) -> Any:
            return find(self.dashboards, uid)

        @app.post("/api/dashboards/db")
        async def save_dashboard(body: dict[str, Any]) -> Any:
            board = body["dashboard"]
            old = self.dashboards.get(board["uid"])
            version = old["dashboard"]["version"] + 1 if old else 1
            self.dashboards[board["uid"]] = {
                "dashboard": {**board, "id": 7, "version": version},
                "meta": {"folderUid": body.get("folderUid")},
            }
            return {"uid": board["uid"], "status": "success", "version": version}

        @app.get("/api/v1/provisioning/contact-points")
        async def list_points() -> Any:
            return list(copy.deepcopy(self.contact_points).values())

        @app.post("/api/v1/provisioning/contact-points")
        async def create_point(body: dict[str, Any]) -> Any:
            self.contact_points[body["uid"]] = {"disableResolveMessage": False, **body}
            return self.contact_points[body["uid"]]

        @app.put("/api/v1/provisioning/contact-points/{uid}")
        async def update_point(uid: str, body: dict[str, Any]) -> Any:
            find(self.contact_points, uid)
            self.contact_points[uid] = {"disableResolveMessage": False, **body}
            return {"message": "contactpoint updated"}

        @app.get("/api/v1/provisioning/alert-rules/{uid}")
        async def get_rule(uid: str) -> Any:
            return find(self.rules, uid)

        @app.post("/api/v1/provisioning/alert-rules", status_code=201)
        async def create_rule(body: dict[str, Any]) -> Any:
            self.rules[body["uid"]] = {**rule(body), "id": len(self.rules) + 1, "updated": "now"}
            return self.rules[body["uid"]]

        @app.put("/api/v1/provisioning/alert-rules/{uid}")
        async def update_rule(uid: str, body: dict[str, Any]) -> Any:
            find(self.rules, uid)
            self.rules[uid] = {**self.rules[uid], **rule(body)}
            return self.rules[uid]

        @app.post("/api/annotations")
        async def annotate(body: dict[str, Any]) -> Any:
            self.annotations.append(body)
            return {"id": len(self.annotations), "message": "Annotation added"}

        return app


@pytest.fixture(scope="module")
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield fake, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_provisioning_round_trips_and_is_idempotent(
    grafana: tuple[FakeGrafana, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = grafana
    args = ["grafana", "provision", "--url", url, "--token", "glsa_test",
            "--prometheus-url", "http://prometheus:9090",
            "--webhook-url", "http://hook/x"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out
    assert '"updated": []' in first and f"datasource {DATASOURCE_UID}" in first
    assert fake.datasources[DATASOURCE_UID]["url"] == "http://prometheus:9090"
    for board in DASHBOARDS:
        stored = fake.dashboards[board.uid]
        assert {k: v for k, v in stored["dashboard"].items() if k not in ("id", "version")} == (
            board.to_json())  # fmt: skip
        assert stored["meta"]["folderUid"] == "vlaewatch"
    for rule in RULES:  # what was sent, under what Grafana added
        assert agrees(rule.to_json(), fake.rules[rule.uid]), rule.uid
    assert fake.contact_points["vlaewatch-operators"]["settings"]["url"] == "http://hook/x"

    writes = len(fake.writes)
    assert main(args) == 0  # a second run finds everything in place and writes nothing
    second = capsys.readouterr().out
    assert '"created": []' in second and '"updated": []' in second
    assert len(fake.writes) == writes

    # A changed setting is an update of just that object.
    assert main([*args[:-1], "http://hook/changed"]) == 0
    assert '"updated": [\n    "contact point vlaewatch-operators"\n  ]' in capsys.readouterr().out
    assert len(fake.writes) == writes + 1


def test_grafana_errors_are_clear(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    assert main(["grafana", "provision", "--url", f"http://127.0.0.1:{port}"]) == 2
    assert "error" in capsys.readouterr().err


def test_api_annotates_threshold_changes(
    grafana: tuple[FakeGrafana, str], redis_server: Any, tmp_path: Path
) -> None:
    fake, url = grafana
    api = ApiProcess(redis_server.url, None, tmp_path, key_prefix="annot",
                     env={"VLAEWATCH_GRAFANA_URL": url})  # fmt: skip
    try:
        body = {"line": "cam3", "params": {"method": "manual", "threshold": 42.0},
                "why": "new supplier"}  # fmt: skip
        r = httpx.post(f"{api.url}/v1/thresholds/calibrate", json=body,
                       headers={"X-API-Key": API_KEYS["operator"]})  # fmt: skip
        assert r.status_code == 200
        note = fake.annotations[-1]
        assert "threshold cam3 = 42" in note["text"] and "new supplier" in note["text"]
        assert {"vlaewatch", "threshold", "cam3"} <= set(note["tags"])

        # The first score of a model version marks the swap, once: more scores of it, in
        # later batches, add none (the API posts the note before it acks the batch).
        client = redis.Redis.from_url(redis_server.url)

        def publish(first: int) -> str:
            """Three scores of the new version; the last entry's id."""
            pipe = client.pipeline()
            for i in range(first, first + 3):
                rec = ScoreRecord(
                    item_id=f"m-{i}",
                    line="cam3",
                    ts_ingested=0,
                    ts_scored=0,
                    score=1,
                    recon=1,
                    kl=0,
                    model_version="feedc0ffee",
                )
                pipe.xadd("annot:scores", rec.to_fields())  # type: ignore[arg-type]
            return str(pipe.execute()[-1].decode())

        _consumed(client, publish(0), prefix="annot")
        assert sum("feedc0ffee" in a["text"] for a in fake.annotations) == 1
        _consumed(client, publish(3), prefix="annot")
        assert sum("feedc0ffee" in a["text"] for a in fake.annotations) == 1
    finally:
        api.stop()
