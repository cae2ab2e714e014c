"""``cpflow-serve``: run the HTTP service under uvicorn (factory mode)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from service.server_bounds import BoundedHttpProtocol
from service.settings import Settings, exported_environment

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpflow-serve",
        description="Serve cpflow models over HTTP. Settings come from CPFLOW_* variables "
        "(CPFLOW_STORE_DIR, CPFLOW_DEVICE, CPFLOW_API_KEYS, ...).",
    )
    parser.add_argument(
        "--host", default=None, help="interface to bind (default CPFLOW_HOST, else 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="TCP port (default CPFLOW_PORT, else 8000)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (each loads its own models; /metrics reports the sum "
        "over all of them; default 1)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        help="debug, info, warning or error (default: CPFLOW_LOG_LEVEL, else info)",
    )
    parser.add_argument(
        "--store-url",
        help="the model store as s3://bucket/prefix or file:///path (default: "
        "CPFLOW_STORE_URL, else the folder CPFLOW_STORE_DIR)",
    )
    return parser


@contextmanager
def _metrics_dir(settings: Settings, workers: int) -> Iterator[dict[str, str]]:
    """With several workers, an empty folder for prometheus_client's multiprocess mode (the
    configured one, emptied, or a temporary one removed at exit): the variables to export."""
    if workers == 1 and settings.metrics_dir is None:
        yield {}
        return
    temporary = settings.metrics_dir is None
    folder = (
        Path(tempfile.mkdtemp(prefix="cpflow-metrics-")) if temporary else settings.metrics_dir
    )
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # series of an earlier run would be summed in
        stale.unlink()
    try:
        yield {"CPFLOW_METRICS_DIR": str(folder), "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)


WORKER_HEALTHCHECK_S = 60
"""How long uvicorn's supervisor (--workers N) waits for a worker to answer its ping before it
kills it as hung: a worker importing torch on a busy machine answers late, and uvicorn's 5 s
default then kills and restarts every worker forever."""


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options and hand the app factory to uvicorn."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    # Read by the app factory's settings in every uvicorn worker.
    overrides = {"CPFLOW_SERVE_PROCESS": "1"}
    if args.log_level:
        overrides["CPFLOW_LOG_LEVEL"] = args.log_level.upper()
    if args.store_url:
        overrides["CPFLOW_STORE_URL"] = args.store_url

    import uvicorn

    with exported_environment(overrides):
        settings = Settings()  # fail fast on a bad CPFLOW_* value, before forking workers
        with (
            _metrics_dir(settings, args.workers) as metrics_env,
            exported_environment(metrics_env),
        ):
            uvicorn.run(
                "service.app:create_app",
                factory=True,
                host=args.host or settings.host,
                port=args.port if args.port is not None else settings.port,
                workers=args.workers,
                access_log=False,  # the app writes its own JSON access log with request ids
                log_level=settings.log_level.lower(),
                proxy_headers=True,
                http=BoundedHttpProtocol,  # header and body read deadlines
                timeout_keep_alive=settings.keep_alive_s,
                limit_concurrency=settings.max_connections,
                timeout_graceful_shutdown=settings.shutdown_timeout_s,
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
            )


if __name__ == "__main__":
    main()
