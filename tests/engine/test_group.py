"""Group commit (`engine.sending.group`): the courier's conversations share transactions, which
run one at a time on the group's own thread, and one bad item still ends alone."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.sending.group import Group


class Refused(Exception):
    """Stands for the database refusing one item's data."""


def _gather(group: Group, items, *, spread: float = 0.0) -> list:
    """Submit `items` from one coroutine each (the i-th after i * `spread` seconds); their
    results, or the exceptions they raised."""

    async def submit(index: int, item):
        await asyncio.sleep(index * spread)
        return await group.submit(item)

    async def main():
        return await asyncio.gather(
            *(submit(i, item) for i, item in enumerate(items)), return_exceptions=True
        )

    return asyncio.run(main())


def test_items_arriving_while_a_group_runs_go_together_in_the_next():
    done: list[list[int]] = []

    def many(items):
        time.sleep(0.05)  # a transaction: others arrive meanwhile
        done.append(list(items))
        return [i * 10 for i in items]

    group = Group(many)
    results = _gather(group, range(40), spread=0.002)
    assert results == [i * 10 for i in range(40)]
    assert sorted(i for g in done for i in g) == list(range(40))  # each item exactly once
    assert group.groups == len(done) < 40 and group.largest > 1
    group.close()


def test_the_groups_run_on_one_thread_of_their_own_never_two_at_once():
    threads: set[int] = set()
    under_way = []

    def many(items):
        under_way.append(1)
        assert len(under_way) == 1, "two groups at once"
        threads.add(threading.get_ident())
        time.sleep(0.01)
        under_way.pop()
        return list(items)

    group = Group(many)
    assert _gather(group, range(30), spread=0.001) == list(range(30))
    assert len(threads) == 1 and threading.get_ident() not in threads
    group.close()


def test_an_idle_group_commits_at_once_without_waiting_for_company():
    group = Group(lambda items: [f"ok {i}" for i in items])
    started = time.monotonic()
    assert _gather(group, [1]) == ["ok 1"]
    assert _gather(group, [2]) == ["ok 2"]
    assert (group.groups, group.largest) == (2, 1)
    assert time.monotonic() - started < 1
    group.close()


def test_a_group_one_item_spoils_is_done_again_item_by_item():
    def many(items):
        time.sleep(0.05)
        if 3 in items:
            raise Refused("item 3 has a NUL")
        return [f"ok {i}" for i in items]

    def one(item):
        return many([item])[0]

    group = Group(many, one, alone=lambda exc: isinstance(exc, Refused))
    # 0 opens a group; 1..4 pile up behind it, together.
    results = _gather(group, range(5), spread=0.005)
    assert results[:3] == ["ok 0", "ok 1", "ok 2"] and results[4] == "ok 4"
    assert isinstance(results[3], Refused) and str(results[3]) == "item 3 has a NUL"
    assert group.largest == 4  # 3 spoilt a group of four; its three others still went
    group.close()


def test_an_error_that_is_not_one_items_is_every_items_of_its_group():
    def many(items):
        raise ConnectionError("the database went away")

    group = Group(many, lambda item: pytest.fail("not retried alone"), alone=lambda e: False)
    results = _gather(group, range(4))
    assert all(isinstance(r, ConnectionError) and "went away" in str(r) for r in results)
    group.close()


def test_after_a_failed_group_the_next_group_runs():
    calls = []

    def many(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise ConnectionError("once")
        return list(items)

    group = Group(many)
    [failed] = _gather(group, ["a"])
    assert isinstance(failed, ConnectionError)
    assert _gather(group, ["b"]) == ["b"]
    group.close()


def test_a_posted_item_rides_in_the_next_group_and_nobody_waits_for_it():
    done: list[list[str]] = []

    def many(items):
        done.append(list(items))
        return [f"ok {i}" for i in items]

    group = Group(many)
    group.post("outcome 1")
    group.post("outcome 2")
    assert done == []  # posting runs nothing
    assert _gather(group, ["mark 3"]) == ["ok mark 3"]
    assert done == [["outcome 1", "outcome 2", "mark 3"]]  # in the order they came
    group.flush()  # nothing left: no empty transaction
    assert group.groups == 1
    group.close()


def test_flush_runs_what_is_still_posted_on_the_groups_thread_and_keeps_its_failures():
    threads: set[int] = set()

    def many(items):
        threads.add(threading.get_ident())
        if "bad" in items:
            raise Refused("bad has a NUL")
        return [None for _ in items]

    def one(item):
        return many([item])[0]

    group = Group(many, one, alone=lambda exc: isinstance(exc, Refused))
    for item in ("good 1", "bad", "good 2"):
        group.post(item)
    group.flush()  # never raises for a posted item: nobody is waiting to hear it
    assert [(item, str(exc)) for item, exc in group.failures] == [("bad", "bad has a NUL")]
    assert len(threads) == 1 and threading.get_ident() not in threads
    group.close()


def test_a_posted_item_of_a_group_that_fails_as_a_whole_is_kept_as_a_failure():
    def many(items):
        raise ConnectionError("the database went away")

    group = Group(many)
    group.post("outcome")
    [failed] = _gather(group, ["mark"])
    assert isinstance(failed, ConnectionError)
    assert [item for item, _ in group.failures] == ["outcome"]
    group.close()


def test_a_group_whose_thread_is_gone_fails_its_waiters_instead_of_leaving_them_waiting():
    group = Group(lambda items: list(items))
    group.close()  # the thread is shut down: the group cannot run
    [failed] = _gather(group, ["mark"])
    assert isinstance(failed, RuntimeError)


def test_a_loop_stopped_midway_drops_the_waiting_marks_and_flush_still_records_the_posted():
    """Ctrl-C in the middle of a batch: the group under way finishes on its thread, marks that
    were waiting for the next group never run (their conversations never start), and `flush`
    records the outcomes already posted, after the group under way, without raising."""
    done: list[list[str]] = []

    def many(items):
        time.sleep(0.2)
        done.append(list(items))
        return [None for _ in items]

    group = Group(many)

    async def interrupted():
        waiters = [asyncio.ensure_future(group.submit("mark A"))]
        await asyncio.sleep(0.05)  # A's group is under way
        waiters.append(asyncio.ensure_future(group.submit("mark B")))
        group.post("outcome P")
        await asyncio.sleep(0.01)
        raise KeyboardInterrupt(waiters)  # the loop stops; the waiters are gone with it

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(interrupted())
    group.flush()
    group.close()
    assert done == [["mark A"], ["outcome P"]]
