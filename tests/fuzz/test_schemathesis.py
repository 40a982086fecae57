"""Keep it held (issue 13): schemathesis against both services' OpenAPI, in process over ASGI (no
network), with real Redis and, for the planner, the slow_llm server answering at once. Checks: no
5xx, every answer as documented (status, content type, headers, body schema), bad input refused.
Examples per operation are bounded so the run takes about a minute on 2 cores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

from planner_service.app import create_app as create_planner
from planner_service.images.serving import ImagesSettings
from planner_service.settings import PlannerSettings
from render_service.app import create_app as create_render
from render_service.settings import RenderSettings
from tests.planner.slow_llm import SlowLLM, start_slow_llm
from tests.render_service.helpers import unique_prefix
from tests.support import RedisServer

EXAMPLES = 100
TOKEN, ADMIN = "fuzz-token", "fuzz-admin"
# Both services run with auth on (the shape to keep held); schemathesis sends the tokens, and its
# negative cases leave them out or spoil them, expecting a 401.
# A body over the size limit is refused with 413 before it is parsed: a rejection too.
REJECTIONS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}, "AdminBearer": {"bearer": ADMIN}}},
        "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
        # The Images API waits for the render, and no render worker runs here: its 504 (the
        # documented "render outlasted the timeout") is the one 5xx this run expects.
        "operations": [
            {
                "include-path": "/v1/images/generations",
                "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "504"]}},
            }
        ],
    }
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Redis and the LLM are real, so an example may take a while; shrinking is not worth minutes here.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@pytest.fixture(scope="module")
def render_schema(redis_server: RedisServer) -> schemathesis.Schema:
    app = create_render(RenderSettings(redis_url=redis_server.url, key_prefix=unique_prefix("fuzz-render"),
                                       readyz_requires_worker=False, api_token=TOKEN, admin_token=ADMIN))  # fmt: skip
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)


@pytest.fixture(scope="module")
def instant_llm() -> Iterator[SlowLLM]:
    running = start_slow_llm(0.0)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def planner_schema(redis_server: RedisServer, instant_llm: SlowLLM) -> schemathesis.Schema:
    app = create_planner(
        PlannerSettings(
            redis_url=redis_server.url,
            key_prefix=unique_prefix("fuzz-planner"),
            llm_url=f"{instant_llm.url}/v1",
            llm_kind="none",
            grammar_profile="permissive",
            one_shot=False,
            max_retries=0,
            api_token=TOKEN,
        )
    )
    # No render worker runs here: the Images API's wait for the render ends at once, in its 504.
    app.state.images_settings = ImagesSettings(timeout_seconds=0.2)
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)


def _describe(failure: BaseException) -> str:
    status = getattr(failure, "status_code", None)  # a bare "Server error" says which 5xx here
    return f"{failure} (HTTP {status})" if status is not None else str(failure)


def fuzz(schema: schemathesis.Schema) -> list[str]:
    """Every operation, with valid and with invalid data; the failures found, one line each.

    (Operations are walked here rather than with ``schema.parametrize``: its fixture form does not
    work with pytest 9, and the schema needs the session's Redis, so it cannot be built at import.)"""
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @FUZZ
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                continue  # nothing to spoil: an operation without parameters or body has no invalid input
            except (Exception, FailureGroup) as exc:  # the failures say what and how to reproduce
                found = [_describe(e) for e in getattr(exc, "exceptions", ())] or [_describe(exc)]
                failures.append(f"{operation.label} ({mode.value}): " + "\n".join(found))
    return failures


def test_render_api(render_schema: schemathesis.Schema) -> None:
    failures = fuzz(render_schema)
    assert not failures, "\n\n".join(failures)


def test_planner_api(planner_schema: schemathesis.Schema) -> None:
    failures = fuzz(planner_schema)
    assert not failures, "\n\n".join(failures)
