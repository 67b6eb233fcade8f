"""Group commit for the courier's conversations: many coroutines, one transaction at a time.

Each message is marked `sending` just before its conversation and settled right after it. One
transaction per message costs a round trip per statement and a commit each: at ten
conversations at once that is most of a pass's time. A `Group` lives on the courier's event
loop: a conversation that submits an item while no transaction runs starts one with every item
waiting at that moment; items that arrive meanwhile wait for the next one. Nobody waits for a
timer: an idle engine commits at once, a busy one in groups as large as its concurrency.

The transactions run on one thread of the group's own, so the loop goes on with the other
conversations while one waits for the database, and a group costs one hand-over between
threads, not one per message.

A group that fails as a whole (one item's data refused by the database) is done again one item
at a time, so one bad item ends alone; any other error is every item's error.

`post(item)` leaves an item for the next group without waiting for it: the courier settles a
message that way, so the settlement rides in the transaction that marks the next message
(`flush()` runs what is left at the end, once the loop has stopped). Nobody waits for a posted
item, so its failure is kept in `failures` for the caller to report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Entry(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result] | None = None  # None: posted, nobody waits for it
    result: Result | None = None
    error: BaseException | None = None


@dataclass
class Group(Generic[Item, Result]):
    """`await submit(item)` returns once the transaction holding `item` has run, with its result.

    `many(items)` does a group in one transaction and returns one result per item, in order.
    `one(item)`, when given, does a single item alone; it is used, item by item, when `many`
    raised an exception for which `alone(exc)` is true. Both run on the group's thread, one
    call at a time, so they may share a database connection. `close()` ends the thread.
    """

    many: Callable[[Sequence[Item]], Sequence[Result]]
    one: Callable[[Item], Result] | None = None
    alone: Callable[[BaseException], bool] = lambda exc: False
    largest: int = 0  # the largest group so far, for the curious (and the tests)
    groups: int = 0
    failures: list[tuple[Item, BaseException]] = field(default_factory=list)
    _pending: list[_Entry[Item, Result]] = field(default_factory=list)
    _running: asyncio.Task[None] | None = None
    _thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="ledger")
    )

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        entry: _Entry[Item, Result] = _Entry(item, loop.create_future())
        self._pending.append(entry)
        if self._running is None:
            self._running = loop.create_task(self._drain())
        assert entry.future is not None
        return await entry.future

    def post(self, item: Item) -> None:
        """Leave `item` for the next group (another conversation's `submit`, or `flush`)."""
        self._pending.append(_Entry(item))

    def flush(self) -> None:
        """Run the posted items still pending, on the group's thread after any group under way;
        for when the loop has stopped. An item someone waited for whose group never ran (the
        loop was stopped before) is dropped: nobody will act on its result."""
        self._running = None  # a loop stopped midway leaves its drain behind, never to resume
        batch = [e for e in self._pending if e.future is None]
        self._pending = []
        if batch:
            self._thread.submit(self._run, batch).result()

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    async def _drain(self) -> None:
        """Groups back to back while anyone waits; posted items ride along."""
        loop = asyncio.get_running_loop()
        batch: list[_Entry[Item, Result]] = []
        try:
            while any(e.future is not None for e in self._pending):
                batch, self._pending = self._pending, []
                await loop.run_in_executor(self._thread, self._run, batch)
                for e in batch:
                    if e.future is None or e.future.done():  # posted, or its waiter gave up
                        continue
                    if e.error is not None:
                        e.future.set_exception(e.error)
                    else:
                        e.future.set_result(e.result)  # type: ignore[arg-type]
        except BaseException as exc:  # cancelled, or the thread could not run the group
            # The group in flight is the thread's now (it runs to its end); those waiting for a
            # later one fail with this and are dropped. Posted items stay for `flush`.
            waiting = [e for e in self._pending if e.future is not None]
            self._pending = [e for e in self._pending if e.future is None]
            for e in [*batch, *waiting]:
                if e.future is not None and not e.future.done():
                    e.future.set_exception(exc)
            raise
        finally:
            self._running = None

    def _run(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            self._run_group(batch)
        finally:
            self.failures.extend((e.item, e.error) for e in batch if e.future is None and e.error)

    def _run_group(self, batch: list[_Entry[Item, Result]]) -> None:
        self.groups += 1
        self.largest = max(self.largest, len(batch))
        try:
            results = self.many([e.item for e in batch])
        except Exception as exc:
            if self.one is None or not self.alone(exc):
                for e in batch:
                    e.error = exc
                return
            for e in batch:
                try:
                    e.result = self.one(e.item)
                except Exception as alone_exc:
                    e.error = alone_exc
            return
        for e, result in zip(batch, results, strict=True):
            e.result = result
