"""Many writers and poppers, in several processes with many tasks each, on one session and on
many: nothing lost, nothing duplicated, every writer's items in its order, every pop unique.
(The soak script runs the same load, larger: scripts/soak.py.)"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from tests.conftest import run_in_new_loop, unique_id
from tests.reliability import _children, _load
from tests.reliability._stores import Store

PROCESSES = 3
TASKS = 4
BATCHES = 15


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def run_and_check(
    store: Store, session_ids: list[str], pool: ProcessPoolExecutor, *, pops: int
) -> _load.Outcome:
    """Run the load in ``PROCESSES`` processes, then check every session's history."""
    futures = [
        pool.submit(_children.run_load, store, session_ids, p, TASKS, BATCHES, pops)
        for p in range(PROCESSES)
    ]
    outcome = _load.Outcome()
    for future in futures:
        outcome.merge(future.result(timeout=300))
    assert outcome.errors == []

    async def read() -> list[list[dict[str, Any]]]:
        histories = []
        for session_id in session_ids:
            async with store.open(session_id) as session:  # type: ignore[attr-defined]
                histories.append(await session.get_items())
                await session.clear_session()
        return histories

    histories = run_in_new_loop(read)
    _load.check_history([item for h in histories for item in h] + outcome.popped, outcome)
    for history in histories:
        _load.check_order(history)
    return outcome


@pytest.mark.slow
def test_writers_and_poppers_on_one_session(
    shared_store: Store, processes: ProcessPoolExecutor
) -> None:
    outcome = run_and_check(shared_store, [unique_id("one")], processes, pops=BATCHES * 2)
    assert sum(map(len, outcome.stored.values())) == PROCESSES * TASKS * BATCHES
    assert outcome.popped, "the poppers popped nothing"


@pytest.mark.slow
def test_writers_on_many_sessions(shared_store: Store, processes: ProcessPoolExecutor) -> None:
    session_ids = [unique_id("many") for _ in range(4)]
    outcome = run_and_check(shared_store, session_ids, processes, pops=0)
    assert sum(map(len, outcome.stored.values())) == PROCESSES * TASKS * BATCHES * 4
