"""Speed, side by side in one run on one checkpoint: the raw model in-process (the limit), the
baselines a user might pick instead (the deck's per-item loop, PyOD's VAE), the scorer over
HTTP on Ray Serve across batch sizes and concurrency, the frames stream, the end-to-end alert
latency, Ray Train against the plain loop, the memory of every process over a soak; then the
inspection default at inspection sizes (``bench.speed_inspection.measure``), with what each
retained frame costs in Redis and the blob store.

    python -m bench.throughput [--checkpoint DIR] [--seconds 5] [--soak-seconds 180]

Writes bench/results/speed.json and bench/results/speed.md (ratios to the raw model).
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    CLIENT_NICE,
    RESULTS,
    StealWatch,
    Watch,
    as_client,
    command_line,
    default_checkpoint,
    halves_max,
    p99,
    png_frames,
    send_frames,
    write_report,
)


def _rate(fn: Callable[[], int], seconds: float) -> float:
    """Images per second of ``fn`` (which returns how many it handled), over ``seconds``."""
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def raw_model(loaded: Any, images: np.ndarray, batches: list[int], seconds: float
              ) -> dict[str, float]:  # fmt: skip
    """Batched forward + score in-process: the limit the service is measured against."""
    out = {}
    for b in batches:
        out[str(b)] = _rate(functools.partial(_score_count, loaded.model, images[:b], b), seconds)
    return out


def _score_count(model: Any, images: np.ndarray, batch_size: int) -> int:
    from vlae.score import score_images

    return len(score_images(model, images, batch_size=batch_size).score)


def deck_loop(loaded: Any, images: np.ndarray, seconds: float) -> float:
    """The seed deck's way: ``anomaly_score`` one image at a time."""
    from vlae.images import to_float

    x = torch.from_numpy(to_float(images[:256]))
    model = loaded.model.eval()

    def loop() -> int:
        with torch.no_grad():
            for i in range(len(x)):
                model.anomaly_score(x[i : i + 1])
        return len(x)

    return _rate(loop, seconds)


def pyod_vae(train: np.ndarray, images: np.ndarray, seconds: float) -> float:
    """PyOD's VAE ``decision_function`` on the same images (fitted briefly on normal ones)."""
    from pyod.models.vae import VAE

    from vlae.images import to_float

    clf = VAE(epoch_num=2, verbose=0, device="cpu")
    clf.fit(to_float(train).reshape(len(train), -1))
    x = to_float(images[:512]).reshape(512, -1)
    return _rate(lambda: len(clf.decision_function(x)), seconds)


def http_sweep(start: Callable[[], str], stop: Callable[[], None], images: np.ndarray,
               batches: list[int], concurrency: list[int], seconds: float,
               raw: Callable[[int], float]) -> list[dict[str, Any]]:  # fmt: skip
    """POST /v1/score (NPY bodies) from ``c`` client threads: images/s and request latency.

    Each batch size's sweep is bracketed by two readings of the raw model (``raw(batch)``),
    taken with Serve stopped (``stop``; ``start`` deploys the scorer again and returns its URL),
    and each row's ``vs_raw`` is against their mean. This VM's speed drifts by 10 to 20 % over
    the minutes between the first raw reading and the sweep, so a ratio of two readings taken
    that far apart measured the drift as much as the service; and with Serve up, though idle,
    its few timers cost a two-thread forward more than their CPU share."""
    rows = []
    for b in batches:
        buf = io.BytesIO()  # N x H x W for grey, N x H x W x C for colour
        np.save(buf, images[:b, 0] if images.shape[1] == 1 else images[:b].transpose(0, 2, 3, 1))
        body = buf.getvalue()
        before = raw(b)
        url = start()
        post_load(url, body, b, 1, 1.0)  # a fresh replica's first forwards: not measured
        sweep = [{"batch": b, "concurrency": c, **post_load(url, body, b, c, seconds)}
                 for c in concurrency]  # fmt: skip
        stop()
        after = raw(b)
        for row in sweep:
            row |= {"raw_before": before, "raw_after": after,
                    "vs_raw": row["images_per_s"] / ((before + after) / 2)}  # fmt: skip
            print(f"http batch {b} x{row['concurrency']}: {row['images_per_s']:.0f} images/s "
                  f"({row['vs_raw']:.2f} of raw), p50 {row['p50_ms']:.1f} ms",
                  file=sys.stderr)  # fmt: skip
        rows += sweep
    return rows


