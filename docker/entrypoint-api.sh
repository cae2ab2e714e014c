#!/bin/sh
# Container entrypoint: the cpflow HTTP service. Extra arguments go to cpflow-serve.
set -e
exec cpflow-serve --host "${CPFLOW_HOST:-0.0.0.0}" --port "${CPFLOW_PORT:-8000}" "$@"
