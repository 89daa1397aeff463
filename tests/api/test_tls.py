"""``REDIS_URL`` with a password and TLS (``rediss://``): the scorer (Ray Serve) and the API
(uvicorn) both run over it end to end, the server certificate is verified, and the password
(read from a secret file) never reaches a command line or a log.

The bundled redis-server is built without TLS, so TLS is terminated in front of it, as stunnel
or a cloud provider's proxy does: the clients speak real TLS to a real certificate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import trustme

from contract.redis_server import EmbeddedRedis, free_port
from tests.api.test_api import OP, VIEW, _alerts, _consumed, _score, _set_manual
from tests.conftest import API_KEYS, ApiProcess

pytestmark = pytest.mark.reliability

PASSWORD = "s3cret-redis-pass"


class TlsTerminator:
    """Accepts TLS on a loopback port and relays the plain bytes to ``upstream_port``."""

    def __init__(self, upstream_port: int, context: ssl.SSLContext) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.context = context
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TlsTerminator:
        self.thread.start()
        assert self.ready.wait(10), "TLS terminator did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context)
        )
        self.ready.set()
        self.loop.run_forever()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A password-protected Redis behind TLS; its ``rediss://`` URL and the CA file."""
    home = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca_file = home / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = EmbeddedRedis(home / "redis", password=PASSWORD).start()
    with TlsTerminator(server.port, context) as tls:
        yield {
            "url": f"rediss://:{PASSWORD}@127.0.0.1:{tls.port}/0?ssl_ca_certs={ca_file}",
            "port": tls.port,
            "home": home,
        }
    server.stop()


def test_clients_verify_the_certificate_and_the_password(tls_redis: dict[str, Any]) -> None:
    ok = redis.Redis.from_url(tls_redis["url"], socket_connect_timeout=5)
    assert ok.ping()
    port = tls_redis["port"]
    untrusted = redis.Redis.from_url(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0",
                                     socket_connect_timeout=5)  # fmt: skip
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.ping()
    wrong = redis.Redis.from_url(tls_redis["url"].replace(PASSWORD, "wrong-password"))
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    plain = redis.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
                                 socket_connect_timeout=2, socket_timeout=2)  # fmt: skip
    with pytest.raises(redis.RedisError):
        plain.ping()


def test_scorer_and_api_run_end_to_end_over_rediss(
    tls_redis: dict[str, Any], redis_server: Any, scorer_url: str, checkpoint: Path,
    digits: Any
) -> None:  # fmt: skip
    from ray.serve.context import _get_global_client

    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy

    port = int(scorer_url.rsplit(":", 1)[1])
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    # The URL and its password from a secret file, as Kubernetes mounts one: not in argv.
    secret = tls_redis["home"] / "redis-url"
    secret.write_text(tls_redis["url"] + "\n")
    secret.chmod(0o600)
    api = ApiProcess(None, scorer_url, tls_redis["home"], env={"REDIS_URL_FILE": str(secret)},
                     log_level="info")  # fmt: skip
    assert PASSWORD not in " ".join(psutil.Process(api.proc.pid).cmdline())
    try:
        # The replicas read the same file: the config the Ray dashboard shows holds its path.
        deploy(base.model_copy(update={"redis_url": None, "redis_url_file": str(secret)}),
               DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
        # What the dashboard's Serve page shows (the controller's details of every app).
        shown = json.dumps(_get_global_client().get_serve_details())
        assert str(secret) in shown and PASSWORD not in shown
        line = f"tls{uuid.uuid4().hex[:6]}"
        ids = [f"{line}-{i}" for i in range(20)]
        images = digits.test.images[:20, 0]
        probe = _score(scorer_url, images[:10], line, ids[:10])
        threshold = float(sorted(probe)[5])
        _set_manual(api.url, line, threshold)
        scores = _score(scorer_url, images[10:], line, ids[10:])
        client = redis.Redis.from_url(tls_redis["url"])
        last = client.xrevrange("vlaewatch:scores", count=1)[0][0].decode()
        _consumed(client, last)
        alerted = {a["item_id"] for a in _alerts(api.url, line=line)}
        expected = {i for i, s in zip(ids[10:], scores, strict=True) if s > threshold}
        assert expected and alerted == expected
        preview = httpx.get(f"{api.url}/v1/items/{ids[10]}/preview.png", headers=VIEW,
                            timeout=60)  # fmt: skip
        assert preview.status_code == 200 and preview.content[:4] == b"\x89PNG", preview.text
        assert httpx.get(f"{api.url}/v1/me", headers=OP).json()["role"] == "operator"
        wrong = httpx.get(f"{api.url}/v1/me", headers={"X-API-Key": "not-a-key-0123"})
        assert wrong.status_code == 401
    finally:
        deploy(base, DeploymentConfig(num_cpus=0.25), port=port)
        api.stop()
    log = Path(api.log.name).read_text()
    assert "GET /v1/me" in log  # the access log is on: what it leaves out is meaningful
    for secret_text in (PASSWORD, API_KEYS["operator"], API_KEYS["viewer"], "not-a-key-0123"):
        assert secret_text not in log
