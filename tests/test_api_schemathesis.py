"""Schemathesis over the OpenAPI document: for requests generated from the schema (valid
and invalid), no server error, and every answer matches its documented status, content
type and schema.  The app runs on a real embedded store, state DB and tokens; bounded
to a few examples per operation so the whole run stays short."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from support.anomaly import trained
from support.api import HOUR, ApiEnv, flow_store, make_env

from appliance.api.queries import TOP_DIMENSIONS

START = int(time.time()) // HOUR * HOUR - 2 * HOUR
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiEnv]:
    root = tmp_path_factory.mktemp("api-schemathesis")
    with flow_store(root / "data", START, hours=1, per_hour=2000) as store:
        yield make_env(root, store, clock=lambda: float(START + HOUR), anomaly=trained(root / "anomaly", seconds=60))


@pytest.fixture(scope="module")
def api_schema(env: ApiEnv) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", env.app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_schema(case: Any, env: ApiEnv) -> None:
    response = case.call_and_validate(headers=env.headers(), checks=CHECKS)
    assert response.status_code != 503, response.text  # the store is up: any query it fails is a bug


def test_openapi_document_describes_the_contract(env: ApiEnv) -> None:
    document = env.client.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/announce", "/withdraw", "/blackholes", "/api/v1/lookup/{ip}", "/api/v1/flows/top",
                 "/api/v1/flows/series", "/api/v1/detections", "/api/v1/exporters", "/api/v1/config",
                 "/api/v1/rules", "/api/v1/config/validate", "/api/v1/rules/validate", "/health", "/metrics",
                 "/api/v1/backtest", "/api/v1/backtest/{job_id}"):
        assert path in paths, path
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert paths["/announce"]["post"]["security"] == [{"HTTPBearer": []}]
    by = {p["name"]: p for p in paths["/api/v1/flows/top"]["get"]["parameters"]}["by"]
    assert by["schema"]["$ref"] == "#/components/schemas/Dimension"
    assert document["components"]["schemas"]["Dimension"]["enum"] == list(TOP_DIMENSIONS)
    error = document["components"]["schemas"]["ErrorBody"]["properties"]
    assert set(error) == {"error", "detail", "problems"}
