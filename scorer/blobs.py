"""Item images outside Redis: a folder or an object store, through pyarrow's filesystems.

A published batch's images that go to the store are written as one object (one PUT, not one
per item), under a time bucket::

    <root>/<bucket>/<replica>-<sequence>      bucket = floor(ts_scored / bucket_s)

and Redis keeps, in the item's header, a reference ``<bucket>/<name>:<offset>:<length>``
(``contract.records.ItemBlob.ref``), read back with one ranged read. Retention deletes whole
buckets: a bucket goes once its newest possible item has been retained ``retention_s``, so
an image outlives its Redis key by at most one bucket (a tenth of the retention, at most ten
minutes). Names are made here, never from an item id or a line: nothing a client sends
becomes a path.

URIs: a local path or ``file://`` (the default, ``VLAEWATCH_HOME/blobs``: one machine's
replicas only), ``s3://bucket/prefix`` with pyarrow's options as a query
(``?endpoint_override=host:port&scheme=http`` for an S3-compatible server), ``gs://``,
``hdfs://``. Credentials come from the replica's environment (``AWS_ACCESS_KEY_ID``, an
instance role...), never from the URI, which the Ray dashboard shows.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

MAX_BUCKETS_SWEPT = 10_000


def bucket_seconds(retention_s: int) -> int:
    """A tenth of the retention, between 1 s and 10 minutes: how long the store may hold an
    image past its Redis key."""
    return max(1, min(retention_s // 10, 600))


@dataclass(frozen=True)
class BlobRef:
    """Where one item's bytes lie: an object and a byte range in it."""

    path: str  # relative to the store's root: "<bucket>/<name>"
    offset: int
    length: int

    def __str__(self) -> str:
        return f"{self.path}:{self.offset}:{self.length}"

    @classmethod
    def parse(cls, text: str) -> BlobRef:
        path, offset, length = text.rsplit(":", 2)
        bucket, _, name = path.partition("/")
        if not (bucket.isdigit() and name and "/" not in name and ".." not in name):
            raise ValueError(f"not a blob reference: {text[:80]!r}")
        return cls(path, int(offset), int(length))


class BlobStore:
    """Writes batches of item images as bucketed objects, reads one item back, deletes
    buckets past retention. Blocking (pyarrow); the scorer calls it off its event loop."""

    def __init__(self, uri: str, retention_s: int) -> None:
        if "://" not in uri:
            uri = os.path.abspath(uri)
        self.uri = uri
        self.fs, self.root = pafs.FileSystem.from_uri(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.retention_s = retention_s
        self.bucket_s = bucket_seconds(retention_s)
        self._name = f"{uuid.uuid4().hex[:12]}-{os.getpid()}"
        self._seq = 0
        self._lock = threading.Lock()
        self._made: set[int] = set()  # buckets whose folder exists (local filesystems)

    def _next_name(self) -> str:
        with self._lock:
            self._seq += 1
            return f"{self._name}-{self._seq}"

    def write(self, payloads: list[bytes], ts: float) -> list[BlobRef]:
        """One object of ``payloads``, concatenated; each one's reference, in order."""
        bucket = int(ts // self.bucket_s)
        path = f"{bucket}/{self._next_name()}"
        if self.local and bucket not in self._made:
            self.fs.create_dir(f"{self.root}/{bucket}", recursive=True)
            self._made = {b for b in self._made if b >= bucket - 1} | {bucket}
        refs, offset = [], 0
        for p in payloads:
            refs.append(BlobRef(path, offset, len(p)))
            offset += len(p)
        with self.fs.open_output_stream(f"{self.root}/{path}") as out:
            for p in payloads:
                out.write(p)
        return refs

    def read(self, ref: BlobRef) -> bytes | None:
        """An item's bytes; None once its bucket was deleted (past retention)."""
        try:
            with self.fs.open_input_file(f"{self.root}/{ref.path}") as f:
                data: bytes = f.read_at(ref.length, ref.offset)
        except FileNotFoundError:
            return None
        except OSError as exc:  # S3 answers a missing key with an error of its own
            if "not exist" in str(exc) or "NoSuchKey" in str(exc):
                return None
            raise
        return data if len(data) == ref.length else None

    def sweep(self, now: float | None = None) -> int:
        """Delete the buckets every image of which has been retained ``retention_s``; how
        many. Any replica may sweep: deleting a bucket twice is harmless."""
        now = time.time() if now is None else now
        try:
            found = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return 0
        done = 0
        for info in found[:MAX_BUCKETS_SWEPT]:
            name = info.base_name
            if not name.isdigit() or (int(name) + 1) * self.bucket_s + self.retention_s > now:
                continue
            try:
                self.fs.delete_dir(info.path)
            except (OSError, pa.ArrowException):
                continue  # another replica's sweep took it
            done += 1
        return done
