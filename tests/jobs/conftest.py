"""Fixtures for the jobs tests: a private Redis namespace, a store, and a live stack.

Isolation: every test session uses the shared Redis at 127.0.0.1:6379 on database 13 with a
queue name of its own (``cpflow-test-<random>``); job records and RQ keys are namespaced by it
and deleted at teardown, so parallel runs do not see each other's jobs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from jobs_procs import REDIS_URL, purge
from jobs_stack import Stack


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture(scope="session")
def redis_conn() -> redis.Redis:
    if not _redis_up():
        pytest.fail(f"Redis is not answering at {REDIS_URL}; start it (scripts/ensure_redis.sh)")
    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture
def queue_name(redis_conn: redis.Redis) -> Iterator[str]:
    name = f"cpflow-test-{uuid.uuid4().hex[:10]}"
    yield name
    purge(redis_conn, name)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_conn: redis.Redis) -> Iterator[Stack]:
    """One uvicorn service and two cpflow-workers for a test module."""
    name = f"cpflow-test-{uuid.uuid4().hex[:10]}"
    s = Stack(tmp_path_factory.mktemp("stack"), name)
    try:
        yield s
    finally:
        s.close()
        purge(redis_conn, name)


os.environ.setdefault("OMP_NUM_THREADS", "1")
