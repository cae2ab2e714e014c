"""Fixtures for the jobs tests: a private Redis namespace, a store, and a live stack.

Isolation: every test session uses the shared Redis at 127.0.0.1:6379 on database 13 with a
queue name of its own (``cpflow-test-<random>``); job records and RQ keys are namespaced by it
and deleted at teardown, so parallel runs do not see each other's jobs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from tests.helpers.procs import new_queue_name, purge
from tests.jobs.jobs_stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_conn: redis.Redis) -> Iterator[Stack]:
    """One uvicorn service and two cpflow-workers for a test module."""
    name = new_queue_name()
    s = Stack(tmp_path_factory.mktemp("stack"), name)
    try:
        yield s
    finally:
        s.close()
        purge(redis_conn, name)


os.environ.setdefault("OMP_NUM_THREADS", "1")
