"""What the benchmarks share: where results go and how a run's command is recorded."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that ran, with the data directory named by its role, not its path."""
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
            out.append(a)
    return " ".join(out)


def png_frames(images: np.ndarray, n: int = 256) -> list[bytes]:
    """The first ``n`` of uint8 (N, 1, H, W) images as PNG bytes, as a camera would send them."""
    from PIL import Image

    out = []
    for im in images[:n, 0]:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def send_frames(client: Any, prefix: str, pngs: list[bytes], tag: str, rate: float,
                seconds: float, line: str) -> int:  # fmt: skip
    """XADD frames (item ids ``tag-<n>``) at a steady ``rate`` for ``seconds``, in pipelined
    bursts of 50 ms; returns how many were sent."""
    per_tick = max(1, int(rate * 0.05))
    start, sent = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pipe = client.pipeline(transaction=False)
        for _ in range(per_tick):
            pipe.xadd(f"{prefix}:frames", {"image": pngs[sent % len(pngs)], "line": line,
                                           "item_id": f"{tag}-{sent}"})  # fmt: skip
            sent += 1
        pipe.execute()
        time.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    return sent
