"""The API's error types, and the one place they become HTTP status codes."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.calibrate import CalibrationError


class ApiError(Exception):
    """An error with a status code and a reason meant for the caller."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Unprocessable(ApiError):
    status = 422


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class TooManyRequests(ApiError):
    """A caller over its request rate; ``retry_after`` seconds until it may try again."""

    status = 429

    def __init__(self, reason: str, retry_after: str) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Upstream(ApiError):
    """The scorer (for previews) did not answer as it should."""

    status = 502


class Unavailable(ApiError):
    status = 503


def install_handlers(app: FastAPI) -> None:
    """Map error types to responses with a ``detail`` reason."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "ApiKey"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": exc.retry_after}
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=headers)

    async def calibration_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    async def redis_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"Redis unavailable: {exc}"}, status_code=503)

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI's default puts the list of field errors in ``detail``; the schema (and every
        # client) reads ``detail`` as one reason, so the list moves to ``errors``.
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        reason = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in errors
        )
        body = {"detail": f"invalid request: {reason or 'unreadable'}", "errors": errors}
        return JSONResponse(jsonable_encoder(body), status_code=422)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(CalibrationError, calibration_error)
    app.add_exception_handler(RedisError, redis_error)
    app.add_exception_handler(ConnectionError, redis_error)
