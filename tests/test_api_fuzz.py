"""Schemathesis against the app's own OpenAPI spec: client input never gets a 5xx.

Cases come from schemathesis' strategies, driven by one Hypothesis test (bounded number of
examples), without schemathesis' pytest plugin."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.engine import SearchEngine
from search.http.app import create_app
from search.settings import ServeConfig


@pytest.fixture(scope="module")
def operations(real_index, settings, encoder):
    app = create_app(SearchEngine(real_index[0], ServeConfig(settings), encoder=encoder))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 8  # every endpoint is in the spec
    return ops


def test_no_server_errors(operations):
    seen: set[str] = set()

    @given(data=st.data())
    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(data):
        op = data.draw(st.sampled_from(operations), label="operation")
        case = data.draw(op.as_strategy(), label="case")
        response = case.call()
        seen.add(f"{case.method} {case.path}")
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: "
            f"{response.text[:300]}")

    run()
    assert len(seen) >= 8
