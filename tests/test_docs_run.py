"""Every bash and python block of the README and of docs/ runs as written, against a real
service (uvicorn), a real cpflow-worker and Redis: the README's walkthrough goes from a CSV file
to scored rows through an upload and a training job. A block that cannot run here (Docker,
kubectl, GPUs, minutes of training) says so on the line before it: ``<!-- not run: why -->``.

The blocks of one page run in order in one shell (or one Python process), as a reader pasting
them into one terminal would; ``127.0.0.1:8000`` is replaced by the test service's address and
curl fails on an HTTP error status."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.procs import (
    Proc,
    connect_test_redis,
    new_queue_name,
    purge,
    stack_env,
    start_server,
    start_worker,
)

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
]
RUNNABLE = ("bash", "python")
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"<!-- not run(?::\s*(.*?))? -->\s*$")
# Every curl of a block fails the block on an HTTP error (and never waits forever).
_BASH_PRELUDE = (
    'set -euo pipefail\ncurl() { command curl --fail-with-body --max-time 600 "$@"; }\n'
)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    code: str
    not_run: str | None  # the reason, when the block is marked not to run


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``page`` with their not-run marks."""
    text = (ROOT / page).read_text()
    found = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _NOT_RUN.search(before)
        line = text.count("\n", 0, match.start()) + 1
        reason = (mark.group(1) or "") if mark else None
        found.append(Block(page, line, match.group(1), match.group(2), reason))
    return found


def test_every_block_is_run_or_says_why_not() -> None:
    for page in PAGES:
        for block in blocks(page):
            where = f"{block.page}:{block.line}"
            if block.language in RUNNABLE:
                assert block.not_run is None or block.not_run.strip(), f"{where}: say why not"
            else:
                assert block.not_run is None, f"{where}: only bash and python blocks run"
                assert block.language in ("text", ""), f"{where}: unknown language"
    runnable = [b for p in PAGES for b in blocks(p) if b.language in RUNNABLE and not b.not_run]
    assert len(runnable) >= 10


# ------------------------------------------------------------------ the live stack


def _publish_models(store_dir: Path) -> None:
    """The models the docs' examples name: demo (2-D), digits (1x2x2 images), cond (p(x | c))."""
    from model_store import ModelStore
    from tests.helpers.flows import conditional_flow, make_flow
    from tests.helpers.image_flows import random_image_flow
    from tests.helpers.service import held_out_scores

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    store = ModelStore(store_dir)
    demo = make_flow(2)
    store.publish(
        "demo",
        demo,
        # held-out scores, as training publishes them: the docs ask demo for percentiles
        training={"metrics": {"test_nll": 2.5}, **held_out_scores(demo)},
        plots={"training_curve.png": png, "density.png": png},
    )
    store.publish("digits", random_image_flow((1, 2, 2), (1,)), plots={"samples.png": png})
    store.publish("cond", conditional_flow())


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    home: Path  # the reader's current folder: var/store is the service's store
    procs: list[Proc]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("reader")
    store = home / "var" / "store"
    _publish_models(store)
    conn = connect_test_redis()
    queue = new_queue_name()
    env = stack_env(store, queue)
    server, url = start_server(env, home / "api.log")
    worker = start_worker(env, home / "worker.log")
    try:
        yield Stack(url, env, home, [server, worker])
    finally:
        worker.stop()
        server.stop()
        purge(conn, queue)


def _run(stack: Stack, language: str, code: str) -> subprocess.CompletedProcess[str]:
    address = stack.url.removeprefix("http://")
    code = code.replace("127.0.0.1:8000", address)
    env = {
        **os.environ,
        **stack.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
    }
    if language == "bash":
        cmd = ["bash", "-c", _BASH_PRELUDE + code]
    else:
        cmd = [sys.executable, "-c", code]
    return subprocess.run(
        cmd, cwd=stack.home, env=env, capture_output=True, text=True, timeout=1500, check=False
    )


def _runnable(page: str) -> list[Block]:
    return [b for b in blocks(page) if b.language in RUNNABLE and b.not_run is None]


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)])
def test_the_blocks_of_each_page_run(stack: Stack, page: str) -> None:
    """A page's bash blocks in one shell, then its python blocks in one process."""
    todo = _runnable(page)
    for language in RUNNABLE:
        mine = [b for b in todo if b.language == language]
        if not mine:
            continue
        code = "\n".join(f"# {b.page}:{b.line}\n{b.code}" for b in mine)
        result = _run(stack, language, code)
        logs = "\n".join(p.tail(15) for p in stack.procs)
        assert result.returncode == 0, (
            f"{page} ({language}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n"
            f"service and worker logs:\n{logs}"
        )


def test_the_readme_walkthrough_ends_with_scored_rows(stack: Stack) -> None:
    """The walkthrough published a model trained on the uploaded CSV and scored every row."""
    scored = stack.home / "sensors-scored.csv"
    if not scored.exists():
        test_the_blocks_of_each_page_run(stack, "README.md")
    lines = scored.read_text().splitlines()
    assert lines[0] == "temperature,pressure,vibration,log_prob"
    assert len(lines) == 601
    values = [float(line.rsplit(",", 1)[1]) for line in lines[1:]]
    assert all(math.isfinite(v) for v in values)
    assert (stack.home / "var" / "store" / "sensors" / "1" / "manifest.json").is_file()
