"""The shared SQL base: the history operations of every SQL session on stored JSON text.

:class:`SQLSessionBase` is the public interface that composes a SQL session (the cache keeps the
stored text as is); :class:`Operations` is what each connection kind (an engine's driver, a
SQLite file's thread) implements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from agentmem.session import EncodedItem, SessionABC, SessionItem, encode_items

__all__ = ["Operations", "SQLSessionBase"]


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
        store in any process (a SQLite file's resolved path; a server database's name)."""

    async def get_items(self, limit: int | None = None) -> list[SessionItem]:
        self._check_open()
        resolved = self._resolve_limit(limit)
        if resolved == 0:
            return []
        return await self._read_valid(self._ops.get, resolved)

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
        return await self._pop_valid(self.pop_stored_item)

    async def pop_stored_item(self) -> str | None:
        """Remove the newest item and return its JSON text as stored; ``None`` when empty."""
        self._check_open()
        return await self._ops.pop()

    async def clear_session(self) -> None:
        self._check_open()
        await self._ops.clear()

    async def _replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        return await self.replace_encoded_items(items, newest=newest, if_newest=expected)

    async def replace_encoded_items(
        self,
        items: list[EncodedItem],
        *,
        newest: int | None = None,
        if_newest: list[SessionItem] | None = None,
    ) -> bool:
        """:meth:`replace_items` with items already checked and encoded by
        :func:`agentmem.session.encode_items` (and ``newest`` already checked)."""
        self._check_open()
        return await self._ops.replace(items, newest, if_newest)


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

    @abstractmethod
    async def replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool: ...
