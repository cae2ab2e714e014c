"""Fixtures for the model-store tests: every test that takes ``store`` runs against both
backends, the local folder and S3-compatible object storage (a real moto server process
started once for the session, a fresh bucket per test)."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers.s3 import client, s3_server


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """An empty store: a folder under tmp_path, or a fresh bucket read through a cache there."""
    from model_store import ModelStore, ObjectModelStore

    if request.param == "local":
        return ModelStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"cpflow-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(Bucket=bucket)
    return ObjectModelStore(bucket, "models", tmp_path / "store", client=client(endpoint))


@pytest.fixture
def local_store(tmp_path):
    """For the tests of the local folder's own protocol (flock, temp folders, rename); the
    object store's counterparts are in test_object_store.py."""
    from model_store import ModelStore

    return ModelStore(tmp_path / "store")
