"""Per-model micro-batching: concurrent small requests share one forward pass.

A deterministic row-wise operation (exact log_prob, forward transport) costs about the same
for 1 row as for 64 on small models, because the per-call overhead (Python, autograd graph,
thread hop) dominates. :class:`MicroBatcher` runs at most one pass at a time per operation;
requests arriving while a pass runs queue up and go together into the next one. There is no
waiting window, so an idle server answers a lone request at once.

If a merged pass fails, each request is re-run on its own so one bad input cannot fail
another client's request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

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
    ) -> None:
        self.fn = fn
        self.run = run
        self.max_rows = max_rows
        self.on_batch = on_batch
        self._pending: deque[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """fn(x), possibly computed together with other concurrent submissions."""
        if x.shape[0] >= self.max_rows:
            return await self.run(lambda: self.fn(x))
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self._pending.append((x, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]]:
        taken, rows = [], 0
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

    async def _drain(self) -> None:
        while self._pending:
            group = self._take()
            if not group:
                continue
            if len(group) == 1:
                await self._run_alone(*group[0])
                continue
            sizes = [x.shape[0] for x, _ in group]
            stacked = torch.cat([x for x, _ in group])
            if self.on_batch is not None:
                self.on_batch(stacked.shape[0], len(group))
            try:
                out = await self.run(lambda stacked=stacked: self.fn(stacked))
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
