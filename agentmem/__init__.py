"""agentmem: conversation memory for LLM agents, behind the OpenAI Agents SDK's Session protocol.

Backends load on first use. An optional dependency that is not installed (``redis``,
``asyncpg``) only matters when a backend that needs it is built: that raises
:class:`MissingDependencyError` naming the ``pip install`` line.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from agentmem._deps import MissingDependencyError
from agentmem.session import Session, SessionABC, SessionClosedError

if TYPE_CHECKING:
    from agentmem.migrate import SchemaError
    from agentmem.providers.cached import CachedSession, CachedSessionManager
    from agentmem.providers.redis import RedisSession, RedisSessionManager
    from agentmem.providers.sqlalchemy import (
        CallTimeoutError,
        SQLAlchemySession,
        SQLAlchemySessionManager,
    )
    from agentmem.providers.sqlite import SQLiteSession, SQLiteSessionManager

__all__ = [
    "CachedSession",
    "CachedSessionManager",
    "CallTimeoutError",
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
    "SQLAlchemySession": "agentmem.providers.sqlalchemy",
    "CallTimeoutError": "agentmem.providers.sqlalchemy",
    "SQLiteSession": "agentmem.providers.sqlite",
    "SQLiteSessionManager": "agentmem.providers.sqlite",
    "SQLAlchemySessionManager": "agentmem.providers.sqlalchemy",
    "RedisSession": "agentmem.providers.redis",
    "RedisSessionManager": "agentmem.providers.redis",
    "SchemaError": "agentmem.migrate",
    "CachedSession": "agentmem.providers.cached",
    "CachedSessionManager": "agentmem.providers.cached",
}


# Public submodules, reachable as attributes: ``agentmem.migrate.upgrade(engine)``.
_SUBMODULES = frozenset({"cli", "migrate", "models", "providers", "session"})


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
