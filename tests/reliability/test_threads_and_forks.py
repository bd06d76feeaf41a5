"""One session object used from several threads (each with its own event loop), and processes
forked while the parent has calls in flight: the registries of shared connections stay
consistent, and a child opens connections of its own."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from agentmem import Session, SQLiteSession
from agentmem.sql import _engines as sqlalchemy_engines
from agentmem.sql import sqlite as sqlite_backend
from tests.conftest import run_in_new_loop, unique_id
from tests.reliability._stores import Store

CHILD_TIMEOUT = 60
"""Seconds a forked child may take (a safety net: it needs well under one)."""


def test_one_session_used_from_threads_each_running_its_own_event_loop(
    shared_store: Store,
) -> None:
    """Every thread's ``asyncio.run`` gets (and prunes) the per-loop engines and clients of
    one session object; with a thread switch every microsecond, no call fails and nothing is
    lost."""
    # Each round leaves one PostgreSQL connection per thread until its engine is pruned: few
    # rounds on the shared server; Redis clients are cheap.
    threads_count, rounds = (6, 40) if shared_store.kind == "redis" else (4, 8)
    session = shared_store.open(unique_id("threads"))
    errors: list[BaseException] = []
    together = threading.Barrier(threads_count)

    def work(thread: int) -> None:
        for number in range(rounds):
            together.wait(60)  # each round's loops start together, the last round's are closed
            try:
                asyncio.run(session.add_items([{"t": thread, "n": number}]))
            except Exception as exc:
                errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        sys.setswitchinterval(interval)
    try:
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        history = run_in_new_loop(session.get_items)
        expected = [{"t": t, "n": n} for t in range(threads_count) for n in range(rounds)]
        assert sorted(history, key=lambda item: (item["t"], item["n"])) == expected
        run_in_new_loop(session.clear_session)
    finally:
        run_in_new_loop(session.close)  # type: ignore[attr-defined]
        gc.collect()  # the connections of the finished loops


# --- fork ----------------------------------------------------------------------------------------


class _LoopThread:
    """An event loop running in a thread of the parent, to keep its connections open and
    calls in flight across a fork."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, call: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _in_forked_child(check: Callable[[], Awaitable[None]]) -> int | None:
    """Run ``check`` in a child forked now (exit code 0: it passed); ``None`` if it hung."""
    child = multiprocessing.get_context("fork").Process(target=lambda: asyncio.run(check()))
    child.start()
    child.join(CHILD_TIMEOUT)
    if child.is_alive():
        child.kill()
        child.join(10)
        return None
    return child.exitcode


def _registry_locks() -> list[Any]:
    """Every lock of agentmem's module-level registries of connections."""
    locks = [
        sqlite_backend._files._lock,
        sqlite_backend._templates._lock,
        sqlalchemy_engines.shared_engines._lock,
        sqlalchemy_engines.schemas._lock,
    ]
    with contextlib.suppress(ImportError):
        from agentmem.redis import client as _redis

        locks.append(_redis.shared_clients._lock)
    return locks


def test_a_child_forked_while_the_registries_are_locked_opens_its_own_connections(
    shared_store: Store,
) -> None:
    """The parent holds every registry lock (as worker threads in the middle of opening a
    session would) and has pooled connections open in a running loop at the fork; the child
    works on the same store through the parent's session object and a new one, and the
    parent's connections still work afterwards."""
    session_id = unique_id("fork")
    loop = _LoopThread()
    parent = shared_store.open(session_id)
    try:
        loop.run(parent.add_items([{"from": "parent"}]))

        async def child() -> None:
            await parent.add_items([{"from": "child"}])
            async with shared_store.open(session_id) as fresh:  # type: ignore[attr-defined]
                assert await fresh.get_items() == [{"from": "parent"}, {"from": "child"}]

        with contextlib.ExitStack() as held:
            for lock in _registry_locks():
                held.enter_context(lock)
            exitcode = _in_forked_child(child)
        assert exitcode is not None, "the forked child hung"
        assert exitcode == 0
        # The parent's pooled connections were not disturbed by the child.
        loop.run(parent.add_items([{"from": "parent again"}]))
        assert loop.run(parent.get_items()) == [
            {"from": "parent"},
            {"from": "child"},
            {"from": "parent again"},
        ]
        loop.run(parent.clear_session())
    finally:
        loop.run(parent.close())  # type: ignore[attr-defined]
        loop.stop()


@pytest.mark.sqlite
def test_a_child_forked_during_a_sqlite_call_in_flight_uses_its_own_connection(
    tmp_path: Path,
) -> None:
    """A parent thread is inside a write on the file, waiting for another connection's write
    lock (holding the file's connection and its lock): a forked child still reads and
    writes through its own connection, and the parent's write completes afterwards."""
    path = tmp_path / "fork.db"
    session_id = unique_id("fork")
    parent = SQLiteSession(session_id, path)
    loop = _LoopThread()
    try:
        loop.run(parent.add_items([{"n": 0}]))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock: the parent's next write waits
        in_flight = asyncio.run_coroutine_threadsafe(parent.add_items([{"n": 1}]), loop.loop)
        database = parent._database
        for _ in range(6000):  # until the write is inside SQLite's busy wait (60 s at most)
            if database.lock.locked():
                break
            threading.Event().wait(0.01)
        assert database.lock.locked(), "the parent's write never started"

        async def child() -> None:
            session: Session = SQLiteSession(session_id, path)
            assert await session.get_items() == [{"n": 0}]
            assert await parent.get_items() == [{"n": 0}]
            await session.close()  # type: ignore[attr-defined]

        try:
            exitcode = _in_forked_child(child)
        finally:
            blocker.rollback()
            blocker.close()
        assert exitcode is not None, "the forked child hung"
        assert exitcode == 0
        in_flight.result(60)
        assert loop.run(parent.get_items()) == [{"n": 0}, {"n": 1}]
    finally:
        loop.run(parent.close())
        loop.stop()
