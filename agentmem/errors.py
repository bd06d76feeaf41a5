"""The exceptions agentmem raises of its own, in one place.

Core: it imports nothing else of agentmem. Backend drivers' own errors (Redis, SQLAlchemy) pass
through unchanged; the Redis ones are re-exported by :mod:`agentmem.redis.client`.
"""

from __future__ import annotations

__all__ = [
    "CallTimeoutError",
    "MissingDependencyError",
    "SchemaError",
    "SessionClosedError",
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