def post_load(url: str, body: bytes, batch: int, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads posting ``body`` (``batch`` images) back to back for ``seconds``,
    each a line's client (``as_client``)."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        as_client()
        with httpx.Client(timeout=120) as http:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = http.post(f"{url}/v1/score", content=body,
                              headers={"content-type": "application/x-npy"})  # fmt: skip
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "images_per_s": len(lat) * batch / elapsed,
        "requests": len(lat),
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * (p99(lat) or 0.0),
    }


def frames_path(redis_url: str, prefix: str, images: np.ndarray, rates: list[int],
                seconds: float, climb: int = 4) -> list[dict[str, Any]]:  # fmt: skip
    """XADD PNG frames to ``vlaewatch:frames`` at each steady rate; how many were scored in
    the same time (the replicas consume the stream as the group ``scorers``). While the last
    step still kept up, up to ``climb`` more steps follow, each a fifth faster, so that the
    sustained rate is a limit found, not the highest rate asked for.

    A replica XACKs and XDELs a frame once its score is published, so the frames that left the
    stream by the end of a step, less any dead-lettered, are the ones scored in it. (Counting
    entries of the score stream instead is capped by its MAXLEN: 20,000 entries in 5 s read
    as 4,000/s whatever the rate.)"""
    import redis

    pngs = png_frames(images)
    client = redis.Redis.from_url(redis_url)
    frames, dead = f"{prefix}:frames", f"{prefix}:deadletter"
    rows: list[dict[str, Any]] = []
    steps = list(rates)
    while steps:
        rate = steps.pop(0)
        backlog0, dead0 = client.xlen(frames), client.xlen(dead)
        start = time.perf_counter()
        sent = send_frames(client, prefix, pngs, f"f{rate}-{time.time_ns()}", rate, seconds,
                           "bench")  # fmt: skip
        elapsed = time.perf_counter() - start
        backlog, dead_letters = client.xlen(frames), client.xlen(dead) - dead0
        scored = sent + backlog0 - backlog - dead_letters
        rows.append({"rate": rate, "offered_per_s": sent / elapsed,
                     "scored_per_s": scored / elapsed, "backlog": backlog,
                     "backlog_before": backlog0, "dead_letters": dead_letters})  # fmt: skip
        print(f"frames at {rate}/s: scored {scored / elapsed:.0f}/s", file=sys.stderr)
        if not steps and climb and kept_up(rows[-1]):
            steps, climb = [max(rate + 1, int(float(f"{rate * 1.2:.2g}")))], climb - 1
        deadline = time.perf_counter() + 60  # drain before the next rate
        while client.xlen(frames) and time.perf_counter() < deadline:
            time.sleep(0.2)
    return rows


# A step keeps up while what is still unscored at its end is no more than this much of its
# rate: the frames in flight (steps that keep up end with 40 to 60 ms of them), not a queue. The
# end-to-end goal's 100 ms: a backlog longer than that already makes frames wait past it.
BACKLOG_S = 0.1


def left_unscored(step: dict[str, Any]) -> int:
    """The frames a step left in the stream at its end (in flight or queued), beyond those
    there when it began."""
    return int(step["backlog"] - step.get("backlog_before", 0))


def kept_up(step: dict[str, Any], backlog_s: float = BACKLOG_S) -> bool:
    """Scored results kept up with a frames step: what it left unscored is at most
    ``backlog_s`` of its offered rate."""
    return bool(left_unscored(step) <= backlog_s * step["offered_per_s"])


def sustained_rate(steps: list[dict[str, Any]]) -> float | None:
    """The highest offered rate before scored results first stopped keeping up; steps in
    increasing rate. A higher step that keeps up after one that did not is noise on a loaded
    machine, not capacity."""
    sustained = None
    for step in steps:
        if not kept_up(step):
            break
        sustained = step["offered_per_s"]
    return sustained


