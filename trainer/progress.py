"""Training progress on the terminal: one tqdm bar a run, fed once per epoch.

In-process, ``fit`` calls the bar directly (``LoopContext.progress``). Under Ray Train, rank 0
puts each epoch's metrics on a Ray queue and a thread of the driver feeds the bar
(``Relay``), so the workers' own output can stay in Ray's log files.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import IO, Any

from tqdm import tqdm

SHOWN = ("loss", "val_loss", "kl")  # the metrics on the bar; all of them are in the history


class EpochBar:
    """A progress bar over a run's epochs, with its latest loss figures."""

    def __init__(self, desc: str = "training", file: IO[str] | None = None) -> None:
        self.desc, self.file = desc, file or sys.stderr
        self._bar: tqdm[Any] | None = None

    def __call__(self, metrics: dict[str, float], epochs: int) -> None:
        if self._bar is None:
            self._bar = tqdm(total=epochs, desc=self.desc, unit="epoch", file=self.file,
                             dynamic_ncols=True, leave=True)  # fmt: skip
        self._bar.n = int(metrics["epoch"])  # a resumed run starts past 0
        self._bar.set_postfix({k: f"{metrics[k]:.4g}" for k in SHOWN if k in metrics})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Relay:
    """Carries epoch metrics from a Ray Train worker to a progress callback of the driver.

    ``sink`` goes into the worker's config; ``start``/``stop`` run the driver's thread."""

    def __init__(self, show: Any) -> None:
        from ray.util.queue import Queue

        self.show = show
        self.sink = Queue(maxsize=256, actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def _run(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                metrics, epochs = self.sink.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            self.show(metrics, epochs)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sink.shutdown()


def put(sink: Any, metrics: dict[str, float], epochs: int) -> None:
    """The worker's side: never blocks training on the display."""
    from ray.util.queue import Full

    with contextlib.suppress(Full):  # a full queue drops a frame of the display, no more
        sink.put_nowait((metrics, epochs))
