"""The shared locks of ``exclusive()`` on the SQL stores.

- A SQLite file: an exclusive ``flock`` on a lock file of the session, in the directory
  ``<database file>-locks/`` (one small file per session that was ever locked). It is released
  when the holder closes it or its process ends. The wait polls (1 ms, doubling to 50 ms): across
  processes the order in which waiters get it is not defined.
- PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) keyed by a 64-bit hash of the
  table prefix and the session id, on a pooled connection held for the whole block. Waiters wait
  in the server's lock queue; ``lock_timeout`` bounds the wait. If that connection dies, the
  server drops the lock: the block's exit then raises :class:`agentmem.SessionLockLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from agentmem._lock import SessionLock
from agentmem.errors import SessionLockTimeout

__all__ = ["FileSessionLock", "PostgresSessionLock", "advisory_key", "lock_file"]

_POLL_FIRST = 0.001
_POLL_MAX = 0.05


def _digest(table_prefix: str, session_id: str) -> bytes:
    return hashlib.sha256(f"agentmem\0{table_prefix}\0{session_id}".encode()).digest()


def lock_file(database: str, table_prefix: str, session_id: str) -> Path:
    """The lock file of a session of the SQLite database file ``database``."""
    return Path(f"{database}-locks") / f"{_digest(table_prefix, session_id)[:16].hex()}.lock"


def advisory_key(table_prefix: str, session_id: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit int) of a session."""
    return int.from_bytes(_digest(table_prefix, session_id)[:8], "big", signed=True)


def _timed_out(timeout: float) -> SessionLockTimeout:
    return SessionLockTimeout(f"another holder kept the session's lock for {timeout:g} s")


class FileSessionLock(SessionLock):
    """``flock`` on the session's lock file next to a SQLite database file."""

    def __init__(self, key: Hashable, path: Path) -> None:
        super().__init__(key)
        self._path = path
        self._fd: int | None = None

    async def _acquire_shared(self, seconds: float) -> None:
        self._path.parent.mkdir(exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + seconds
        pause = _POLL_FIRST
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise _timed_out(seconds) from None
                    await asyncio.sleep(min(pause, left))
                    pause = min(pause * 2, _POLL_MAX)
                else:
                    self._fd = fd
                    return
        except BaseException:
            os.close(fd)
            raise

    async def _release_shared(self) -> bool:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the lock releases it
        return True


class PostgresSessionLock(SessionLock):
    """``pg_advisory_lock`` on a pooled connection of ``engine`` (awaited), held for the block."""

    def __init__(
        self,
        key: Hashable,
        engine: Callable[[], Awaitable[AsyncEngine]],
        table_prefix: str,
        session_id: str,
    ) -> None:
        super().__init__(key)
        self._engine = engine
        self._advisory = advisory_key(table_prefix, session_id)
        self._pooled: Any = None

    async def _acquire_shared(self, seconds: float) -> None:
        engine = await self._engine()
        pooled = await engine.raw_connection()
        driver: Any = pooled.driver_connection
        # One round trip: the wait is bounded by lock_timeout, which a failure rolls back with
        # the rest of the implicit transaction and a success resets.
        wait_ms = max(1, round(seconds * 1000))
        sql = (
            f"SET lock_timeout = {wait_ms}; SELECT pg_advisory_lock({self._advisory}); "
            "RESET lock_timeout"
        )
        try:
            await driver.execute(sql)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == "55P03":  # lock_not_available
                await greenlet_spawn(pooled.close)
                raise _timed_out(seconds) from None
            await greenlet_spawn(pooled.invalidate)
            raise
        except BaseException:  # cancelled mid-wait: dropping the connection drops the lock
            _terminate(driver)
            await asyncio.shield(greenlet_spawn(pooled.invalidate))
            raise
        self._pooled = pooled

    async def _release_shared(self) -> bool:
        pooled, self._pooled = self._pooled, None
        if pooled is None:
            return True
        try:
            held = await _fetch_value(
                pooled.driver_connection, f"SELECT pg_advisory_unlock({self._advisory})"
            )
        except BaseException as exc:
            # The connection is gone, and the lock with it (or it goes now).
            _terminate(pooled.driver_connection)
            with contextlib.suppress(Exception):
                await asyncio.shield(greenlet_spawn(pooled.invalidate))
            if not isinstance(exc, Exception):
                raise
            return False
        await greenlet_spawn(pooled.close)
        return bool(held)


async def _fetch_value(driver: Any, sql: str) -> Any:
    """The first value of ``sql`` on an asyncpg or psycopg connection."""
    fetchval = getattr(driver, "fetchval", None)
    if fetchval is not None:
        return await fetchval(sql)
    cursor = await driver.execute(sql)
    row = await cursor.fetchone()
    return None if row is None else row[0]


def _terminate(driver: Any) -> None:
    """Drop the connection at once, where the driver can (asyncpg); else the pool's
    invalidation closes it."""
    terminate = getattr(driver, "terminate", None)
    if terminate is not None:
        terminate()
