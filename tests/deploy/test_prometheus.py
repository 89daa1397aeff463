"""A real Prometheus (Debian's package) scrapes the running API and the session's Ray cluster
with the shipped scrape config; every PromQL expression of every dashboard panel and alert
rule is then evaluated through Prometheus's HTTP API against those real series."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from contract.redis_server import free_port
from deploy.dashboards import RULES, AlertRule, all_queries
from tests.conftest import API_KEYS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prometheus(api_url: str, ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:  # fmt: skip
    import ray

    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is missing: run `make system-deps`"
    config = yaml.safe_load((ROOT / "deploy/prometheus/local.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["vlaewatch-api"]["static_configs"][0]["targets"] = [api_url.split("//", 1)[1]]
    ray_tmp = ray._private.worker._global_node.get_temp_dir_path()  # the session cluster's
    jobs["ray"]["file_sd_configs"][0]["files"] = [f"{ray_tmp}/prom_metrics_service_discovery.json"]
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(work / "log").open("w"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (work / "log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _query(url: str, expr: str) -> list[Any]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def test_every_dashboard_and_rule_query_returns_data(
    prometheus: str, api_url: str, scorer_url: str, digits: Any
) -> None:
    op = {"X-API-Key": API_KEYS["operator"]}
    line = f"prom{uuid.uuid4().hex[:6]}"
    for target in ("image", "pixel"):  # every item alerts, with regions
        r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=op,
                       json={"line": line, "target": target,
                             "params": {"method": "manual", "threshold": 0}})  # fmt: skip
        assert r.status_code == 200
    images = digits.test.images[:20, 0]
    queries = all_queries()
    names = set().union(*(q.metrics() for q in queries))
    deadline = time.monotonic() + 120
    missing = sorted(names)
    empty: list[str] = []
    n = 0
    while time.monotonic() < deadline:
        # Traffic through the scorer (Serve metrics) and the API (alerts, latencies).
        buf = io.BytesIO()
        np.save(buf, images)
        ids = [f"{line}-{n}-{i}" for i in range(len(images))]
        httpx.post(f"{scorer_url}/v1/score", content=buf.getvalue(),
                   headers={"content-type": "application/x-npy"},
                   params={"line": line, "item_id": ids}, timeout=60)  # fmt: skip
        httpx.get(f"{api_url}/v1/alerts", headers=op, params={"line": line, "limit": 1})
        n += 1
        series = httpx.get(f"{prometheus}/api/v1/label/__name__/values").json()["data"]
        missing = sorted(names - set(series))
        if not missing:
            empty = [q.expr for q in queries if not _query(prometheus, q.expr)]
            # A counter's increase needs two scrapes with items scored between them: on a new
            # series the first is its starting value, and the no-items rule reads 0 until then.
            if not empty and not _quiet_rules_firing(prometheus):
                break
        time.sleep(1.0)
    assert not missing, f"dashboards name metrics nobody exports: {missing}"
    assert not empty, f"queries without data: {empty}"
    # The rate panels see this line's traffic, not just some series.
    got = _query(prometheus, "sum by (line) (rate(vlaewatch_items_scored_total[5m]))")
    assert line in {s["metric"].get("line") for s in got}

    # The rules that end in `or vector(0)` always return data, so the check above proves
    # nothing of their selectors. Without the fallback each must match the live series and
    # not fire (the scorer is up, items flow); with its selector pointed at nothing it fires.
    for rule in (r for r in RULES if r.query.expr.endswith(" or vector(0)")):
        selector = rule.query.expr.removesuffix(" or vector(0)")
        live = _query(prometheus, selector)
        assert live, f"{rule.uid}: its selector matches no series: {selector}"
        assert not _fires(rule, float(live[0]["value"][1])), (rule.uid, live)
        nothing = selector.replace('application="scorer"', 'application="absent"').replace(
            "vlaewatch_items_scored_total[", 'vlaewatch_items_scored_total{line="absent"}['
        )
        assert nothing != selector, rule.uid
        assert _fires(rule, float(_query(prometheus, f"{nothing} or vector(0)")[0]["value"][1]))
    # The training panel's fallback, likewise: the actor series and label it selects exist.
    assert _query(prometheus, 'sum(ray_actors{State="ALIVE"})')


def _quiet_rules_firing(prometheus: str) -> list[str]:
    """The rules ending in `or vector(0)` whose selector, without the fallback, has no data
    yet or fires."""
    out = []
    for rule in (r for r in RULES if r.query.expr.endswith(" or vector(0)")):
        live = _query(prometheus, rule.query.expr.removesuffix(" or vector(0)"))
        if not live or _fires(rule, float(live[0]["value"][1])):
            out.append(rule.uid)
    return out


def _fires(rule: AlertRule, value: float) -> bool:
    return value > rule.threshold if rule.condition == "gt" else value < rule.threshold
