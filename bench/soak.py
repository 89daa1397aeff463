"""Memory under a bounded soak: the resident set of every process of the service, before and
after minutes of frames at a steady rate, and whether every frame sent came out scored.

The frames are normal images, as on a working line (alerts are rare). Redis holds data by
design (item images for their retention, the bounded score stream, alerts for theirs): the
soak's scorer and API keep images and alerts 60 s and a short stream, and the warm-up lasts
past all three, so what is measured is the steady state, not the fill. (The API keeps alerts 30
days by default: at the 2 % false-alarm rate of the bench's first threshold, a soak of normal
frames at 2,750/s stored 55 alerts a second, and Redis's memory grew by 20 MB in 10 minutes.)"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np
import psutil

from bench.common import p99, png_frames, send_frames

# Ray names its worker processes by what they run ("ray::ServeReplica:scorer:Scorer").
RAY_ROLES = {
    "ray::ServeReplica": "serve replica",
    "ray::ProxyActor": "serve proxy",
    "ray::ServeController": "serve controller",
    "raylet": "raylet",
    "gcs_server": "gcs server",
}


def service_processes(named: dict[str, int]) -> dict[str, psutil.Process]:
    """The processes to watch: ``named`` pids (redis, the API, this driver) and Ray's."""
    procs = {role: psutil.Process(pid) for role, pid in named.items()}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        for marker, role in RAY_ROLES.items():
            if marker in cmd:
                key = role if role not in procs else f"{role} {p.pid}"
                procs[key] = p
    return procs


def _rss(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for role, p in procs.items():
        try:
            out[role] = p.memory_info().rss / 2**20
        except psutil.Error:
            out[role] = float("nan")
    return out


class _Sampler(threading.Thread):
    """The RSS of every process every ``every_s`` seconds until stopped, so that a growth
    between before and after can be told apart: a leak keeps climbing through the soak, an
    allocator settling on its working set levels off."""

    def __init__(self, procs: dict[str, psutil.Process], every_s: float) -> None:
        super().__init__(daemon=True)
        self.procs, self.every_s = procs, every_s
        self.samples: list[dict[str, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stopping.wait(self.every_s):
            self.samples.append({"t_s": time.perf_counter() - t0, **_rss(self.procs)})

    def stop(self) -> list[dict[str, float]]:
        self.stopping.set()
        self.join(5)
        return self.samples


class _Counter(threading.Thread):
    """Counts score entries whose item id starts with ``tag`` as they arrive (XREAD from the
    stream's end): the score stream is trimmed, so counting afterwards would miss some."""

    def __init__(self, redis_url: str, stream: str, tag: str) -> None:
        import redis

        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url)
        self.stream, self.tag = stream, tag.encode()
        self.count = 0
        self.latencies_ms: list[float] = []  # ingested -> scored, per counted item
        self.last = self.client.xinfo_stream(stream)["last-generated-id"]
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            resp: Any = self.client.xread({self.stream: self.last}, count=5000, block=200)
            for _, entries in resp or []:
                for eid, fields in entries:
                    self.last = eid
                    if fields.get(b"item_id", b"").startswith(self.tag):
                        self.count += 1
                        ingested, scored = fields.get(b"ts_ingested"), fields.get(b"ts_scored")
                        if ingested and scored:
                            self.latencies_ms.append(1000 * (float(scored) - float(ingested)))

    def stop(self) -> int:
        self.stopping.set()
        self.join(5)
        return self.count


def soak(redis_url: str, prefix: str, images: np.ndarray, rate: float, seconds: float,
         named: dict[str, int], warmup_s: float = 20.0) -> dict[str, Any]:  # fmt: skip
    """Frames at ``rate``: ``warmup_s`` first (caches, allocator pools), then RSS of every
    process, ``seconds`` more (sampled 20 times on the way), RSS again; items in against
    results out."""
    import redis

    client = redis.Redis.from_url(redis_url)
    pngs = png_frames(images)
    procs = service_processes(named)
    tag = f"soak{time.time_ns()}"
    counter = _Counter(redis_url, f"{prefix}:scores", tag)
    counter.start()
    dead_before = client.xlen(f"{prefix}:deadletter")
    sent = send_frames(client, prefix, pngs, f"{tag}w", rate, warmup_s, "soak")
    before = _rss(procs)
    sampler = _Sampler(procs, every_s=max(1.0, seconds / 20))
    sampler.start()
    t0 = time.perf_counter()
    sent += send_frames(client, prefix, pngs, f"{tag}s", rate, seconds, "soak")
    elapsed = time.perf_counter() - t0
    after = _rss(procs)  # at the end of the load, before the drain
    samples = sampler.stop()
    deadline = time.monotonic() + 60  # let the backlog drain before counting
    while counter.count < sent and time.monotonic() < deadline:
        time.sleep(0.5)
    scored = counter.stop()
    dead = client.xlen(f"{prefix}:deadletter") - dead_before
    redis_info = client.info("memory")
    growth = {k: (after[k] - before[k]) / before[k] for k in before if before[k] > 0}
    latencies = sorted(counter.latencies_ms)
    latency = {"p50": latencies[len(latencies) // 2] if latencies else None, "p99": p99(latencies)}
    print(f"soak {seconds:.0f} s at {rate:.0f}/s: {scored}/{sent} scored, max RSS growth "
          f"{100 * max(growth.values()):.1f} %", file=sys.stderr)  # fmt: skip
    return {
        "rate_per_s": rate,
        "seconds": elapsed,
        "warmup_s": warmup_s,
        "items_sent": sent,
        "items_scored": scored,
        "items_lost": sent - scored,
        "deadletters": dead,
        "error_rate": (sent - scored) / sent if sent else None,  # dead-lettered or lost
        "latency_ms": latency,
        "frames_backlog": client.xlen(f"{prefix}:frames"),
        "redis_used_memory_mb": redis_info["used_memory"] / 2**20,
        "rss_mb_before": before,
        "rss_mb_after": after,
        "rss_growth": growth,
        "rss_mb_samples": samples,
        "max_rss_growth": max(growth.values()),
    }
