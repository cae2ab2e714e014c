"""Per-model micro-batching: concurrent small requests share one forward pass.

A deterministic row-wise operation (exact log_prob, forward transport) costs about the same
for 1 row as for 64 on small models, because the per-call overhead (Python, autograd graph,
thread hop) dominates. :class:`MicroBatcher` runs at most one pass at a time per operation;
requests arriving while a pass runs queue up and go together into the next one.

A lone request never waits. Under concurrency, the callers answered by the last pass usually
come straight back; waiting a moment for them (at most ``max_wait_s``, and at most a quarter
of the last pass's duration) merges them with the queued ones instead of splitting the
clients into small alternating groups, each paying the full per-pass cost.

If a merged pass fails, each request is re-run on its own so one bad input cannot fail
another client's request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial

import torch

__all__ = ["MicroBatcher"]

RowFn = Callable[[torch.Tensor], torch.Tensor]
Runner = Callable[[Callable[[], torch.Tensor]], Awaitable[torch.Tensor]]


class MicroBatcher:
    """Coalesces concurrent calls of a row-wise function into one call on the stacked rows.

    Arguments:
        fn: maps a (n, d) tensor to a (n, ...) tensor, row i of the output depending only on
            row i of the input.
        run: runs a zero-argument callable off the event loop and awaits its result.
        max_rows: most rows in one merged pass; a request larger than this runs alone.
        on_batch: called with (rows, requests) for each merged pass (metrics).
    """

    def __init__(
        self,
        fn: RowFn,
        run: Runner,
        max_rows: int,
        on_batch: Callable[[int, int], None] | None = None,
        max_wait_s: float = 0.0,
    ) -> None:
        self.fn = fn
        self.run = run
        self.max_rows = max_rows
        self.on_batch = on_batch
        self.max_wait_s = max_wait_s
        self._pending: deque[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._last_requests = 0
        self._last_duration = 0.0
        self._queued_after_last = 0

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """fn(x), possibly computed together with other concurrent submissions."""
        if x.shape[0] >= self.max_rows:
            return await self.run(lambda: self.fn(x))
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self._pending.append((x, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]]:
        taken: list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = []
        rows = 0
        while self._pending:
            x, future = self._pending[0]
            if taken and rows + x.shape[0] > self.max_rows:
                break
            self._pending.popleft()
            if future.done():  # the caller went away
                continue
            taken.append((x, future))
            rows += x.shape[0]
        return taken

    def _pending_rows(self) -> int:
        return sum(x.shape[0] for x, _ in self._pending)

    async def _wait_for_returning_callers(self) -> None:
        """Under concurrency, wait briefly for the callers of the last pass to come back."""
        # Expected: the callers just answered plus those that were already queued then.
        expected = self._last_requests + self._queued_after_last
        wait = min(self.max_wait_s, self._last_duration / 4)
        if self._last_requests < 2 or wait <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(self._pending) < expected and self._pending_rows() < self.max_rows:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await self._wait_for_returning_callers()
            group = self._take()
            if not group:
                continue
            started = loop.time()
            self._last_requests = len(group)
            if len(group) == 1:
                await self._run_alone(*group[0])
                self._last_duration = loop.time() - started
                self._queued_after_last = len(self._pending)
                continue
            sizes = [x.shape[0] for x, _ in group]
            stacked = torch.cat([x for x, _ in group])
            if self.on_batch is not None:
                self.on_batch(stacked.shape[0], len(group))
            try:
                out = await self.run(partial(self.fn, stacked))
                self._last_duration = loop.time() - started
                self._queued_after_last = len(self._pending)
            except Exception:  # noqa: BLE001 - re-run each request to isolate the failure
                for x, future in group:  # isolate the failing request(s)
                    await self._run_alone(x, future, count=False)
                continue
            for (_, future), part in zip(group, out.split(sizes), strict=True):
                if not future.done():
                    future.set_result(part)

    async def _run_alone(
        self, x: torch.Tensor, future: asyncio.Future[torch.Tensor], count: bool = True
    ) -> None:
        if count and self.on_batch is not None:
            self.on_batch(x.shape[0], 1)
        try:
            result = await self.run(lambda: self.fn(x))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)
