"""The HTTP API fuzzed with schemathesis against its own OpenAPI schema, for every role (no key,
viewer, operator): no 5xx, every response as documented, every error a JSON body with a
reason. The API under fuzz is its own process on its own key prefix, so generated writes
(thresholds, labels) never touch the other tests' data."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import API_KEYS, ApiProcess

pytestmark = pytest.mark.reliability

ROLES = {"none": None, "viewer": API_KEYS["viewer"], "operator": API_KEYS["operator"]}
# Server-sent events never end: tested by the API tests with a reader that stops.
STREAMING = "/v1/stream"
EXAMPLES = 15  # per operation, mode and role


@pytest.fixture(scope="module")
def fuzz_api(
    redis_server: Any, scorer_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    api = ApiProcess(redis_server.url, scorer_url, tmp_path_factory.mktemp("fuzz"),
                     key_prefix="fuzz", rate_limit=0, login_failure_burst=100_000)  # fmt: skip
    yield api.url
    # Still up after the fuzz, and stops cleanly (uvicorn re-raises the SIGTERM it drained on).
    assert api.stop() in (0, -signal.SIGTERM)


def error_has_a_reason(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answer is JSON with a non-empty ``detail``."""
    if response.status_code < 400:
        return None
    body = response.json()  # raises (fails the case) on a non-JSON error body
    detail = body.get("detail") if isinstance(body, dict) else None
    assert detail, f"{response.status_code} without a reason: {response.text[:200]}"
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, error_has_a_reason]  # fmt: skip


def _send(http: httpx.Client, kwargs: dict[str, Any]) -> httpx.Response:
    """Send a case serialized for ``requests`` with httpx (schemathesis' own requests transport
    trips over the urllib3 fork that grafana-client's niquests installs)."""
    kwargs = dict(kwargs)
    data = kwargs.pop("data", None)
    if isinstance(data, (bytes, str)):
        kwargs["content"] = data
    elif data is not None:
        kwargs["data"] = data
    kwargs.pop("auth", None)
    return http.request(**kwargs)


@pytest.mark.parametrize("role", list(ROLES))
def test_every_endpoint_no_5xx_and_every_error_with_a_reason(fuzz_api: str, role: str) -> None:
    """Valid and invalid requests (schemathesis' positive and negative modes) to every
    operation of the schema, sent with this role's key."""
    key = ROLES[role]
    headers = {"X-API-Key": key} if key else {}
    schema = schemathesis.openapi.from_url(f"{fuzz_api}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    tried = 0
    http = httpx.Client(timeout=30)
    for op in operations:
        if op.path == STREAMING:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def fuzz(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url=fuzz_api, headers=headers)
                response = _send(http, kwargs)
                case.validate_response(response, checks=CHECKS, headers=headers)

            try:
                fuzz()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid request to make.
                assert mode is GenerationMode.NEGATIVE, op.label
                continue
            tried += 1
    assert tried >= len(operations) - 1
