"""The way into a replica: the streamed body limit and the caller check, which run before
any route, and reading a score request's body into images.

Serve runs a copy of the FastAPI app in each replica, so what a request is checked against
(``Admission``: the key ring, the body limit) is read from the replica serving it, never
from ``app.state``."""

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from ray import serve
from starlette.datastructures import UploadFile

from contract.auth import KeyRing, Principal, Refused, Role, admit
from scorer.holder import ModelHolder
from vlae.images import InputError, Limits, load_npy, split_batch

NPY_TYPES = ("application/x-npy", "application/octet-stream", "application/npy")


@dataclass(frozen=True)
class Admission:
    """What a replica checks each request against; set from its ``user_config``."""

    keyring: KeyRing = field(default_factory=lambda: KeyRing({}))  # empty: open mode
    max_request_bytes: int = Limits.max_request_bytes


def _admission() -> Admission:
    """The admission of the replica serving this request (its ``admission`` attribute)."""
    replica: Any = serve.get_replica_context().servable_object
    admission: Admission = replica.admission
    return admission


class BodyTooLarge(Exception):
    """A request body past the limit, found while it streams in."""


class BodyLimit:
    """Refuses a request body past the replica's ``max_request_bytes`` while it streams in,
    whatever the request declared: a chunked upload has no Content-Length, and before, a
    multipart one was read whole. 413 with a reason, as JSON."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        limit = _admission().max_request_bytes
        seen, started = 0, False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def watched(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.inner(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            body = json.dumps({"detail": f"request larger than {limit} bytes"}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})


def caller(*roles: Role) -> Callable[[Request], Principal]:
    """A dependency admitting callers that hold one of ``roles`` (``contract.auth.admit``)
    by the replica's key ring, run before the body is read."""

    def dependency(request: Request) -> Principal:
        try:
            return admit(_admission().keyring, request.method, request.headers, *roles)
        except Refused as exc:
            raise HTTPException(exc.status, exc.reason) from None

    return dependency


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a body that cannot be read (not JSON)"},
    401: {"description": "no API key, or an unknown one"},
    403: {"description": "the key's role may not do this, or a cross-site browser request"},
}


async def _read_form(
    request: Request, limits: Limits, line: str, item_id: list[str]
) -> tuple[list[bytes | np.ndarray], str, list[str]]:
    """A multipart body's files (field ``files``), and its ``line`` and ``item_id`` fields
    when it has them (else the query's)."""
    try:
        form = await request.form(max_files=limits.max_items, max_fields=limits.max_items + 8)
    except BodyTooLarge:
        raise
    except Exception as exc:  # starlette raises MultiPartException and HTTPException variants
        raise HTTPException(400, f"cannot read multipart form: {exc}") from None
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    payloads: list[bytes | np.ndarray] = []
    for f in files:
        payloads.append(await f.read(limits.max_image_bytes + 1))
    form_line = form.get("line")
    if isinstance(form_line, str) and form_line:
        line = form_line
    form_ids = [v for v in form.getlist("item_id") if isinstance(v, str)]
    if len(form_ids) == 1 and "," in form_ids[0]:
        form_ids = form_ids[0].split(",")
    return payloads, line, form_ids or item_id


async def _read_npy(
    request: Request, limits: Limits, shape: tuple[int, int, int]
) -> list[np.ndarray]:
    """An NPY body's images, split to ``shape`` off the event loop (health and other
    requests go on meanwhile)."""
    body = await request.body()
    try:
        arrays = await asyncio.to_thread(lambda: split_batch(load_npy(body, limits), shape, limits))
    except InputError as exc:
        raise HTTPException(exc.status, exc.reason) from None
    return list(arrays)


async def read_payloads(
    request: Request, limits: Limits, line: str, item_id: list[str], holder: ModelHolder
) -> tuple[list[bytes | np.ndarray], str, list[str]]:
    """The images of a score request (with its line and item ids), checked against
    ``limits``; HTTP errors for a body that cannot be taken."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > limits.max_request_bytes:
        raise HTTPException(413, f"request larger than {limits.max_request_bytes} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    payloads: list[bytes | np.ndarray]
    if ctype == "multipart/form-data":
        payloads, line, item_id = await _read_form(request, limits, line, item_id)
    elif ctype in NPY_TYPES:
        shape = holder.model(line).card.image_shape
        payloads = list(await _read_npy(request, limits, shape))
    else:
        raise HTTPException(415, "send multipart/form-data (field 'files') or application/x-npy")
    if not payloads:
        raise HTTPException(400, "no images: add one or more files in the field 'files'")
    if len(payloads) > limits.max_items:
        raise HTTPException(413, f"{len(payloads)} images; at most {limits.max_items}")
    if item_id and len(item_id) != len(payloads):
        raise HTTPException(400, f"{len(item_id)} item ids for {len(payloads)} images")
    return payloads, line, item_id
