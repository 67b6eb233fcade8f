"""Group commit for the courier's callbacks: many threads, one transaction at a time.

Each message is marked `sending` just before its conversation and settled right after it, from
the courier's callback threads. One transaction per message costs a round trip per statement
and a commit each: at ten conversations at once that is most of a pass's time. A `Group` lets
the thread that finds no transaction running take every request waiting at that moment and
do them in one transaction; requests that arrive meanwhile wait for the next one. Nobody waits
for a timer: an idle engine commits at once, a busy one in groups as large as its concurrency.

A group that fails as a whole (one item's data refused by the database) is done again one item
at a time, so one bad item ends alone; any other error is every item's error.

`post(item)` leaves an item for the next group without waiting for it: the courier settles a
message that way, so the settlement rides in the transaction that marks the next message
(`flush()` runs what is left at the end). Nobody waits for a posted item, so its failure is
kept in `failures` for the caller to report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Entry(Generic[Item, Result]):
    item: Item
    posted: bool = False  # nobody waits for it: a failure goes to Group.failures
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None


@dataclass
class Group(Generic[Item, Result]):
    """`submit(item)` blocks until the transaction holding `item` has run; returns its result.

    `many(items)` does a group in one transaction and returns one result per item, in order.
    `one(item)`, when given, does a single item alone; it is used, item by item, when `many`
    raised an exception for which `alone(exc)` is true.
    """

    many: Callable[[Sequence[Item]], Sequence[Result]]
    one: Callable[[Item], Result] | None = None
    alone: Callable[[BaseException], bool] = lambda exc: False
    largest: int = 0  # the largest group so far, for the curious (and the tests)
    groups: int = 0
    failures: list[tuple[Item, BaseException]] = field(default_factory=list)
    _pending: list[_Entry[Item, Result]] = field(default_factory=list)
    _busy: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def submit(self, item: Item) -> Result:
        entry: _Entry[Item, Result] = _Entry(item)
        with self._cond:
            self._pending.append(entry)
            while self._busy and not entry.done:
                self._cond.wait()
            if not entry.done:
                self._busy = True
                batch, self._pending = self._pending, []
        if not entry.done:
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]

    def post(self, item: Item) -> None:
        """Leave `item` for the next group (another thread's `submit`, or `flush`)."""
        with self._cond:
            self._pending.append(_Entry(item, posted=True))

    def flush(self) -> None:
        """Run whatever is pending, after the group under way; returns when it is done."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            if not self._pending:
                return
            self._busy = True
            batch, self._pending = self._pending, []
        try:
            self._run(batch)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _run(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            self._run_group(batch)
        finally:
            self.failures.extend((e.item, e.error) for e in batch if e.posted and e.error)

    def _run_group(self, batch: list[_Entry[Item, Result]]) -> None:
        self.groups += 1
        self.largest = max(self.largest, len(batch))
        try:
            results = self.many([e.item for e in batch])
        except Exception as exc:
            if self.one is None or not self.alone(exc):
                for e in batch:
                    e.error, e.done = exc, True
                return
            for e in batch:
                try:
                    e.result = self.one(e.item)
                except Exception as alone_exc:
                    e.error = alone_exc
                e.done = True
            return
        for e, result in zip(batch, results, strict=True):
            e.result, e.done = result, True
