"""Group commit (`engine.sending.group`): the courier's threads share transactions, and one
bad item still ends alone."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.sending.group import Group


class Refused(Exception):
    """Stands for the database refusing one item's data."""


def test_threads_arriving_while_a_group_runs_go_together_in_the_next():
    done: list[list[int]] = []

    def many(items):
        time.sleep(0.05)  # a transaction: others arrive meanwhile
        done.append(list(items))
        return [i * 10 for i in items]

    group = Group(many)
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(group.submit, range(40)))
    assert results == [i * 10 for i in range(40)]
    assert sorted(i for g in done for i in g) == list(range(40))  # each item exactly once
    assert group.groups == len(done) < 40 and group.largest > 1


def test_an_idle_group_commits_at_once_without_waiting_for_company():
    group = Group(lambda items: [f"ok {i}" for i in items])
    started = time.monotonic()
    assert group.submit(1) == "ok 1"
    assert group.submit(2) == "ok 2"
    assert (group.groups, group.largest) == (2, 1)
    assert time.monotonic() - started < 1


def test_a_group_one_item_spoils_is_done_again_item_by_item():
    def many(items):
        time.sleep(0.05)
        if 3 in items:
            raise Refused("item 3 has a NUL")
        return [f"ok {i}" for i in items]

    def one(item):
        return many([item])[0]

    group = Group(many, one, alone=lambda exc: isinstance(exc, Refused))

    def submit(item):
        time.sleep(0.01 * (item > 0))  # 0 opens a group; 1..4 pile up behind it, together
        try:
            return group.submit(item)
        except Refused as exc:
            return f"refused: {exc}"

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(submit, range(5)))
    assert results == ["ok 0", "ok 1", "ok 2", "refused: item 3 has a NUL", "ok 4"]
    assert group.largest == 4  # 3 spoilt a group of four; its three others still went


def test_an_error_that_is_not_one_items_is_every_items_of_its_group():
    def many(items):
        raise ConnectionError("the database went away")

    group = Group(many, lambda item: pytest.fail("not retried alone"), alone=lambda e: False)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(group.submit, i) for i in range(4)]
    for future in futures:
        with pytest.raises(ConnectionError, match="went away"):
            future.result()


def test_after_a_failed_group_the_next_group_runs():
    calls = []

    def many(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise ConnectionError("once")
        return list(items)

    group = Group(many)
    with pytest.raises(ConnectionError):
        group.submit("a")
    assert group.submit("b") == "b"


def test_a_posted_item_rides_in_the_next_group_and_nobody_waits_for_it():
    done: list[list[str]] = []

    def many(items):
        done.append(list(items))
        return [f"ok {i}" for i in items]

    group = Group(many)
    group.post("outcome 1")
    group.post("outcome 2")
    assert done == []  # posting runs nothing
    assert group.submit("mark 3") == "ok mark 3"
    assert done == [["outcome 1", "outcome 2", "mark 3"]]  # in the order they came
    group.flush()  # nothing left: no empty transaction
    assert group.groups == 1


def test_flush_runs_what_is_still_posted_and_keeps_its_failures():
    def many(items):
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


def test_a_posted_item_of_a_group_that_fails_as_a_whole_is_kept_as_a_failure():
    def many(items):
        raise ConnectionError("the database went away")

    group = Group(many)
    group.post("outcome")
    with pytest.raises(ConnectionError):
        group.submit("mark")
    assert [item for item, _ in group.failures] == ["outcome"]
