"""The shared locks of ``exclusive()`` on the SQL stores.

- A SQLite file: tickets, in the session's directory in ``<database file>-locks/``. A caller
  takes the next number under a ``flock`` on the directory's ``next`` file (the counter), and
  creates and ``flock``s its ticket file before letting the counter go: the file is locked for
  as long as its caller waits or holds the lock, and its lock ends with its process. A caller
  holds the session's lock once no lower ticket is live (locked); until then it polls (1 ms,
  doubling to 50 ms). Waiters get the lock in ticket order, across processes; a ticket left by
  a process that died is unlocked, skipped and removed. Releasing removes the ticket.
- PostgreSQL: a transaction-level advisory lock (``pg_advisory_xact_lock``) keyed by a 64-bit
  hash of the table prefix and the session id, in a transaction left open for the whole block on
  a pooled connection held for it (the block's own statements run on other connections). Waiters
  wait in the server's lock queue; ``SET LOCAL lock_timeout`` bounds the wait. No session state
  outlives the transaction, so it works through PgBouncer in transaction mode too (which keeps
  the server connection for the open transaction). The transaction is READ COMMITTED and writes
  nothing: idle, it holds no snapshot (no xmin) and no transaction id. If its connection dies
  (or ``idle_in_transaction_session_timeout`` ends it), the server drops the lock: the block's
  exit then raises :class:`agentmem.SessionLockLost`.

  A block holds its lock's connection while it waits and while it runs, and its statements need
  other connections of the same pool: so that lock connections can never take the whole pool
  (every holder then waiting for a connection only another holder could return), at most half of
  a bounded pool (``pool_size + max_overflow``, at least one) holds locks at once, per engine and
  event loop; further blocks wait for a place, within their timeout, without a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool, QueuePool
from sqlalchemy.util import greenlet_spawn

from agentmem._lock import SessionLock
from agentmem.errors import SessionLockTimeout

__all__ = ["FileSessionLock", "PostgresSessionLock", "advisory_key", "lock_directory"]

_POLL_FIRST = 0.001
_POLL_MAX = 0.05


def _digest(table_prefix: str, session_id: str) -> bytes:
    return hashlib.sha256(f"agentmem\0{table_prefix}\0{session_id}".encode()).digest()


def lock_directory(database: str, table_prefix: str, session_id: str) -> Path:
    """The lock directory of a session of the SQLite database file ``database``."""
    return Path(f"{database}-locks") / _digest(table_prefix, session_id)[:16].hex()


def advisory_key(table_prefix: str, session_id: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit int) of a session."""
    return int.from_bytes(_digest(table_prefix, session_id)[:8], "big", signed=True)


def _timed_out(timeout: float) -> SessionLockTimeout:
    return SessionLockTimeout(f"another holder kept the session's lock for {timeout:g} s")


class FileSessionLock(SessionLock):
    """Tickets in the session's lock directory next to a SQLite database file, granted in
    order (see the module docstring)."""

    def __init__(self, key: Hashable, path: Path) -> None:
        super().__init__(key)
        self._path = path
        self._ticket: Path | None = None
        self._fd: int | None = None

    async def _acquire_shared(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        number, fd = await _take_ticket(self._path)
        ticket = self._path / _ticket_name(number)
        try:
            pause = _POLL_FIRST
            while _ahead(self._path, number):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _timed_out(seconds)
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, _POLL_MAX)
        except BaseException:
            _drop_ticket(ticket, fd)
            raise
        self._ticket, self._fd = ticket, fd

    async def _release_shared(self) -> bool:
        ticket, fd, self._ticket, self._fd = self._ticket, self._fd, None, None
        if ticket is not None and fd is not None:
            _drop_ticket(ticket, fd)
        return True


_COUNTER_WIDTH = 20


def _ticket_name(number: int) -> str:
    return f"{number:0{_COUNTER_WIDTH}d}.ticket"