def _listen(api_url: str, ready: Any, stop: Any, out: Any) -> None:
    """In a process of its own (so that parsing events does not compete with the sender for
    one interpreter): read the API's live stream until ``stop``, then send back, per alert,
    (seen at, scored at, created at)."""
    from vlaewatch.cli.demo_api import AlertListener

    listener = AlertListener(api_url, {}).start()
    ready.set()
    stop.wait()
    listener.stop()
    out.send({item: (seen, a["ts_scored"], a["created_at"])
              for item, (seen, a) in list(listener.seen.items())})  # fmt: skip


def line_mix(normal: np.ndarray, anomalous: np.ndarray, share: float, n: int = 500,
             seed: int = 0) -> np.ndarray:  # fmt: skip
    """``n`` frames of an inspection line: normal images with ``share`` anomalous ones mixed
    in at random places."""
    rng = np.random.default_rng(seed)
    k = round(share * n)
    frames = np.concatenate([normal[rng.integers(0, len(normal), n - k)],
                             anomalous[rng.integers(0, len(anomalous), k)]])  # fmt: skip
    return frames[rng.permutation(n)]


TICK_S = 0.005  # the end-to-end sender's tick


class RewriteWatch(Watch):
    """When Redis rewrote its append-only file, as wall-clock spans: ``INFO persistence``
    polled every ``every_s`` from a thread of its own while the block runs."""

    def __init__(self, redis_url: str, every_s: float = 0.1) -> None:
        import redis

        super().__init__(every_s, "rewrite-watch")
        self.spans: list[tuple[float, float]] = []
        self._client = redis.Redis.from_url(redis_url)
        self._began: float | None = None

    def sample(self) -> None:
        busy = bool(self._client.info("persistence")["aof_rewrite_in_progress"])
        if busy and self._began is None:
            self._began = time.time()
        elif not busy and self._began is not None:
            self.spans.append((self._began, time.time()))
            self._began = None

    def finish(self) -> None:
        if self._began is not None:
            self.spans.append((self._began, time.time()))
        self._client.close()

    def during(self, t: float) -> bool:
        return any(a <= t <= b for a, b in self.spans)


