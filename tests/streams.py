"""Reading a shared Redis stream from where a test began: the session's streams hold every
earlier test's entries, and a helper that polls must not re-read them all on every poll."""

from __future__ import annotations

from typing import Any

import redis


def stream_end(client: redis.Redis, stream: str) -> str:
    """The id of the stream's last entry now ("0-0" when it has none): what a test records at
    its start, to read only the entries added after it."""
    last: Any = client.xrevrange(stream, count=1)
    return str(last[0][0].decode()) if last else "0-0"


def entries_since(client: redis.Redis, stream: str, start: str) -> list[Any]:
    """The stream's entries after ``start`` (exclusive), oldest first, as ``XRANGE`` gives
    them."""
    return list(client.xrange(stream, f"({start}", "+"))  # type: ignore[arg-type]
