"""The shared SQL base: the public interface of every SQL session and SQL session manager.

- :class:`SQLSessionBase`: the history operations of a SQL session on stored JSON text, and
  what composes a SQL session needs to know of it (its database's identity, whether that
  database is private to the process, whether a failed call is over). The cache
  (:mod:`agentmem.cache.session`) stands on it alone.
- :class:`SQLSessionManagerABC`: a session manager whose sessions are ``SQLSessionBase``.
- :class:`Operations`: what each connection kind (an engine's driver, a SQLite file's thread)
  implements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar

from agentmem.manager import SessionManagerABC
from agentmem.session import EncodedItem, SessionABC, SessionItem, decode_item, encode_items

__all__ = ["MEMORY", "Operations", "SQLSessionBase", "SQLSessionManagerABC"]

MEMORY = ":memory:"
"""How ``store_identity`` names an in-memory database, whatever its spelling in a URL."""


class SQLSessionBase(SessionABC):
    """The history operations of the SQL sessions, delegated to ``self._ops``.

    Besides the Session protocol it offers the history as stored (JSON text, encoded once), for
    what composes a SQL session: :class:`agentmem.CachedSession` keeps that text as is.
    """

    _ops: Operations

    @property
    @abstractmethod
    def store_identity(self) -> tuple[str, str, str]:
        """``(backend, database, table prefix)``: the same for every session object of this
        store in any process (a SQLite file's resolved path; a server database's name;
        :data:`MEMORY` for an in-memory database)."""

    @property
    def process_private(self) -> bool:
        """Whether the database lives in this process's memory: no other process sees it."""
        return self.store_identity[1] == MEMORY

    @property
    def over_when_raised(self) -> bool:
        """Whether a write that raised (or was cancelled) is over when the caller hears of it:
        applied whole or not at all, never committing later. False where a call may still
        commit after it raised (a statement sent to a server whose reply was lost)."""
        return False

    async def get_items(self, limit: int | None = None) -> list[SessionItem]:
        self._check_open()
        resolved = self._resolve_limit(limit)
        if resolved == 0:
            return []
        rows = await self._ops.get(resolved)
        return [decode_item(row) for row in rows]

    async def get_stored_items(self, limit: int | None = None) -> list[str]:
        """The newest ``limit`` items (all with ``None``; ``session_settings`` do not apply) as
        stored: each item's JSON text, oldest first."""
        self._check_open()
        return await self._ops.get(limit)

    async def add_items(self, items: list[SessionItem]) -> None:
        self._check_open()
        encoded = encode_items(items)
        if encoded:
            await self._ops.add(encoded)

    async def add_encoded_items(self, items: list[EncodedItem]) -> None:
        """Append items already checked and encoded by :func:`agentmem.session.encode_items`."""
        self._check_open()
        if items:
            await self._ops.add(items)

    async def pop_item(self) -> SessionItem | None:
        self._check_open()
        row = await self.pop_stored_item()
        return None if row is None else decode_item(row)

    async def pop_stored_item(self) -> str | None:
        """Remove the newest item and return its JSON text as stored; ``None`` when empty."""
        self._check_open()
        return await self._ops.pop()

    async def clear_session(self) -> None:
        self._check_open()
        await self._ops.clear()


SQLSessionT = TypeVar("SQLSessionT", bound=SQLSessionBase)


class SQLSessionManagerABC(SessionManagerABC[SQLSessionT]):
    """A session manager of a SQL store: its sessions are :class:`SQLSessionBase`."""

    @property
    @abstractmethod
    def process_private(self) -> bool:
        """Whether the database lives in this process's memory: no other process sees it."""

    @abstractmethod
    def get_session(self, session_id: str, *, session_settings: Any = None) -> SQLSessionT:
        """A session of this store on the manager's connections (never closes them)."""


class Operations(ABC):
    """The four operations of one session on one kind of connection, on stored JSON text."""

    @abstractmethod
    async def get(self, limit: int | None) -> list[str]: ...

    @abstractmethod
    async def add(self, items: list[EncodedItem]) -> None: ...

    @abstractmethod
    async def pop(self) -> str | None: ...

    @abstractmethod
    async def clear(self) -> None: ...
