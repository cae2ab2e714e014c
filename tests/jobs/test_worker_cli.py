"""cpflow-worker's own loop: it outlives a Redis outage that ends RQ's work loop."""

from __future__ import annotations

from typing import ClassVar

import pytest
import redis

from service import worker_cli


class _FlakyWorker:
    """Stands in for rq.Worker: the first work() loses Redis, the second returns."""

    created: ClassVar[list[_FlakyWorker]] = []

    def __init__(self, queues, *, connection, serializer, name) -> None:
        self.queues, self.name = queues, name
        self.created.append(self)

    def work(self, **kwargs) -> bool:
        self.kwargs = kwargs
        if len(self.created) == 1:
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return True


def test_worker_restarts_with_a_fresh_name_after_losing_redis(
    monkeypatch: pytest.MonkeyPatch, queue_name: str
) -> None:
    monkeypatch.setattr(worker_cli, "Worker", _FlakyWorker)
    monkeypatch.setattr(worker_cli, "_preload", lambda: None)
    _FlakyWorker.created.clear()
    rc = worker_cli.main(
        ["--redis-url", "redis://127.0.0.1:6379/13", "--queue", queue_name, "--name", "w"]
    )
    assert rc == 0
    assert [w.name for w in _FlakyWorker.created] == ["w", "w-r1"]  # RQ refuses a reused name
    assert all(w.queues == [queue_name] for w in _FlakyWorker.created)
    assert _FlakyWorker.created[-1].kwargs["burst"] is False


def test_help_mentions_one_worker_per_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        worker_cli.main(["--help"])
    assert "CUDA_VISIBLE_DEVICES" in capsys.readouterr().out
