"""Configuration of the chaos suite: a hard time limit on every test (the Redis fixtures,
redis_conn and queue_name, come from tests.helpers.queue_fixtures).

Every test here reproduces one fault from issue #31 against real processes on loopback
(redis-server, uvicorn via cpflow-serve, an RQ worker via cpflow-worker), bounds every wait,
and stops what it started.
"""

from __future__ import annotations

import pytest

CHAOS_TEST_TIMEOUT_S = 300
"""Hard stop of any one chaos test (pytest-timeout); their own waits are far shorter."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "chaos" in item.path.parts and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CHAOS_TEST_TIMEOUT_S))
