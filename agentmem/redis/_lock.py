"""The shared lock of ``exclusive()`` on Redis: a key with an expiry, renewed while held, whose
value (a random token) fences the holder's writes.

``{session_prefix}:{id}:lock`` (the session's hash tag: the same cluster slot as its other keys)
holds the holder's token for ``LOCK_EXPIRY_MS``; a task renews it every third of that. The
session's write scripts, while it holds the lock, check that the key still holds its token and
refuse the write otherwise (:class:`agentmem.SessionLockLost`): a holder whose lock expired (a
stalled process, Redis unreachable past the expiry) or was taken over writes nothing. The wait
polls (1 ms, doubling to 50 ms): across processes the order in which waiters get the lock is not
defined.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Final

from agentmem._lock import SessionLock
from agentmem.errors import SessionLockTimeout
from agentmem.redis import client as _redis
from agentmem.redis.client import Script, settled

if TYPE_CHECKING:
    from agentmem.redis.client import RedisClient

__all__ = ["LOCK_EXPIRY_MS", "LOCK_LOST", "RedisSessionLock"]

LOCK_EXPIRY_MS: Final = 15_000
"""How long the lock outlives its holder's last renewal."""

LOCK_LOST: Final = "AGENTMEM_LOCK_LOST"
"""The error code of a write refused because its lock was lost."""

_POLL_FIRST = 0.001
_POLL_MAX = 0.05

# KEYS: lock. ARGV: token, expiry ms. Returns 1 when renewed, 0 when the lock is not ours.
_RENEW = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
)

# KEYS: lock. ARGV: token. Returns 1 when released, 0 when it was no longer ours.
_RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
)


class RedisSessionLock(SessionLock):
    """The lock key ``lock_key``; while held, ``fence(lock_key, token)`` tells the session to
    fence its writes (``fence(None)`` ends it)."""

    def __init__(
        self,
        key: Hashable,
        client: Callable[[], RedisClient],
        lock_key: str,
        fence: Callable[[tuple[str, str] | None], None],
    ) -> None:
        super().__init__(key)
        self._client = client
        self._lock_key = lock_key
        self._fence = fence
        self._token = ""
        self._lost = False
        self._renewer: asyncio.Task[None] | None = None

    async def _acquire_shared(self, seconds: float) -> None:
        client = self._client()
        token = secrets.token_hex(16)
        deadline = time.monotonic() + seconds
        pause = _POLL_FIRST
        while not await settled(client.set(self._lock_key, token, nx=True, px=LOCK_EXPIRY_MS)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionLockTimeout(
                    f"another holder kept the session's lock for {seconds:g} s"
                )
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)
        self._token = token
        self._fence((self._lock_key, token))
        self._renewer = asyncio.create_task(self._renew(client))

    async def _renew(self, client: RedisClient) -> None:
        while True:
            await asyncio.sleep(LOCK_EXPIRY_MS / 3000)
            try:
                renewed = await _RENEW(client, [self._lock_key], [self._token, LOCK_EXPIRY_MS])
            except (_redis.RedisError, OSError):
                continue  # try again: the key lives on until its expiry
            if not renewed:
                self._lost = True
                return

    async def _release_shared(self) -> bool:
        self._fence(None)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        released = await settled(_RELEASE(self._client(), [self._lock_key], [self._token]))
        return bool(released) and not self._lost
