# Thin aliases for the scripts behind the README's commands.
.PHONY: up down test ci lint setup redis

up:
	bash scripts/up.sh

down:
	bash scripts/down.sh

test:
	bash scripts/test.sh

ci:
	bash .ci/run

setup:
	bash scripts/setup.sh

redis:
	bash scripts/ensure_redis.sh

lint:
	.venv/bin/ruff format --check . && .venv/bin/ruff check .
