"""The deployment files: they parse, name kinds that Kubernetes and KubeRay define, run commands
the CLI has, read settings the service knows, and deploy the scorer the code defines."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.auth import KeyConfigError, parse_api_keys
from contract.settings import Settings
from scorer.config import ScorerConfig
from vlaewatch.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KINDS = {
    ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("batch/v1", "Job"),
    ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayService"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}  # fmt: skip
ECOSYSTEM_ENV = {"REDIS_URL", "REDIS_URL_FILE", "RAY_ADDRESS"}
SECRETS_AT = "/etc/vlaewatch"


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _walk(node: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a manifest."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += _walk(v, key)
    elif isinstance(node, list):
        for v in node:
            found += _walk(v, key)
    return found


def _cli(argv: list[str]) -> None:
    assert argv[0] == "vlaewatch", argv
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        raise AssertionError(f"the CLI rejects {argv}") from exc


def test_manifests_parse_with_known_kinds_and_labels() -> None:
    docs = _docs()
    assert {(d["apiVersion"], d["kind"]) for d in docs} == KINDS
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vlaewatch"
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    # What the other pieces refer to exists.
    for ref in _walk(docs, "configMapRef") + _walk(docs, "secretRef"):
        assert ("ConfigMap", ref["name"]) in names or ("Secret", ref["name"]) in names
    for claim in _walk(docs, "persistentVolumeClaim"):
        assert ("PersistentVolumeClaim", claim["claimName"]) in names


def test_commands_exist_in_the_cli() -> None:
    docs = _docs()
    commands = [c for c in _walk(docs, "command") if c and c[0] == "vlaewatch"]
    commands += [shlex.split(e) for e in _walk(docs, "entrypoint")]
    assert len(commands) >= 3
    for argv in commands:
        _cli(argv)
    cmd = re.search(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert cmd is not None
    _cli(yaml.safe_load(cmd.group(1)))


def test_settings_are_the_cli_environment() -> None:
    known = {f"VLAEWATCH_{name.upper()}" for name in Settings.model_fields} | ECOSYSTEM_ENV
    config = next(d for d in _docs() if d["kind"] == "ConfigMap")
    secret = next(d for d in _docs() if d["kind"] == "Secret")
    assert set(config["data"]) <= known
    # Secrets are files of the Secret, named by *_FILE settings: never values in the config.
    files = {k: v for k, v in config["data"].items() if k.endswith("_FILE")}
    assert {"REDIS_URL_FILE", "VLAEWATCH_API_KEYS_FILE",
            "VLAEWATCH_GRAFANA_TOKEN_FILE"} <= set(files)  # fmt: skip
    for path in files.values():
        assert path.startswith(f"{SECRETS_AT}/") and path.split("/")[-1] in secret["stringData"]
    parsed = Settings(**{k[len("VLAEWATCH_"):].lower(): v for k, v in config["data"].items()
                         if k.startswith("VLAEWATCH_") and k not in files})  # fmt: skip
    assert str(parsed.store_path) == "/models"


def test_secrets_stay_secret_and_ray_is_closed() -> None:
    docs = _docs()
    # The example key ring is placeholders that no service accepts.
    secret = next(d for d in docs if d["kind"] == "Secret")
    with pytest.raises(KeyConfigError, match="placeholder"):
        parse_api_keys(secret["stringData"]["api-keys"])
    assert not _walk(docs, "secretRef"), "secrets are mounted as files, not environment"
    # Every pod that reads the settings mounts the Secret where they point.
    config_ref = {"configMapRef": {"name": "vlaewatch-config"}}
    pods = [p for p in _walk(docs, "spec") if isinstance(p, dict)]
    readers = [c for p in pods for c in p.get("containers", [])
               if config_ref in c.get("envFrom", [])]  # fmt: skip
    assert len(readers) >= 6  # the API, Grafana's provisioning, two Ray clusters' pods
    for c in readers:
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        assert mounts.get("secrets") == SECRETS_AT, c["name"]
    # The scorer's config (shown by the Ray dashboard) names the secrets by path only.
    service = next(d for d in docs if d["kind"] == "RayService")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    user_config = app["deployments"][0]["user_config"]
    assert "redis_url" not in user_config and "api_key_digests" not in user_config
    assert user_config["api_keys_file"] == f"{SECRETS_AT}/api-keys"
    # Ray's dashboard and Jobs API: token authentication on every cluster, and a policy that
    # opens its control-plane ports only to the cluster's pods and the KubeRay operator.
    clusters = [service["spec"]["rayClusterConfig"]]
    clusters += [d["spec"]["rayClusterSpec"] for d in docs if d["kind"] == "RayJob"]
    assert clusters and all(c["authOptions"] == {"mode": "token"} for c in clusters)
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy"
                  and d["metadata"]["name"] == "vlaewatch-ray")  # fmt: skip
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        if "from" not in rule:  # open to anyone: only ports that check a key
            assert ports == {8000}, rule
    api = next(d for d in docs if d["kind"] == "NetworkPolicy"
               and d["metadata"]["name"] == "vlaewatch-api")  # fmt: skip
    assert api["spec"]["ingress"] == [{"ports": [{"port": 8080}]}]


def test_rayservice_deploys_the_scorer_the_code_defines() -> None:
    service = next(d for d in _docs() if d["kind"] == "RayService")
    serve_cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve_cfg["applications"]
    assert app["name"] == "scorer"  # the application the dashboards and alert rules select
    module, func = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), func)
    (dep,) = app["deployments"]
    assert dep["name"] == "Scorer"
    cfg = ScorerConfig.model_validate({**app["args"], **dep["user_config"]})
    assert cfg.checkpoint == "/models"
    assert type(builder({**app["args"], **dep["user_config"]})).__name__ == "Application"
    auto = dep["autoscaling_config"]
    assert auto["min_replicas"] < auto["max_replicas"]


def test_dockerfile_copies_what_exists_and_every_package() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    root = DEPLOY.parent
    copied = set()
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for part in src.split():
            assert (root / part).exists(), part
            copied.add(part)
    # `pip install .` in the image installs what pyproject.toml's package list names: each
    # of those packages must be in the image, or its processes fail at their first import.
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.split(".")[0].rstrip("*") for p in include["packages"]["find"]["include"]}
    assert packages <= copied, packages - copied


def test_prometheus_configs() -> None:
    """The local config passes promtool. Debian's Prometheus is built without Kubernetes
    service discovery, so the cluster config is checked for shape here instead."""
    assert shutil.which("promtool"), "promtool comes with Debian's prometheus: make system-deps"
    out = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus/local.yml")],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    k8s = yaml.safe_load((DEPLOY / "prometheus/kubernetes.yml").read_text())
    jobs = {j["job_name"]: j for j in k8s["scrape_configs"]}
    assert set(jobs) == {"vlaewatch-api", "ray"}
    for job in jobs.values():
        assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
