"""The shared lock of ``exclusive()`` on Redis: a key with an expiry, renewed while held, whose
value (a random token) fences the holder's writes, and a queue that hands it over in order.

``{session_prefix}:{id}:lock`` (the session's hash tag: the same cluster slot as its other keys)
holds the holder's token for ``LOCK_EXPIRY_MS``; a task renews it every third of that. The
session's write scripts, while it holds the lock, check that the key still holds its token and
refuse the write otherwise (:class:`agentmem.SessionLockLost`): a holder whose lock expired (a
stalled process, Redis unreachable past the expiry) or was taken over writes nothing.

Waiters queue in arrival order, next to the lock key and in its slot: ``…:lock:next`` counts the
tickets, ``…:lock:queue`` (a sorted set) holds each waiter's token by ticket, ``…:lock:alive``
(a hash) when each waiter's mark expires (server time, ms). One script (:data:`_ACQUIRE`)
queues a waiter, drops the waiters at the head whose mark expired (a process that died), and
grants the lock to the head only, when it is free. A waiter polls it (1 ms, doubling to 50 ms),
each call renewing its mark for ``WAITER_EXPIRY_MS``; a waiter that times out or is cancelled
leaves the queue.
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

__all__ = ["LOCK_EXPIRY_MS", "LOCK_LOST", "WAITER_EXPIRY_MS", "RedisSessionLock", "queue_keys"]

LOCK_EXPIRY_MS: Final = 15_000
"""How long the lock outlives its holder's last renewal."""

WAITER_EXPIRY_MS: Final = 5_000
"""How long a waiter keeps its place in the queue after its last poll."""

LOCK_LOST: Final = "AGENTMEM_LOCK_LOST"
"""The error code of a write refused because its lock was lost."""

_POLL_FIRST = 0.001
_POLL_MAX = 0.05

# KEYS: lock, queue, next, alive. ARGV: token, lock expiry ms, waiter expiry ms.
# Returns 1 when the lock is now the caller's, else 0 (the caller is queued, its mark renewed).
_ACQUIRE = Script(
    """
if redis.call('ZCARD', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('HSET', KEYS[4], ARGV[1], now + tonumber(ARGV[3]))
local head
while true do
  head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  local mark = tonumber(redis.call('HGET', KEYS[4], head))
  if mark and mark > now then break end
  redis.call('ZREM', KEYS[2], head)
  redis.call('HDEL', KEYS[4], head)
end
local granted = 0
if head == ARGV[1] and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  granted = 1
end
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
else
  for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
return granted
"""
)

# KEYS: lock, queue, next, alive. ARGV: token. Takes the token out of the queue, and lets the
# lock go if the wait ended (cancelled) after the script granted it but before its reply came.
_LEAVE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[2], KEYS[3], KEYS[4]) end
return 1
"""
)

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


def queue_keys(lock_key: str) -> list[str]:
    """The lock key and its queue's keys (ticket queue, ticket counter, waiters' marks)."""
    return [lock_key, f"{lock_key}:queue", f"{lock_key}:next", f"{lock_key}:alive"]


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
        keys = queue_keys(self._lock_key)
        args: list[str | int] = [token, LOCK_EXPIRY_MS, WAITER_EXPIRY_MS]
        deadline = time.monotonic() + seconds
        pause = _POLL_FIRST
        try:
            while not await settled(_ACQUIRE(client, keys, args)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SessionLockTimeout(
                        f"another holder kept the session's lock for {seconds:g} s"
                    )
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, _POLL_MAX)
        except BaseException:
            # Leave the queue (else the waiters behind wait for this mark to expire); the
            # error raised is the wait's, whether or not Redis could be told (if not, the
            # mark, or the lock, expires).
            with contextlib.suppress(_redis.RedisError, OSError):
                await asyncio.shield(_LEAVE(client, keys, [token]))
            raise
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
