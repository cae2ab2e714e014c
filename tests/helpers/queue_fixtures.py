"""Fixtures for tests that talk to the real Redis: one connection for the session and a queue
name of the test's own (its jobs and RQ keys deleted after), so tests never feed other
processes' workers. Loaded as a plugin by tests/conftest.py."""

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
