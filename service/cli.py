"""``cpflow-serve``: run the HTTP service under uvicorn (factory mode)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpflow-serve",
        description="Serve cpflow models over HTTP. Settings come from CPFLOW_* variables "
        "(CPFLOW_STORE_DIR, CPFLOW_DEVICE, CPFLOW_API_KEYS, ...).",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("CPFLOW_HOST", "127.0.0.1"),
        help="interface to bind (default 127.0.0.1; 0.0.0.0 in containers)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CPFLOW_PORT", "8000")),
        help="TCP port (default 8000)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (each loads its own models; default 1)",
    )
    parser.add_argument(
        "--log-level", default=None, help="override CPFLOW_LOG_LEVEL (debug, info, warning, error)"
    )
    parser.add_argument(
        "--store-url", help="override CPFLOW_STORE_URL (s3://bucket/prefix or file:///path)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options and hand the app factory to uvicorn."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.log_level:
        os.environ["CPFLOW_LOG_LEVEL"] = args.log_level.upper()
    if args.store_url:  # read by the app factory's settings, in every uvicorn worker
        os.environ["CPFLOW_STORE_URL"] = args.store_url

    import uvicorn

    from service.settings import get_settings

    get_settings()  # fail fast on a bad CPFLOW_* value, before forking workers
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,  # the app writes its own JSON access log with request ids
        log_level=(args.log_level or os.environ.get("CPFLOW_LOG_LEVEL", "info")).lower(),
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
