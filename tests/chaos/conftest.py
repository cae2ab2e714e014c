"""Fixtures of the chaos suite: a private Redis queue name, a store, a worker environment.

Every test here reproduces one fault from issue #31 against real processes on loopback
(redis-server, uvicorn via cpflow-serve, an RQ worker via cpflow-worker), bounds every wait,
and stops what it started.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.helpers.procs import connect_test_redis, new_queue_name, purge


@pytest.fixture(scope="session")
def redis_conn() -> redis.Redis:
    return connect_test_redis()


@pytest.fixture
def queue_name(redis_conn: redis.Redis) -> Iterator[str]:
    name = new_queue_name()
    yield name
    purge(redis_conn, name)


CHAOS_TEST_TIMEOUT_S = 300
"""Hard stop of any one chaos test (pytest-timeout); their own waits are far shorter."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "chaos" in item.path.parts and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CHAOS_TEST_TIMEOUT_S))
