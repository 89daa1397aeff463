"""What the benchmarks share: where results go and how a run's command is recorded."""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

T = TypeVar("T")

# A line's clients (the cameras' sender, an HTTP caller) run on machines of their own, not on
# the service's cores. On the one machine a benchmark has, the threads that stand for them run
# at this nice value, so that they get the CPU the service leaves idle, as they would on a
# machine of their own, rather than taking turns with it (bench/README.md, step 14). Their
# clocks are unchanged: a frame's starts when its XADD goes out, a request's when it is posted.
CLIENT_NICE = 10


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that ran, as a shell would take it (arguments quoted where they need it), with
    the data directory named by its role, not its path."""
    out, skip = [f"python -m {module}"], False
    for a in sys.argv[1:] if argv is None else argv:
        if skip:
            out.append("$DATA_DIR")
            skip = False
        elif a == "--data-dir":
            out.append(a)
            skip = True
        elif a.startswith("--data-dir="):
            out.append("--data-dir=$DATA_DIR")
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def write_report(out: Path, stem: str, report: dict[str, Any],
                 markdown: Callable[[dict[str, Any]], str]) -> None:  # fmt: skip
    """``out/<stem>.json`` (every number) and ``out/<stem>.md`` (the table), also printed."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(table)
    print(table)


def p99(ordered: list[float]) -> float | None:
    """The 99th percentile of sorted values (the nearest rank below); None when empty."""
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None


def default_checkpoint(digits: Any, arch: str, out: Path) -> Path:
    """The benches' default model, trained here: the product's (``arch`` conv, the `vlaewatch
    train` default, or the deck's mlp) for 10 epochs on the bundled digits' 0s."""
    from trainer.data import split_normal
    from trainer.pipeline import DatasetInfo, train_model
    from trainer.train import LoopContext, TrainConfig, fit
    from vlae.model import ConvVLAEConfig, VLAEConfig

    return train_model(
        split_normal(digits, ["0"]), VLAEConfig() if arch == "mlp" else ConvVLAEConfig(),
        TrainConfig(epochs=10), DatasetInfo("digits"),
        lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)), {"kind": "in-process"},
        out=out,
    )  # fmt: skip


def png_frames(images: np.ndarray, n: int = 256) -> list[bytes]:
    """The first ``n`` of uint8 (N, C, H, W) images, grey or colour, as PNG bytes, as a camera
    would send them."""
    from PIL import Image

    out = []
    for im in images[:n]:
        buf = io.BytesIO()
        pixels = im[0] if len(im) == 1 else np.ascontiguousarray(im.transpose(1, 2, 0))
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests while this VM had work ready ("steal" in
    /proc/stat, all CPUs); 0 where the platform does not count it."""
    import psutil

    return float(getattr(psutil.cpu_times(), "steal", 0.0))


class Watch:
    """Calls ``sample()`` every ``every_s`` from a thread of its own while the ``with`` block
    runs, and once more as it ends (``finish()``); what a sample records is the subclass's."""

    def __init__(self, every_s: float, name: str) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every_s):
                self.sample()
        finally:
            self.finish()

    def sample(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """After the last sample, on the watch's thread."""


class StealWatch(Watch):
    """The hypervisor's steal, sampled every ``every_s`` while the block runs: ``cores(a, b)``
    is the CPU taken from this VM between two wall-clock times, in cores. A slow reading on a
    VM with neighbours is then a measured fact, not a guess (this one lost up to 0.8 of its 2
    cores for seconds at a time: bench/README.md, step 16)."""

    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__(every_s, "steal-watch")
        self.samples: list[tuple[float, float]] = []
        self.sample()

    def sample(self) -> None:
        self.samples.append((time.time(), steal_seconds()))

    finish = sample

    def cores(self, a: float, b: float) -> float | None:
        """Mean steal in cores between the first and the last sample taken in [a, b]; None
        when fewer than two were."""
        inside = [s for s in list(self.samples) if a <= s[0] <= b]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def as_client() -> None:
    """The calling thread at ``CLIENT_NICE`` (on Linux each thread has a nice value of its
    own); elsewhere nothing. One way: an unprivileged process cannot raise it back."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, tid, max(CLIENT_NICE, os.getpriority(os.PRIO_PROCESS, tid)))


def on_client_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a thread of its own at ``CLIENT_NICE``: its result, or its error."""
    with ThreadPoolExecutor(1, thread_name_prefix="line-client", initializer=as_client) as pool:
        return pool.submit(fn, *args).result()


def send_frames(client: Any, prefix: str, pngs: list[bytes], tag: str, rate: float,
                seconds: float, line: str, tick_s: float = 0.05,
                sent_at: dict[str, float] | None = None) -> int:  # fmt: skip
    """XADD frames (item ids ``tag-<n>``) at a steady ``rate`` for ``seconds``, each ``tick_s``
    of them in one pipelined round trip, from a line client's thread (``on_client_thread``);
    returns how many were sent. ``sent_at`` gets each item's XADD time (wall clock, taken as
    its round trip goes out)."""
    return on_client_thread(_send_frames, client, prefix, pngs, tag, rate, seconds, line,
                            tick_s, sent_at)  # fmt: skip


def _send_frames(client: Any, prefix: str, pngs: list[bytes], tag: str, rate: float,
                 seconds: float, line: str, tick_s: float,
                 sent_at: dict[str, float] | None) -> int:  # fmt: skip
    per_tick = max(1, int(rate * tick_s))
    start, sent = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pipe = client.pipeline(transaction=False)
        ids = [f"{tag}-{sent + i}" for i in range(per_tick)]
        for item_id in ids:
            pipe.xadd(f"{prefix}:frames", {"image": pngs[sent % len(pngs)], "line": line,
                                           "item_id": item_id})  # fmt: skip
            sent += 1
        if sent_at is not None:
            sent_at.update(dict.fromkeys(ids, time.time()))
        pipe.execute()
        time.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    return sent


def halves_max(samples: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Per process, the largest RSS in the first and in the second half of the samples."""
    half = len(samples) // 2
    roles = [k for k in samples[0] if k != "t_s"] if half else []
    return {r: (max(s[r] for s in samples[:half]), max(s[r] for s in samples[half:]))
            for r in roles}  # fmt: skip
