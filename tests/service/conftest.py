"""Fixtures for the service tests: a store with small models and a real uvicorn server."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.service import API_KEY, publish_models, run_server


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc") / "store"
    publish_models(root)
    return root


@pytest.fixture(scope="session")
def server(store_dir, tmp_path_factory):
    """Base URL of a uvicorn process serving ``store_dir`` (no auth, fast store polling)."""
    env = {
        "CPFLOW_STORE_DIR": str(store_dir),
        "CPFLOW_POLL_INTERVAL_S": "0.2",
        "CPFLOW_MAX_BATCH": "6000",
        "CPFLOW_MAX_SAMPLES": "3000",
        "CPFLOW_MAX_BODY_BYTES": str(1024 * 1024),
        "CPFLOW_REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens: readyz must still pass
    }
    with run_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log") as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def limited_server(store_dir, tmp_path_factory):
    """A server with API keys and tight work limits (so fuzzed requests stay cheap)."""
    env = {
        "CPFLOW_STORE_DIR": str(store_dir),
        "CPFLOW_API_KEYS": f"{API_KEY}, other-key",
        "CPFLOW_MAX_BATCH": "64",
        "CPFLOW_MAX_SAMPLES": "16",
        "CPFLOW_MAX_INVERSE_ITERATIONS": "5",
        "CPFLOW_MAX_CSV_ROWS": "64",
        "CPFLOW_MAX_BODY_BYTES": str(64 * 1024),
        "CPFLOW_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    with run_server(env, log_path=tmp_path_factory.mktemp("logs") / "limited.log") as url:
        yield url


@pytest.fixture
def auth_headers():
    return {"Authorization": f"Bearer {API_KEY}"}
