"""The lock behind ``session.exclusive()``: one holder per session at a time.

Core: it imports only agentmem's errors. Every lock first takes a process-local lock on its
key, in arrival order (FIFO), from any thread or event loop; then the backend's shared lock
(a file lock, a PostgreSQL advisory lock, a Redis key), so that only one caller per process
ever waits on the shared one.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import deque
from collections.abc import Hashable
from datetime import timedelta

from agentmem.errors import SessionLockTimeout

__all__ = ["DEFAULT_LOCK_TIMEOUT", "SessionLock", "validate_lock_timeout"]

DEFAULT_LOCK_TIMEOUT = 30.0
"""Seconds ``exclusive()`` waits for the lock by default."""


def validate_lock_timeout(timeout: object) -> float:
    """``timeout`` (seconds as an int or float, or a ``timedelta``) in seconds."""
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"timeout must be seconds (int or float) or a timedelta, got {timeout!r}")
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
    return seconds


class _Waiter:
    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Entry:
    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = False
        self.waiters: deque[_Waiter] = deque()


class _LocalLocks:
    """Process-local locks by key, handed over in arrival order, across threads and loops."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # around the table only, never across an await
        self._entries: dict[Hashable, _Entry] = {}

    async def acquire(self, key: Hashable, seconds: float) -> None:
        with self._mutex:
            entry = self._entries.setdefault(key, _Entry())
            if not entry.held and not entry.waiters:
                entry.held = True
                return
            waiter = _Waiter(asyncio.get_running_loop())
            entry.waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter.future
        except BaseException as exc:
            with self._mutex:
                granted = waiter.granted
                if not granted:
                    entry.waiters.remove(waiter)
            if granted:  # handed over as the wait ended: pass it on
                self.release(key)
            if isinstance(exc, TimeoutError):
                raise SessionLockTimeout(
                    f"another holder kept the session's lock for {seconds:g} s"
                ) from None
            raise

    def release(self, key: Hashable) -> None:
        with self._mutex:
            entry = self._entries[key]
            if entry.waiters:
                waiter = entry.waiters.popleft()
                waiter.granted = True
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)
            else:
                del self._entries[key]

    def after_fork(self) -> None:
        """In a forked child nothing holds or waits for a lock of this process."""
        self._mutex = threading.Lock()
        self._entries = {}


_local = _LocalLocks()
os.register_at_fork(after_in_child=_local.after_fork)


class SessionLock:
    """One ``exclusive()`` block's hold on a session: the process-local lock on ``key``, then
    the backend's shared lock (:meth:`_acquire_shared`; none here: a process-local store)."""

    def __init__(self, key: Hashable) -> None:
        self._key = key

    async def acquire(self, seconds: float) -> None:
        """Take the lock within ``seconds``.

        Raises:
            SessionLockTimeout: another holder kept it that long.
        """
        deadline = time.monotonic() + seconds
        await _local.acquire(self._key, seconds)
        try:
            await self._acquire_shared(max(0.0, deadline - time.monotonic()))
        except BaseException:
            _local.release(self._key)
            raise

    async def release(self) -> bool:
        """Let the lock go; whether it was still held (never lost) until now."""
        try:
            return await self._release_shared()
        finally:
            _local.release(self._key)

    async def _acquire_shared(self, seconds: float) -> None:
        """Take the backend's lock within ``timeout`` s, else raise SessionLockTimeout."""

    async def _release_shared(self) -> bool:
        """Release the backend's lock; whether it was still held."""
        return True
