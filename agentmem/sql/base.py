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
from typing import Any, Self, TypeVar

from agentmem.forks import ForkOrigin, ItemCursor, validate_upto
from agentmem.manager import SessionManagerABC, SessionOptions
from agentmem.records import ItemPage, SessionInfo
from agentmem.session import EncodedItem, SessionABC, SessionItem, decode_stored, encode_items
from agentmem.windows import WindowMode

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

    async def get_items(
        self,
        limit: int | None = None,
        *,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> list[SessionItem]:
        self._check_open()
        resolved = self._resolve_limit(limit)
        window = self._resolve_window(whole_pairs, whole_turns)
        if resolved == 0:
            return []
        if resolved is None or window == "items":
            return await self._read_valid(self._ops.get, resolved)
        # A widened window is not widened again for skipped rows: it holds whole pairs/turns.
        rows = await self.get_stored_items(resolved, window=window)
        return decode_stored(rows, self.session_id)[0]

    async def get_stored_items(
        self, limit: int | None = None, *, window: WindowMode = "items"
    ) -> list[str]:
        """The newest ``limit`` items (all with ``None``; ``session_settings`` do not apply) as
        stored: each item's JSON text, oldest first. ``window`` ``"pairs"`` or ``"turns"``
        widens a limited read as :mod:`agentmem.windows` states, in one statement."""
        self._check_open()
        if limit is None or window == "items":
            return await self._ops.get(limit)
        if limit == 0:
            return []
        return await self._ops.get_window(limit, window)

    @abstractmethod
    def with_id(self, session_id: str) -> Self:
        """A new session object for ``session_id`` on this session's store, with its options
        (the caller closes it)."""

    async def fork(self, session_id: str, upto: ItemCursor | str | None = None) -> Self:
        """Copy this history into session ``session_id`` of the same store and return a
        session for it (see :meth:`agentmem.SessionABC.fork`).

        One statement on PostgreSQL (``INSERT ... SELECT``), one transaction on SQLite. The new
        session's row records the fork origin in its ``metadata_json`` column.
        """
        copied_to = await self.copy_to(session_id, upto)
        return self.with_id(copied_to)

    async def copy_to(self, session_id: str, upto: ItemCursor | str | None = None) -> str:
        """The write of :meth:`fork` alone: copy this history (up to ``upto``) into session
        ``session_id`` and record its origin; returns ``session_id``.

        Raises:
            ValueError: ``session_id`` holds items (nothing is written) or is this session's.
        """
        self._check_open()
        target = self._check_fork_target(session_id)
        cursor = validate_upto(upto)
        await self._ops.fork(target, None if cursor is None else cursor.count)
        return target

    async def fork_origin(self) -> ForkOrigin | None:
        """Where this session was forked from (read from its row); ``None`` if it was not."""
        self._check_open()
        return await self._ops.origin()

    async def add_items(self, items: list[SessionItem]) -> None:
        self._check_open()
        encoded = encode_items(items)
        if encoded:
            await self._ops.add(self._kept(encoded))

    async def add_encoded_items(self, items: list[EncodedItem]) -> None:
        """Append items already checked and encoded by :func:`agentmem.session.encode_items`."""
        self._check_open()
        if items:
            await self._ops.add(self._kept(items))

    def _kept(self, items: list[EncodedItem]) -> list[EncodedItem]:
        """With ``max_items``, only the newest that the history may keep."""
        most = self.lifecycle.max_items
        return items if most is None or len(items) <= most else items[-most:]

    async def info(self) -> SessionInfo | None:
        self._check_open()
        return await self._ops.info()

    async def _update_info(self, changes: dict[str, Any]) -> SessionInfo:
        return await self._ops.update_info(changes)

    async def _page(self, limit: int, before: int | None) -> ItemPage:
        return await self._ops.page(limit, before)

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


SQLSessionT = TypeVar("SQLSessionT", bound=SQLSessionBase)


class SQLSessionManagerABC(SessionManagerABC[SQLSessionT]):
    """A session manager of a SQL store: its sessions are :class:`SQLSessionBase`."""

    @property
    @abstractmethod
    def process_private(self) -> bool:
        """Whether the database lives in this process's memory: no other process sees it."""

    @abstractmethod
    def _make_session(self, session_id: str, options: SessionOptions) -> SQLSessionT:
        """A session of this store on the manager's connections (never closes them)."""


class Operations(ABC):
    """The operations of one session on one kind of connection, on stored JSON text; the
    session's ``lifecycle`` (expiry, retention, given info) applies to them."""

    @abstractmethod
    async def get(self, limit: int | None) -> list[str]: ...

    @abstractmethod
    async def add(self, items: list[EncodedItem]) -> None: ...

    @abstractmethod
    async def pop(self) -> str | None: ...

    @abstractmethod
    async def clear(self) -> None: ...

    @abstractmethod
    async def get_window(self, limit: int, window: WindowMode) -> list[str]: ...

    @abstractmethod
    async def fork(self, new_id: str, count: int | None) -> int: ...

    @abstractmethod
    async def origin(self) -> ForkOrigin | None: ...

    @abstractmethod
    async def info(self) -> SessionInfo | None: ...

    @abstractmethod
    async def update_info(self, changes: dict[str, Any]) -> SessionInfo: ...

    @abstractmethod
    async def page(self, limit: int, before: int | None) -> ItemPage: ...

    @abstractmethod
    async def replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool: ...
