"""cpflow-serve bounds its waits: a client stalled in its headers or trickling its body is
disconnected within the read timeout while other clients score, and SIGTERM with a long request
in flight ends the server within the configured shutdown limit."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.chaos.serve import start_serve
from tests.helpers.flows import make_flow
from tests.helpers.procs import wait_for

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 3
SHUTDOWN_TIMEOUT_S = 3
SLACK_S = 5.0  # scheduling on a loaded machine; the unbounded case never closes at all


def _store(root: Path) -> Path:
    from model_store import ModelStore

    ModelStore(root).publish("toy", make_flow(2))
    ModelStore(root).publish("big", make_flow(32, blocks=4, hidden=64, seed=1))
    return root


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "CPFLOW_STORE_DIR": str(_store(tmp_path / "store")),
        "CPFLOW_DEVICE": "cpu",
        "CPFLOW_INFERENCE_THREADS": "1",
        "CPFLOW_TORCH_THREADS": "1",
        "CPFLOW_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "CPFLOW_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "CPFLOW_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        "CPFLOW_LOG_LEVEL": "WARNING",
    }


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=1.0)


def _closed_by_server(sock: socket.socket, trickle: bool, within: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``within``); a
    trickling client sends one more body byte every half second meanwhile."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        try:
            if trickle:
                sock.sendall(b"1")
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # reset by the server
            return time.monotonic() - start
    return None


def test_stalled_clients_are_cut_off_while_others_score(tmp_path: Path) -> None:
    proc, url = start_serve(_env(tmp_path), tmp_path / "serve.log")
    head = (
        b"POST /v1/models/toy/log_prob HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    )
    try:
        half_headers = [_connect(url) for _ in range(5)]
        for sock in half_headers:
            sock.sendall(head)  # no blank line: the headers never end
        trickling = [_connect(url) for _ in range(5)]
        for sock in trickling:
            sock.sendall(head + b"Content-Length: 1000\r\n\r\n{")
        results: dict[int, float | None] = {}

        def watch(i: int, sock: socket.socket, trickle: bool, within: float) -> None:
            results[i] = _closed_by_server(sock, trickle, within)

        threads = [
            threading.Thread(target=watch, args=(i, s, i >= 5, limit + SLACK_S))
            for i, (s, limit) in enumerate(
                [(s, HEADER_TIMEOUT_S) for s in half_headers]
                + [(s, BODY_TIMEOUT_S) for s in trickling]
            )
        ]
        for t in threads:
            t.start()
        with httpx.Client(base_url=url, timeout=10) as client:
            while any(t.is_alive() for t in threads):
                r = client.post("/v1/models/toy/log_prob", json={"inputs": [[0.0, 0.0]]})
                assert r.status_code == 200, r.text
                time.sleep(0.2)
        for t in threads:
            t.join()
        assert all(results[i] is not None for i in range(10)), (results, proc.tail())
    finally:
        proc.stop()


def test_shutdown_with_a_long_request_in_flight_is_bounded(tmp_path: Path) -> None:
    proc, url = start_serve(_env(tmp_path), tmp_path / "serve.log")
    try:
        body = {"num_samples": 3000, "max_iterations": 10000, "tolerance": 1e-12, "seed": 0}
        long_call = threading.Thread(
            target=lambda: httpx.post(url + "/v1/models/big/sample", json=body, timeout=120),
            daemon=True,
        )
        long_call.start()
        time.sleep(2.0)  # the solve is running in an inference thread now
        assert long_call.is_alive(), "the long request ended before the shutdown began"
        start = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        limit = SHUTDOWN_TIMEOUT_S + SLACK_S
        wait_for(lambda: proc.popen.poll() is not None, limit, "cpflow-serve to exit")
        assert time.monotonic() - start < limit
    finally:
        proc.stop()
