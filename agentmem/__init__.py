"""agentmem: conversation memory for LLM agents, behind the OpenAI Agents SDK's Session protocol.

Backends load on first use. An optional dependency that is not installed (``redis``,
``asyncpg``) only matters when a backend that needs it is built: that raises
:class:`MissingDependencyError` naming the ``pip install`` line.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from agentmem.errors import (
    CallTimeoutError,
    MissingDependencyError,
    SchemaError,
    SessionClosedError,
)
from agentmem.session import CloseHandle, Session, SessionABC

if TYPE_CHECKING:
    from agentmem.cache.session import CachedSession, CachedSessionManager
    from agentmem.redis.session import RedisSession, RedisSessionManager
    from agentmem.sql.sqlalchemy import SQLAlchemySession, SQLAlchemySessionManager
    from agentmem.sql.sqlite import SQLiteSession, SQLiteSessionManager

__all__ = [
    "CachedSession",
    "CachedSessionManager",
    "CallTimeoutError",
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
    "__version__",
]

__version__ = "0.1.0"

_LAZY = {
    "SQLAlchemySession": "agentmem.sql.sqlalchemy",
    "SQLiteSession": "agentmem.sql.sqlite",
    "SQLiteSessionManager": "agentmem.sql.sqlite",
    "SQLAlchemySessionManager": "agentmem.sql.sqlalchemy",
    "RedisSession": "agentmem.redis.session",
    "RedisSessionManager": "agentmem.redis.session",
    "CachedSession": "agentmem.cache.session",
    "CachedSessionManager": "agentmem.cache.session",
}


# Public submodules, reachable as attributes: ``agentmem.migrate.upgrade(engine)``.
_SUBMODULES = frozenset(
    {
        "cache",
        "cli",
        "errors",
        "items",
        "manager",
        "migrate",
        "models",
        "redis",
        "session",
        "sql",
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
