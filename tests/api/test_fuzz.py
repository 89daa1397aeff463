"""The HTTP API and the scorer fuzzed with schemathesis against their own OpenAPI schemas, for
every role (no key, viewer, operator; the scorer's ingest and service too): no 5xx, every
response as documented, every error a JSON body with a reason, and the outcome each role
must get (401 without a key, 403 without the role, neither with it). The API under fuzz is
its own process on its own key prefix, so generated writes (thresholds, labels) never touch
the other tests' data."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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
# Who may call what, as docs/operations.md documents it: the API's GETs are a viewer's (operators
# hold viewer too), its POSTs an operator's; health and (public) metrics anyone's.
PUBLIC = {"/v1/health", "/metrics"}
GRANTS = {"viewer": {"GET"}, "operator": {"GET", "POST"}}
# Server-sent events never end: tested by the API tests with a reader that stops.
STREAMING = "/v1/stream"
EXAMPLES = 15  # per operation, mode and role
# Operations with neither parameters nor a body: negative mode has no invalid request to make
# of them, and is skipped for them alone.
NO_INPUT = {"GET /v1/health", "GET /v1/me", "GET /metrics"}
# Cases generated invalid that each other operation must get, per mode run of EXAMPLES: some
# generated in negative mode come out valid (an optional body left out), 8 of 15 at the
# fewest in 400 runs; a negative mode that tests nothing sends 0.
NEGATIVE_FLOOR = EXAMPLES // 3


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


def _role_outcome(response: Any, role: str, allowed: bool, label: str) -> None:
    """The key decides first: no key 401, a key without the role 403, a key with it never
    either. Only a body that is not even JSON comes before the key (FastAPI reads a route's
    body before its dependencies): refused as unreadable, for anyone, saying nothing more."""
    status = response.status_code
    if _unreadable(response):
        return
    if allowed:
        assert status not in (401, 403), (label, role, status, response.text[:200])
    else:
        assert status == (401 if role == "none" else 403), (label, role, status,
                                                            response.text[:200])  # fmt: skip


def _unreadable(response: Any) -> bool:
    if response.status_code == 400:
        return "parsing the body" in response.text
    if response.status_code != 422:
        return False
    body = response.json()
    errors = body.get("errors") or (body["detail"] if isinstance(body["detail"], list) else [])
    return any(e.get("type") == "json_invalid" for e in errors)


def _has_input(op: Any) -> bool:
    """Whether the operation takes parameters or a body: something to make invalid."""
    return bool(list(op.iter_parameters()) or list(op.body))


def _fuzz(
    url: str, op: Any, headers: dict[str, str], examples: int, outcome: Callable[[Any], None]
) -> Counter[GenerationMode]:
    """Valid and invalid requests (schemathesis' positive and negative modes) to one
    operation, each checked against the schema and by ``outcome``; the cases sent, by the
    mode each was generated in."""
    sent: Counter[GenerationMode] = Counter()
    modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * _has_input(op)
    with httpx.Client(timeout=60) as http:
        for mode in modes:
            # Generation slows with the machine's load; too little generated fails the floors.
            @given(case=op.as_strategy(mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            def fuzz(case: Any) -> None:
                response = _send(http, case.as_transport_kwargs(base_url=url, headers=headers))
                sent[case.meta.generation.mode] += 1
                case.validate_response(response, checks=CHECKS, headers=headers)
                outcome(response)

            fuzz()
    return sent


def _short(
    sent: dict[str, Counter[GenerationMode]], no_input: set[str], floor: int
) -> dict[str, dict[GenerationMode, int]]:
    """The operations that got no valid case, or (but those of ``no_input``) fewer invalid
    ones than ``floor``."""
    return {
        label: dict(n)
        for label, n in sent.items()
        if n[GenerationMode.POSITIVE] < 1
        or (label not in no_input and n[GenerationMode.NEGATIVE] < floor)
    }


@pytest.mark.parametrize("role", list(ROLES))
def test_every_endpoint_no_5xx_and_every_error_with_a_reason(fuzz_api: str, role: str) -> None:
    """Valid and invalid requests to every operation of the schema, sent with this role's
    key: each operation gets at least NEGATIVE_FLOOR invalid ones, but those of NO_INPUT."""
    key = ROLES[role]
    headers = {"X-API-Key": key} if key else {}
    schema = schemathesis.openapi.from_url(f"{fuzz_api}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    assert {op.label for op in operations if not _has_input(op)} == NO_INPUT
    sent = {}
    for op in operations:
        if op.path == STREAMING:
            continue
        allowed = op.path in PUBLIC or op.method.upper() in GRANTS.get(role, set())
        outcome = partial(_role_outcome, role=role, allowed=allowed, label=op.label)
        sent[op.label] = _fuzz(fuzz_api, op, headers, EXAMPLES, outcome)
    assert len(sent) == len(operations) - 1
    short = _short(sent, NO_INPUT, NEGATIVE_FLOOR)
    assert not short, short


SCORER_ROLES = ("none", "ingest", "service", "viewer", "operator")
# The scorer's routes: the line clients score; the API (service), viewers and operators read
# images; health is anyone's.
SCORER_GRANTS = {"/v1/score": {"ingest"}, "/v1/preview": {"service", "viewer", "operator"},
                 "/v1/explore": {"service", "viewer", "operator"}}  # fmt: skip
SCORER_NO_INPUT = {"GET /v1/health"}
SCORER_EXAMPLES = EXAMPLES // 3  # a scoring request runs the model: fewer of them
SCORER_NEGATIVE_FLOOR = 3  # each of 100 runs of 5 generated 5 invalid cases, every operation


@pytest.fixture(scope="module")
def keyed_scorer(scorer_url: str, redis_server: Any, checkpoint: Any) -> Iterator[str]:
    """The session scorer given the key ring (digests), then its open mode again."""
    from contract.auth import digests, parse_api_keys
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy

    port = int(scorer_url.rsplit(":", 1)[1])
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    ring = parse_api_keys(",".join(f"{k}:{role}" for role, k in API_KEYS.items()))
    deploy(base.model_copy(update={"api_key_digests": digests(ring)}),
           DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
    yield scorer_url
    deploy(base, DeploymentConfig(num_cpus=0.25), port=port)


@pytest.mark.parametrize("role", SCORER_ROLES)
def test_the_scorer_too_for_every_role(keyed_scorer: str, role: str) -> None:
    """The scorer's schema fuzzed the same way, with the outcome each role must get."""
    key = API_KEYS.get(role)
    headers = {"X-API-Key": key} if key else {}
    schema = schemathesis.openapi.from_url(f"{keyed_scorer}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= set(SCORER_GRANTS) | {"/v1/health"}
    assert {op.label for op in operations if not _has_input(op)} == SCORER_NO_INPUT
    sent = {}
    for op in operations:
        allowed = op.path not in SCORER_GRANTS or role in SCORER_GRANTS[op.path]
        outcome = partial(_role_outcome, role=role, allowed=allowed, label=op.label)
        sent[op.label] = _fuzz(keyed_scorer, op, headers, SCORER_EXAMPLES, outcome)
    short = _short(sent, SCORER_NO_INPUT, SCORER_NEGATIVE_FLOOR)
    assert not short, short
