"""The exceptions agentmem raises of its own, in one place.

Core: it imports nothing else of agentmem. Backend drivers' own errors (Redis, SQLAlchemy) pass
through unchanged; the Redis ones are re-exported by :mod:`agentmem.redis.client`.
"""

from __future__ import annotations

__all__ = [
    "CallTimeoutError",
    "CompactionError",
    "DecryptionError",
    "EncryptionError",
    "MissingDependencyError",
    "SchemaError",
    "SessionClosedError",
    "SessionLockLost",
    "SessionLockTimeout",
]


class SessionClosedError(RuntimeError):
    """Raised when a session (or manager) is used after ``close()``."""


class MissingDependencyError(ImportError):
    """An optional dependency of agentmem is not installed; the message says what to install."""


class SchemaError(RuntimeError):
    """The database is not at agentmem's current schema; the message names the fix."""


class CallTimeoutError(TimeoutError):
    """A PostgreSQL call got no answer within the session's ``call_timeout``.

    The connection it used is closed (the rest of the pool is kept) and the call is not
    retried. A write that timed out may or may not have been applied.
    """


class EncryptionError(RuntimeError):
    """Base of the errors of :class:`agentmem.EncryptedSession`'s stored items."""


class DecryptionError(EncryptionError):
    """A stored item of an encrypted session does not decrypt to the item that was written.

    Raised for an item that was altered, copied from another session, written under a key id
    that is not in ``keys``, or not written by an encrypted session at all: the session never
    returns such an item, and never drops it silently.

    Attributes:
        session_id: The session the item was read from.
        position: Where the item sits in that session's history, counted from the newest as a
            negative index: ``-1`` is the newest item (``pop_item`` reads only that one).
        reason: Why it does not decrypt.
        key_id: The key id the item names, if it names one.
        stored_item: The item as stored (``pop_item`` has removed it from the store: it is
            kept here so that nothing is lost).
    """

    def __init__(
        self,
        session_id: str,
        position: int,
        reason: str,
        *,
        key_id: str | None = None,
        stored_item: object = None,
    ) -> None:
        super().__init__(
            f"cannot decrypt the item at position {position} (-1 is the newest) of session "
            f"{session_id!r}: {reason}"
        )
        self.session_id = session_id
        self.position = position
        self.reason = reason
        self.key_id = key_id
        self.stored_item = stored_item


class CompactionError(RuntimeError):
    """:class:`agentmem.CompactingSession` could not compact a history: ``summarize`` failed or
    returned no item, or the session kept changing. The history is left as it was."""


class SessionLockTimeout(TimeoutError):
    """``session.exclusive(timeout=...)`` could not take the session's lock within ``timeout``:
    another holder kept it the whole time. Nothing was run under the lock."""


class SessionLockLost(RuntimeError):
    """The lock taken by ``session.exclusive()`` was lost while held (on Redis: it expired or
    another holder took it over). Writes made under the lost lock are refused with this error;
    leaving the ``async with`` block raises it too, since the block did not run alone."""
