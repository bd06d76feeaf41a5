"""agentmem: conversation memory for LLM agents, behind the OpenAI Agents SDK's Session protocol.

Where each concept lives (the arrows run one way: cli -> managers -> backends -> core):

- Core: :mod:`agentmem.session` (the Session protocol, ``SessionABC``, the close lifecycle),
  :mod:`agentmem.items` (ids, limits, item encoding), :mod:`agentmem.errors`,
  :mod:`agentmem.manager` (``SessionManagerABC`` and the records it returns).
- Backends: :mod:`agentmem.sql` (SQLite, SQLAlchemy, schema, migrations), :mod:`agentmem.redis`
  (Redis), :mod:`agentmem.cache` (a SQL store with a Redis cache, on their public interfaces).
- :mod:`agentmem.cli`: the ``agentmem`` command, on the managers.

Backends load on first use. An optional dependency that is not installed (``redis``,
``asyncpg``) only matters when a backend that needs it is built: that raises
:class:`MissingDependencyError` naming the ``pip install`` line.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from agentmem.errors import (
    CallTimeoutError,
    CompactionError,
    DecryptionError,
    EncryptionError,
    MissingDependencyError,
    SchemaError,
    SessionClosedError,
    SessionLockLost,
    SessionLockTimeout,
)
from agentmem.forks import ForkOrigin, ItemCursor
from agentmem.session import CloseHandle, Session, SessionABC

if TYPE_CHECKING:
    from agentmem.advanced import AdvancedSession
    from agentmem.cache.session import CachedSession, CachedSessionManager
    from agentmem.records import UNSET, ItemPage, SessionInfo, SessionPage
    from agentmem.redis.session import RedisSession, RedisSessionManager
    from agentmem.sql.pooler import pgbouncer_connect_args
    from agentmem.sql.sqlalchemy import SQLAlchemySession, SQLAlchemySessionManager
    from agentmem.sql.sqlite import SQLiteSession, SQLiteSessionManager
    from agentmem.wrappers.compacting import CompactingSession
    from agentmem.wrappers.encrypted import EncryptedSession

__all__ = [
    "AdvancedSession",
    "CachedSession",
    "CachedSessionManager",
    "CallTimeoutError",
    "ForkOrigin",
    "ItemCursor",
    "CompactingSession",
    "CompactionError",
    "DecryptionError",
    "EncryptedSession",
    "EncryptionError",
    "ItemPage",
    "CloseHandle",
    "MissingDependencyError",
    "RedisSession",
    "RedisSessionManager",
    "SQLAlchemySession",
    "SQLAlchemySessionManager",
    "SQLiteSession",
    "SQLiteSessionManager",
    "SchemaError",
    "Session",
    "SessionABC",
    "SessionClosedError",
    "SessionLockLost",
    "SessionLockTimeout",
    "SessionInfo",
    "SessionPage",
    "UNSET",
    "__version__",
    "pgbouncer_connect_args",
]

__version__ = "0.1.0"

_LAZY = {
    "AdvancedSession": "agentmem.advanced",
    "SQLAlchemySession": "agentmem.sql.sqlalchemy",
    "SQLiteSession": "agentmem.sql.sqlite",
    "SQLiteSessionManager": "agentmem.sql.sqlite",
    "SQLAlchemySessionManager": "agentmem.sql.sqlalchemy",
    "RedisSession": "agentmem.redis.session",
    "RedisSessionManager": "agentmem.redis.session",
    "CachedSession": "agentmem.cache.session",
    "CachedSessionManager": "agentmem.cache.session",
    "pgbouncer_connect_args": "agentmem.sql.pooler",
    "EncryptedSession": "agentmem.wrappers.encrypted",
    "CompactingSession": "agentmem.wrappers.compacting",
    "SessionInfo": "agentmem.records",
    "SessionPage": "agentmem.records",
    "ItemPage": "agentmem.records",
    "UNSET": "agentmem.records",
}


# Public submodules, reachable as attributes: ``agentmem.migrate.upgrade(engine)``.
_SUBMODULES = frozenset(
    {
        "advanced",
        "cache",
        "cli",
        "errors",
        "forks",
        "items",
        "manager",
        "migrate",
        "models",
        "records",
        "redis",
        "session",
        "sql",
        "testing",
        "windows",
        "wrappers",
    }
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"agentmem.{name}")  # importing sets the attribute
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentmem' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBMODULES})