async def _take_ticket(directory: Path) -> tuple[int, int]:
    """The next ticket of ``directory``: its number and the descriptor of its file, locked
    (its caller's liveness mark) before the counter moves on."""
    try:
        counter = os.open(directory / "next", os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        counter = os.open(directory / "next", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        while True:  # held for a few system calls by each caller
            try:
                fcntl.flock(counter, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_POLL_FIRST)
        data = os.pread(counter, _COUNTER_WIDTH, 0)
        number = int(data) + 1 if data else 1
        fd = os.open(directory / _ticket_name(number), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(counter, b"%0*d" % (_COUNTER_WIDTH, number), 0)
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(counter)  # and with it its lock
    return number, fd


def _ahead(directory: Path, number: int) -> bool:
    """Whether a live ticket lower than ``number`` is in ``directory``. Every lower ticket was
    taken, its file locked, before ``number`` was: an unlocked one is of a process that died
    (or is letting it go), and is removed."""
    for name in os.listdir(directory):
        if not name.endswith(".ticket") or int(name[:-7]) >= number:
            continue
        try:
            fd = os.open(directory / name, os.O_RDWR)
        except FileNotFoundError:
            continue  # let go meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
        finally:
            os.close(fd)
    return False


def _drop_ticket(ticket: Path, fd: int) -> None:
    try:
        ticket.unlink(missing_ok=True)
    finally:
        os.close(fd)  # closing the only descriptor releases its lock


_gates: weakref.WeakKeyDictionary[Pool, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _lock_gate(engine: AsyncEngine) -> asyncio.Semaphore | None:
    """The places for lock connections in ``engine``'s pool on this event loop: half of a
    bounded pool; None for a pool without a bound (no overflow limit, no queue)."""
    pool = engine.sync_engine.pool
    if not isinstance(pool, QueuePool):
        return None
    overflow = getattr(pool, "_max_overflow", -1)
    if overflow < 0:
        return None
    loop = asyncio.get_running_loop()
    entry = _gates.get(pool)
    if entry is None or entry[0] is not loop:
        entry = (loop, asyncio.Semaphore(max(1, (pool.size() + overflow) // 2)))
        _gates[pool] = entry
    return entry[1]


class PostgresSessionLock(SessionLock):
    """``pg_advisory_xact_lock`` in a transaction open for the block, on a pooled connection of
    ``engine`` (awaited) held for it."""

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
        self._gate: asyncio.Semaphore | None = None

    async def _acquire_shared(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        engine = await self._engine()
        gate = _lock_gate(engine)
        if gate is not None:
            try:
                async with asyncio.timeout(seconds):
                    await gate.acquire()
            except TimeoutError:
                raise _timed_out(seconds) from None
        try:
            await self._take(engine, max(0.0, deadline - time.monotonic()), seconds)
        except BaseException:
            if gate is not None:
                gate.release()
            raise
        self._gate = gate

    async def _take(self, engine: AsyncEngine, left: float, seconds: float) -> None:
        pooled = await engine.raw_connection()
        driver: Any = pooled.driver_connection
        # One round trip; lock_timeout bounds the wait and ends with the transaction.
        wait_ms = max(1, round(left * 1000))
        sql = (
            "BEGIN; SET TRANSACTION ISOLATION LEVEL READ COMMITTED; "
            f"SET LOCAL lock_timeout = {wait_ms}; "
            f"SELECT pg_advisory_xact_lock({self._advisory})"
        )
        try:
            await driver.execute(sql)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == "55P03":  # lock_not_available
                try:
                    await driver.execute("ROLLBACK")
                except BaseException:
                    await _drop(pooled)
                    raise
                await greenlet_spawn(pooled.close)
                raise _timed_out(seconds) from None
            await _drop(pooled)
            raise
        except BaseException:  # cancelled mid-wait: dropping the connection drops the lock
            await _drop(pooled)
            raise
        self._pooled = pooled

    async def _release_shared(self) -> bool:
        pooled, self._pooled = self._pooled, None
        gate, self._gate = self._gate, None
        try:
            return True if pooled is None else await self._end(pooled)
        finally:
            if gate is not None:
                gate.release()

    async def _end(self, pooled: Any) -> bool:
        try:
            # The transaction was open all along (else this fails): the lock was held.
            await pooled.driver_connection.execute("ROLLBACK")
        except BaseException as exc:
            # The connection is gone, and the lock with it (or it goes now).
            with contextlib.suppress(Exception):
                await _drop(pooled)
            if not isinstance(exc, Exception):
                raise
            return False
        await greenlet_spawn(pooled.close)
        return True


async def _drop(pooled: Any) -> None:
    """Close ``pooled`` for good, at once where the driver can (asyncpg): the server ends its
    transaction and with it the lock."""
    terminate = getattr(pooled.driver_connection, "terminate", None)
    if terminate is not None:
        terminate()
    await asyncio.shield(greenlet_spawn(pooled.invalidate))
