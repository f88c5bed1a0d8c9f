"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis) against a real server with a
secret key: no 5xx ever, every status and body as documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from schemathesis.specs.openapi import checks as openapi_checks

from tests.processes import serve

SECRET = "sk_fuzz_secret_key"
AUTH = {"Authorization": f"Bearer {SECRET}"}
ALL_DAY = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@pytest.fixture(scope="module")
def base_url(module_database_url: str) -> Iterator[str]:
    env = {"DATABASE_URL": module_database_url, "SLOTLOG_BOOTSTRAP_SECRET_KEY": SECRET}
    with serve(env, workers=1) as (base, _):
        # Some objects to hit, so generated ids sometimes exist.
        with httpx.Client(base_url=base, headers=AUTH) as c:
            assert (
                c.put("/v1/resources/a", json={"name": "A", "weekly": ALL_DAY}).status_code == 200
            )
            body = {"name": "S", "duration_minutes": 30, "resources": ["a"]}
            assert c.put("/v1/services/a", json=body).status_code == 200
        yield base


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.slow
def test_no_server_errors_and_answers_as_documented(api_schema: Any) -> None:
    # schemathesis' pytest plugin does not support pytest 9 yet, so its Hypothesis strategies are
    # driven directly: a bounded number of generated requests per operation.
    ops = operations(api_schema)
    assert len(ops) >= 20
    for op in ops:

        @given(case=op.as_strategy())
        @settings(
            max_examples=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            case.call_and_validate(headers=AUTH, checks=CHECKS)

        run()
