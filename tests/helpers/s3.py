"""A real S3-compatible server for the tests: moto's standalone server (``moto_server``, from
the dev dependencies) as a separate process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.ports import free_port

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """Start moto_server; yield its endpoint URL; stop it."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def client(endpoint: str):
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **CREDENTIALS
    )


def env_for(endpoint: str) -> dict[str, str]:
    """The AWS variables a child process needs to reach the server."""
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


class Outage:
    """A TCP relay on its own loopback port in front of the S3 server: ``stop()`` makes the
    store unreachable (connections refused) without losing the server's in-memory objects,
    ``start()`` brings it back on the same port."""

    def __init__(self, endpoint: str) -> None:
        self.target = int(endpoint.rsplit(":", 1)[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: socket.socket | None = None
        self.start()

    def start(self) -> None:
        import threading

        server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        self._server = server

        def accept() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return  # stopped
                upstream = socket.create_connection(("127.0.0.1", self.target))
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
