#!/bin/sh
# Container entrypoint: one cpflow training worker (RQ) on the Redis in CPFLOW_REDIS_URL.
# Run one worker per GPU; pin each with CUDA_VISIBLE_DEVICES or a compose device_ids entry.
set -e
exec cpflow-worker "$@"
