"""The cross-process order of ``exclusive()``: waiters in spawned processes queue up behind a
holder one at a time (each starts once the previous one is seen queued in the store), and
:func:`waiter` logs when each gets the lock and lets it go.

What the store shows of its queue (:func:`queued`): a Redis session's queue (the members of
``…:lock:queue``), a SQLite file's tickets (the ticket files of the session's lock directory),
a PostgreSQL session's waiting backends (the pids of ``pg_locks`` rows of its advisory key not
granted, read on the server itself, also behind PgBouncer).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentmem import SessionLockTimeout
from tests._backends import Backend, unique_id


def waiter(backend: Backend, session_id: str, n: int, timeout: float, log: str) -> None:
    """Take the session's lock (within ``timeout`` s) and log ``in n``, add an item, read the
    history and log ``out n`` before letting it go; log ``timeout n`` if the wait timed out."""

    def write(line: str) -> None:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{line}\n")

    async def run() -> None:
        session: Any = backend.open(session_id)
        async with session:
            try:
                async with session.exclusive(timeout=timeout):
                    write(f"in {n}")
                    await session.add_items([{"n": n}])
                    await session.get_items()
                    write(f"out {n}")
            except SessionLockTimeout:
                write(f"timeout {n}")

    asyncio.run(run())


def log_lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


async def queued(backend: Backend, session: Any, server: Any) -> set[str]:
    """Who waits for (or holds, on a SQLite file) the session's lock in the store now.

    Args:
        backend: The store.
        session: A session object on it (of this process).
        server: A Redis client for the Redis kinds, an asyncpg connection to the PostgreSQL
            server itself (not through PgBouncer) for the PostgreSQL kinds; ``None`` else.
    """
    if backend.family == "redis":
        members = await server.zrange(f"{session.session_key}:lock:queue", 0, -1)
        return {m.decode() for m in members}
    if backend.family == "postgres":
        from agentmem.sql._locks import advisory_key

        _, _, prefix = session.store_identity
        rows = await server.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND (classid::bigint << 32 | objid::bigint) = $1",
            advisory_key(prefix, session.session_id),
        )
        return {str(row["pid"]) for row in rows}
    from agentmem.sql._locks import lock_directory

    _, path, prefix = session.store_identity
    directory = lock_directory(path, prefix, session.session_id)
    return {name for name in os.listdir(directory) if name.endswith(".ticket")}


SPAWN = multiprocessing.get_context("spawn")
DEADLINE = 120.0
"""Seconds the test waits for a child to show up or finish (never reached)."""


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {DEADLINE:g} s")
        await asyncio.sleep(0.02)


async def waiters_take_turns_in_order(backend: Backend, server: Any, log: Path) -> None:
    """The test shared by every store: a holder (this process) keeps the lock while waiters 1
    to 6, each in its own process, queue up one after the other; waiter 3 is killed while
    queued and waiter 4 times out (and leaves the queue); once the holder lets go, 1, 2, 5 and
    6 get the lock in that order, one at a time."""
    session_id = unique_id("queue")
    session: Any = backend.open(session_id)
    children: list[Any] = []
    async with session:
        try:
            async with session.exclusive(timeout=DEADLINE):
                seen = await queued(backend, session, server)
                for n in range(1, 7):
                    timeout = 1.0 if n == 4 else DEADLINE
                    child = SPAWN.Process(
                        target=waiter, args=(backend, session_id, n, timeout, str(log))
                    )
                    child.start()
                    children.append(child)
                    if n == 4:  # it waits its second out, and leaves the queue

                        async def timed_out() -> bool:
                            return log_lines(log) == ["timeout 4"]

                        await _until(timed_out, "waiter 4 timed out")
                        # It left the queue (what is left of it is the others').
                        assert await queued(backend, session, server) <= seen
                        continue

                    async def queued_now(before: set[str] = seen) -> bool:
                        return bool(await queued(backend, session, server) - before)

                    await _until(queued_now, f"waiter {n} queued")
                    seen = await queued(backend, session, server)
                    if n == 3:  # dies while queued
                        child.kill()
                        await asyncio.to_thread(child.join, DEADLINE)
                assert log_lines(log) == ["timeout 4"]  # nobody got in while the holder held
            for child in children:
                await asyncio.to_thread(child.join, DEADLINE)
                assert child.exitcode is not None, "a waiter never finished"
            assert [child.exitcode for child in children] == [0, 0, -signal.SIGKILL, 0, 0, 0]
            assert log_lines(log) == [
                "timeout 4",
                *(f"{step} {n}" for n in (1, 2, 5, 6) for step in ("in", "out")),
            ]
            assert await session.get_items() == [{"n": n} for n in (1, 2, 5, 6)]
            if backend.family == "redis":  # nobody holds or waits: the lock's keys are gone
                from agentmem.redis._lock import queue_keys

                assert await server.exists(*queue_keys(f"{session.session_key}:lock")) == 0
        finally:
            for child in children:
                if child.is_alive():
                    child.kill()
                    child.join()
            await session.clear_session()
