"""Group commit: the same kind of write from many concurrent jobs, done in one go.

A worker runs dozens of send jobs at once, and each used to write its decision, the start of
its SMTP transaction and its outcome in transactions of its own. On the send path a round
trip to the database, and the Python around it, cost more than the work. A `GroupCommit`
queues each job's item and writes whatever has queued up meanwhile in one call of `apply`
(one transaction, set-based statements), then wakes each job with its own result.

It never waits to fill a batch: a write on an idle worker goes out at once, alone; under
load the batch is whatever arrived while the previous one was being written (waiting a few
milliseconds for more made no difference to a CPU-bound worker). The job still
awaits its write, so nothing a job reports as done is less durable than before. When a
batch of several fails, each item is written again alone, so one bad item fails only its own
job (and a poison row cannot fail its neighbours).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger(__name__)


class GroupCommit(Generic[Item, Result]):
    def __init__(self, apply: Callable[[list[Item]], Awaitable[Sequence[Result]]], *, limit: int = 64, name: str = "write"):
        self.apply = apply
        self.limit = limit
        self.name = name
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Write `item` with whatever else is queued; its result, or the error its write raised."""
        return await self.enqueue(item)

    def enqueue(self, item: Item) -> asyncio.Future[Result]:
        """Queue `item` now; the future settles once it is written. Items are written in the
        order they were queued."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"trigger-email group commit: {self.name}")
        return future

    async def _run(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.limit], self._pending[self.limit :]
                await self._write(batch)
        except BaseException as exc:  # cancelled with the loop: whoever still waits must not hang
            error = exc if isinstance(exc, Exception) else RuntimeError(f"{self.name}: stopped before the write")
            for _item, future in batch + self._pending:
                _settle(future, error=error)
            self._pending = []
            raise

    async def _write(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self.apply([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the job(s) that asked
            if len(batch) == 1:
                _settle(batch[0][1], error=exc)
                return
            log.info("%s: a batch of %d failed (%s); writing each alone", self.name, len(batch), exc)
            for one in batch:
                await self._write([one])
            return
        for (_item, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)


def _settle(future: asyncio.Future[Result], *, result: Result | None = None, error: Exception | None = None) -> None:
    if future.done():  # its job was cancelled meanwhile; the write stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