def latency_readings(sent: list[float], total_ms: list[float], start: float, seconds: float,
                     window_s: float) -> list[dict[str, Any]]:  # fmt: skip
    """p50 and p99 of each ``window_s`` of a measurement (by send time), in order; a last
    window shorter than half of ``window_s`` joins the one before."""
    n = max(1, round(seconds / window_s))
    windows: list[list[float]] = [[] for _ in range(n)]
    for t, ms in zip(sent, total_ms, strict=True):
        windows[min(n - 1, max(0, int((t - start) // window_s)))].append(ms)
    return [{"from_s": i * window_s, "alerts": len(w), "p50_ms": statistics.median(w),
             "p99_ms": p99(sorted(w))} for i, w in enumerate(windows) if w]  # fmt: skip


def end_to_end(api_url: str, redis_url: str, prefix: str, images: np.ndarray, rate: float,
               seconds: float, warmup_s: float = 3.0, window_s: float = 30.0,
               steal: StealWatch | None = None) -> dict[str, Any]:  # fmt: skip
    """Frames at ``rate`` (``images`` in turn); for each alert, the time from XADD to its
    arrival on the API's live stream (read by a listener process). ``warmup_s`` of frames go
    first, not measured. Besides the whole measurement's p50 and p99: one reading per
    ``window_s``, and the p99 of frames sent while Redis rewrote its append-only file against
    the rest, so that a pass shows it holds through Redis's background work, not between it.
    With ``steal`` watching, each reading also says how much CPU the hypervisor took meanwhile."""
    import multiprocessing as mp

    import redis

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    listener = ctx.Process(target=_listen, args=(api_url, ready, stop, send), daemon=True)
    listener.start()
    if not ready.wait(60):
        raise RuntimeError("the alert listener did not subscribe")
    client = redis.Redis.from_url(redis_url)
    sent_at: dict[str, float] = {}
    pngs = png_frames(images, len(images))
    send_frames(client, prefix, pngs, f"e2ew{time.time_ns()}", rate, warmup_s, "e2e")
    # The line's client sends what its cameras produced every TICK_S in one pipelined round
    # trip (one XADD each); a frame's clock starts when its XADD goes out, so the wait for the
    # tick is not counted, and it is at most TICK_S.
    start, start_wall = time.perf_counter(), time.time()
    with RewriteWatch(redis_url) as rewrites:
        n = send_frames(client, prefix, pngs, f"e2e-{time.time_ns()}", rate, seconds, "e2e",
                        TICK_S, sent_at)  # fmt: skip
        elapsed = time.perf_counter() - start
    time.sleep(2.0)
    stop.set()
    seen_by_item = receive.recv() if receive.poll(30) else {}
    listener.join(10)
    # Each alert carries its own timeline: scored by the replica, created by the API consumer,
    # then delivered on the live stream. Where the milliseconds go, per stage.
    stages: dict[str, list[float]] = {"total": [], "xadd→scored": [], "scored→alert": [],
                                      "alert→seen": []}  # fmt: skip
    sent: list[float] = []
    for item, (seen, scored, created) in seen_by_item.items():
        if item not in sent_at:
            continue
        marks = [sent_at[item], scored, created, seen]
        sent.append(sent_at[item])
        stages["total"].append(1000 * (seen - sent_at[item]))
        for name, a, b in zip(list(stages)[1:], marks[:-1], marks[1:], strict=True):
            stages[name].append(1000 * (b - a))
    lat = sorted(stages["total"])
    quantiles = {name: {"p50": statistics.median(v), "p99": p99(sorted(v))}
                 for name, v in stages.items() if v}  # fmt: skip
    readings = latency_readings(sent, stages["total"], start_wall, elapsed, window_s)
    if steal is not None:
        for r in readings:
            a = start_wall + r["from_s"]
            r["steal_cores"] = steal.cores(a, min(a + window_s, start_wall + elapsed))
    during = [rewrites.during(t) for t in sent]
    in_rw = sorted(ms for ms, d in zip(stages["total"], during, strict=True) if d)
    out_rw = sorted(ms for ms, d in zip(stages["total"], during, strict=True) if not d)
    return {
        "rate_per_s": n / elapsed,
        "seconds": elapsed,
        "items": n,
        "alerts": len(lat),
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": p99(lat),
        "stages_ms": quantiles,
        "readings": readings,
        "steal_cores": steal.cores(start_wall, start_wall + elapsed) if steal else None,
        "aof_rewrites": {
            "count": len(rewrites.spans),
            "share_of_time": sum(b - a for a, b in rewrites.spans) / elapsed,
            "alerts_sent_during": len(in_rw),
            "p99_ms_sent_during": p99(in_rw),
            "p99_ms_sent_outside": p99(out_rw),
        },
    }


def against_api(redis_url: str, prefix: str, scorer_url: str, home: Path,
              work: Callable[[str, int], dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Run ``work(url, pid)`` against `vlaewatch api` in its own process (as deployed)."""
    import subprocess

    import httpx
    import redis

    from contract.redis_server import free_port

    # The API's group starts at the stream's end: the frames steps' entries are not its work.
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(f"{prefix}:scores", "api", id="$", mkstream=True)
    client.close()
    port = free_port()
    env = {**os.environ, "VLAEWATCH_HOME": str(home)}
    env.pop("VLAEWATCH_API_KEYS", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "vlaewatch"), "api", "--port", str(port),
         "--redis-url", redis_url, "--key-prefix", prefix, "--scorer-url", scorer_url,
         "--initial-fpr", "0.02", "--alert-retention-s", "60", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).json().get("consuming"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("vlaewatch api did not start")
            time.sleep(0.2)
        return work(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def markdown(report: dict[str, Any]) -> str:
    raw = report["raw_images_per_s"]
    lines = ["| path | batch | concurrency | images/s | p50 ms | p99 ms | vs raw model |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for b, v in raw.items():
        lines.append(f"| raw model, in-process | {b} | 1 | {v:.0f} | | | 1.00 |")
    top = max(raw, key=int)  # the largest batch measured: the baselines' reference
    deck = report["deck_loop_images_per_s"]
    lines.append(f"| deck per-item loop | 1 | 1 | {deck:.0f} | | | "
                 f"{deck / raw[top]:.3f} (of raw at {top}) |")  # fmt: skip
    if report.get("pyod_images_per_s"):
        pyod = report["pyod_images_per_s"]
        lines.append(f"| PyOD VAE decision_function | 512 | 1 | {pyod:.0f} | | | "
                     f"{pyod / raw[top]:.3f} (of raw at {top}) |")  # fmt: skip
    for row in report["http"]:
        if row["concurrency"] == report["http"][0]["concurrency"]:  # a batch size's first row
            lines.append(f"| raw model, in-process, just before and after the HTTP rows "
                         f"(Serve stopped) | {row['batch']} | 1 | {row['raw_before']:.0f}, "
                         f"{row['raw_after']:.0f} | | | 1.00 (their mean) |")  # fmt: skip
        lines.append(f"| HTTP /v1/score | {row['batch']} | {row['concurrency']} | "
                     f"{row['images_per_s']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['vs_raw']:.3f} |")  # fmt: skip
    for row in report.get("frames", []):
        left = left_unscored(row)
        ms = 1000 * left / row["offered_per_s"]
        lines.append(f"| frames stream (XADD, PNG) | - | - | {row['scored_per_s']:.0f} scored of "
                     f"{row['offered_per_s']:.0f} offered; {left} left unscored ({ms:.0f} ms "
                     "of frames) | | | |")  # fmt: skip
    if report.get("frames"):
        last = report["frames"][-1]
        limit = "no step stopped keeping up: a lower bound" if kept_up(last) else "limit found"
        lines.append(f"| frames stream, sustained ({limit}) | - | - | "
                     f"{report['frames_sustained_per_s'] or 0:.0f} | | | |")  # fmt: skip
    e2e = report.get("end_to_end")
    if e2e and e2e["p50_ms"] is not None:
        share = e2e.get("anomalous_share")
        mixed = f", {100 * share:.0f} % anomalous" if share is not None else ""
        timing = (f", {e2e['seconds']:.0f} s after {e2e['warmup_s']:.0f} s of warm-up"
                  if "warmup_s" in e2e else "")  # fmt: skip
        lines.append(f"| end to end, frames{mixed} → alert on /v1/stream at "
                     f"{e2e['rate_per_s']:.0f}/s{timing} | "
                     f"- | - | {e2e['alerts']} alerts | {e2e['p50_ms']:.1f} | "
                     f"{e2e['p99_ms']:.1f} | |")  # fmt: skip
        for r in e2e.get("readings", []):
            stolen = (f" (steal {r['steal_cores']:.2f} cores)"
                      if r.get("steal_cores") is not None else "")  # fmt: skip
            lines.append(f"| end to end, the {e2e['window_s']:.0f} s from {r['from_s']:.0f} s"
                         f"{stolen} | "
                         f"- | - | {r['alerts']} alerts | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | |")  # fmt: skip
        rw = e2e.get("aof_rewrites")
        if rw and rw["count"]:
            times = "1 rewrite" if rw["count"] == 1 else f"{rw['count']} rewrites"
            lines.append(f"| end to end, frames sent while Redis rewrote its AOF ({times}, "
                         f"{100 * rw['share_of_time']:.0f} % of the time) | - | - | "
                         f"{rw['alerts_sent_during']} alerts | | "
                         f"{_cell(rw['p99_ms_sent_during'])} | |")  # fmt: skip
            lines.append(f"| end to end, frames sent outside rewrites | - | - | | | "
                         f"{_cell(rw['p99_ms_sent_outside'])} | |")  # fmt: skip
        for name, q in e2e.get("stages_ms", {}).items():
            if name != "total":
                lines.append(f"| end to end, stage {name} | - | - | | {q['p50']:.1f} | "
                             f"{q['p99']:.1f} | |")  # fmt: skip
    train = report.get("training")
    if train:
        lines += [
            "",
            f"Training ({train['model']}, {train['n_train']} images, {train['epochs']} epochs; "
            f"the plain loop and one Ray worker in turn, {train['repeats']} times each):",
            "",
            "| run | wall s | s/epoch (median) | vs plain loop |",
            "|---|---|---|---|",
        ]
        plain = train["runs"]["plain"]
        for name, runs in train["runs"].items():
            for i, run in enumerate(runs):
                # A Ray run against the plain run just before it; two workers against the mean.
                ref = plain[i]["wall_s"] if name != "ray_2_workers" else (
                    sum(r["wall_s"] for r in plain) / len(plain))  # fmt: skip
                lines.append(f"| {name.replace('_', ' ')} #{i + 1} | {run['wall_s']:.1f} | "
                             f"{run['epoch_s']:.2f} | {run['wall_s'] / ref:.2f} |")  # fmt: skip
        lines += ["", f"Ray Train overhead, summed Ray time over summed plain time: "
                  f"**{train['overhead_ratio']:.2f}×**; two workers: "
                  f"{train['two_workers_ratio']:.2f}×."]  # fmt: skip
    soak = report.get("soak")
    if soak:
        lines += [
            "",
            f"Memory over a {soak['seconds']:.0f} s soak at {soak['rate_per_s']:.0f} normal "
            f"frames/s (after {soak['warmup_s']:.0f} s of warm-up; images and alerts kept 60 s, "
            f"score stream 20,000 entries): {soak['items_scored']} of {soak['items_sent']} frames "
            f"scored, {soak['items_lost']} lost, {soak['deadletters']} dead letters, "
            f"{soak['frames_backlog']} left in the frames stream; error rate "
            f"{100 * (soak.get('error_rate') or 0):.3f} %, ingested to scored p50 "
            f"{_ms(soak.get('latency_ms', {}).get('p50'))}, p99 "
            f"{_ms(soak.get('latency_ms', {}).get('p99'))}.",
            "",
            "| process | RSS MiB before | after | growth | largest, first half | second half |",
            "|---|---|---|---|---|---|",
        ]
        halves = halves_max(soak.get("rss_mb_samples", []))
        for role, before in soak["rss_mb_before"].items():
            after, growth = soak["rss_mb_after"][role], soak["rss_growth"].get(role, float("nan"))
            first, second = (f"{v:.0f}" for v in halves[role]) if role in halves else ("-", "-")
            lines.append(f"| {role} | {before:.0f} | {after:.0f} | {100 * growth:+.1f} % | "
                         f"{first} | {second} |")  # fmt: skip
    sizes = report.get("inspection_sizes")
    if sizes:
        from bench.speed_inspection import size_rows

        lines += ["", "At inspection sizes, the default model the inspection benchmark trains for "
                  "such images (a SpatialVLAE scored by its `local` map, a few epochs: its speed "
                  "does not depend on how well it is trained), raw images/s by batch size:",
                  "", *size_rows(sizes["sizes"], sizes["batches"])]  # fmt: skip
    if report.get("scale_out"):
        from bench.scale_out import rows_markdown

        lines += ["", "Two nodes on loopback (`ray start`, one CPU each; bench/scale_out.py): the "
                  "scorer with 1 replica against 2 through the head's proxy, and `vlaewatch "
                  "train --address` with 1 worker against 2:", "",
                  *rows_markdown(report["scale_out"])]  # fmt: skip
    by_part = {k: v for k, v in report.get("steal_cores", {}).items() if v is not None}
    if by_part:
        lines += ["", "The hypervisor's steal (CPU this VM's work was ready for and did not get), "
                  "mean cores in each part of the run: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in by_part.items()) + "."]  # fmt: skip
    best = report["best_http_ratio"]
    lines += ["", "Best HTTP throughput as a share of the raw model at the same batch size "
              "(measured just before and after): "
              + ", ".join(f"batch {b}: {v:.2f}" for b, v in best.items()) + ".",
              "", f"Command: `{report['command']}`; {report['machine']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="default: a digits model trained here")
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement point")
    p.add_argument("--batches", default="1,64,512")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument(
        "--replica-cpus",
        type=float,
        default=float(os.cpu_count() or 1),
        help="CPUs of the scorer replica (default: all, as the raw model uses)",
    )
    p.add_argument("--frame-rates", default="1000,2000,4000,8000", help="frames/s steps")
    p.add_argument(
        "--frame-climb", type=int, default=4,
        help="steps a fifth faster each that follow the last rate while it still keeps up",
    )  # fmt: skip
    p.add_argument("--no-pyod", action="store_true")
    p.add_argument(
        "--arch",
        choices=("conv", "mlp"),
        default="conv",
        help="model of the default checkpoint (conv: the `vlaewatch train` default)",
    )
    p.add_argument("--train-epochs", type=int, default=10, help="0: skip the training step")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="torchvision root with MNIST: train on its 0s (default: bundled digits)",
    )
    p.add_argument("--soak-seconds", type=float, default=180.0, help="0: skip the soak")
    p.add_argument(
        "--soak-warmup",
        type=float,
        default=90.0,
        help="seconds of load before the first RSS reading (past the 60 s retention)",
    )
    p.add_argument(
        "--soak-rate",
        default="half",
        help="frames/s of the soak: half (of the sustained rate), sustained, or a number",
    )
    p.add_argument(
        "--e2e-anomalies",
        type=float,
        default=0.1,
        help="share of anomalous frames in the end-to-end step (a line that "
        "fails one item in ten: far more than most)",
    )
    p.add_argument(
        "--e2e-seconds",
        type=float,
        default=120.0,
        help="measured seconds of the end-to-end step: long enough to hold Redis's AOF "
        "rewrites at their natural rate (at steady state one every 70 to 80 s)",
    )
    p.add_argument(
        "--e2e-window",
        type=float,
        default=30.0,
        help="the end-to-end step also reports p50 and p99 of each window of this many seconds",
    )
    p.add_argument(
        "--e2e-warmup",
        type=float,
        default=75.0,
        help="seconds of frames at the end-to-end rate before measuring: past the 60 s image "
        "retention, so that Redis holds this rate's data, not the overload steps'",
    )
    p.add_argument(
        "--train-repeats",
        type=int,
        default=2,
        help="plain loop and one Ray worker, run this many times in turn",
    )
    p.add_argument(
        "--inspection-sizes",
        default="tiles:128,metal:256",
        help="category:side of trainer.inspection measured like the digits (raw, HTTP, frames, "
        "end to end, bytes per item) with their default model; empty: none",
    )
    p.add_argument("--inspection-e2e-seconds", type=float, default=60.0)
    p.add_argument(
        "--scale-out-seconds",
        type=float,
        default=10.0,
        help="per load of the two-node step (bench.scale_out); 0: skip that step",
    )
    p.add_argument("--scale-out-epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--stem", default="speed", help="results file names: <out>/<stem>.json|md")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from contract.redis_server import EmbeddedRedis, free_port
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy, shutdown
    from trainer.data import load_digits, split_normal
    from vlae.checkpoint import load_checkpoint
    from vlaewatch import cluster

    batches = [int(b) for b in args.batches.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    digits = load_digits()
    images = np.concatenate([digits.test.images] * 2)[: max(batches)]
    # When each part of the run began, for the hypervisor's steal during it.
    parts: dict[str, float] = {"raw model and baselines": time.time()}
    with tempfile.TemporaryDirectory() as tmp, StealWatch() as steal:
        checkpoint = args.checkpoint or default_checkpoint(digits, args.arch, Path(tmp) / "model")
        loaded = load_checkpoint(checkpoint)
        report: dict[str, Any] = {
            "command": command_line("bench.throughput", argv),
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}, "
            f"load generators at nice {CLIENT_NICE}",
            "model_version": loaded.version,
        }
        report["raw_images_per_s"] = raw_model(loaded, images, batches, args.seconds)
        print(f"raw: {report['raw_images_per_s']}", file=sys.stderr)
        report["deck_loop_images_per_s"] = deck_loop(loaded, images, args.seconds)
        if not args.no_pyod:
            report["pyod_images_per_s"] = pyod_vae(
                split_normal(digits, ["0"]).train.images, images, args.seconds
            )
        with EmbeddedRedis(Path(tmp) / "redis") as redis_server:
            cluster.connect(num_cpus=os.cpu_count() or 2)
            try:
                if args.train_epochs:
                    parts["training"] = time.time()
                    from bench.training import training_overhead
                    from trainer.data import load_torchvision

                    if args.data_dir:
                        source, normal = load_torchvision("mnist", args.data_dir), ["0"]
                    else:  # the bundled subset is small: every digit is "normal" here
                        source, normal = digits, [str(d) for d in range(10)]
                    split = split_normal(source, normal)
                    report["training"] = training_overhead(split, args.train_epochs,
                                                           args.train_repeats)  # fmt: skip
                    report["training"]["data"] = f"{source.name}, normal {','.join(normal)}"
                # Every step keeps images 60 s and 20,000 score entries, not the defaults (an
                # hour, 100,000): the end-to-end step and the soak measure Redis holding their
                # own rate's data after a warm-up past the retention, not the 100,000-odd images
                # the HTTP steps stored before them (each AOF rewrite would write those too).
                cfg = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                                   consume_frames=False, retention_s=60,
                                   scores_maxlen=20_000)  # fmt: skip
                port = free_port()
                parts["HTTP"] = time.time()
                report["http"] = http_sweep(
                    lambda: deploy(cfg, DeploymentConfig(num_cpus=args.replica_cpus), port=port),
                    shutdown, images, batches, concurrency, args.seconds,
                    lambda b: raw_model(loaded, images, [b], args.seconds)[str(b)],
                )  # fmt: skip
                # A fresh key prefix: the API's consumer group starts on an empty stream.
                prefix = f"speed{time.time_ns()}"
                frames_cfg = {"consume_frames": True, "key_prefix": prefix}
                cfg = cfg.model_copy(update=frames_cfg)
                url = deploy(cfg, DeploymentConfig(num_cpus=args.replica_cpus), port=port)
                rates = sorted(int(r) for r in args.frame_rates.split(","))
                parts["frames"] = time.time()
                report["frames"] = frames_path(redis_server.url, prefix, images, rates,
                                               args.seconds, args.frame_climb)  # fmt: skip
                report["frames_sustained_per_s"] = sustained_rate(report["frames"])
                sustained = report["frames_sustained_per_s"] or rates[0]
                half = sustained / 2
                soak_rate = {"half": half, "sustained": sustained}.get(args.soak_rate)
                soak_rate = soak_rate or float(args.soak_rate)
                assert redis_server.process is not None  # started by the with statement
                redis_pid = redis_server.process.pid

                is_normal = digits.test.labels.astype(str) == "0"
                normal = digits.test.images[is_normal]
                mix = line_mix(normal, digits.test.images[~is_normal], args.e2e_anomalies)

                def with_api(api_url: str, api_pid: int) -> dict[str, Any]:
                    parts["end to end"] = time.time()
                    out = {"end_to_end": end_to_end(api_url, redis_server.url, prefix, mix, half,
                                                    args.e2e_seconds, args.e2e_warmup,
                                                    args.e2e_window, steal)}  # fmt: skip
                    out["end_to_end"] |= {"anomalous_share": args.e2e_anomalies,
                                          "warmup_s": args.e2e_warmup,
                                          "window_s": args.e2e_window}  # fmt: skip
                    if args.soak_seconds:
                        from bench.soak import soak

                        pids = {"redis-server": redis_pid, "api": api_pid}
                        parts["soak"] = time.time()
                        out["soak"] = soak(redis_server.url, prefix, normal, soak_rate,
                                           args.soak_seconds, pids, args.soak_warmup)  # fmt: skip
                    return out

                report |= against_api(redis_server.url, prefix, url, Path(tmp), with_api)
            finally:
                shutdown()
                cluster.shutdown()
        if args.inspection_sizes:
            from bench.speed_inspection import Knobs, measure

            parts["inspection sizes"] = time.time()
            knobs = Knobs(seconds=args.seconds, replica_cpus=args.replica_cpus,
                          concurrency=tuple(concurrency), frame_climb=args.frame_climb,
                          e2e_seconds=args.inspection_e2e_seconds)  # fmt: skip
            report["inspection_sizes"] = {
                "batches": list(knobs.batches),
                "sizes": [measure(spec, knobs, Path(tmp))
                          for spec in args.inspection_sizes.split(",")],
            }  # fmt: skip
        if args.scale_out_seconds:
            from bench.scale_out import scale_out

            parts["two nodes"] = time.time()
            report["scale_out"] = scale_out(checkpoint, digits.test.images,
                                            args.scale_out_seconds, args.scale_out_epochs,
                                            Path(tmp) / "scale-out")  # fmt: skip
        ends = [*list(parts.values())[1:], time.time()]
        spans = zip(parts.items(), ends, strict=True)
        report["steal_cores"] = {name: steal.cores(a, b) for (name, a), b in spans}
    best: dict[str, float] = {}
    for row in report["http"]:
        best[str(row["batch"])] = max(best.get(str(row["batch"]), 0.0), row["vs_raw"])
    report["best_http_ratio"] = best
    write_report(args.out, args.stem, report, markdown)
    return report


if __name__ == "__main__":
    main()
