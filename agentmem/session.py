"""The Session protocol and the base class every agentmem session builds on.

Core: it imports only agentmem's other core modules (items, records, errors); backends depend on
it, never the reverse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from agentmem._lock import DEFAULT_LOCK_TIMEOUT, SessionLock, validate_lock_timeout
from agentmem.errors import SessionClosedError, SessionLockLost
from agentmem.forks import ForkOrigin, ItemCursor
from agentmem.items import (
    MAX_SESSION_ID_LENGTH,
    EncodedItem,
    SessionItem,
    decode_item,
    encode_item,
    encode_items,
    validate_limit,
    validate_session_id,
)
from agentmem.records import (
    UNSET,
    ItemPage,
    Lifecycle,
    SessionInfo,
    Unset,
    decode_position,
    validate_metadata,
    validate_title,
    validate_user_id,
)
from agentmem.windows import WindowMode, resolve_window_mode

__all__ = [
    "MAX_SESSION_ID_LENGTH",
    "Closing",
    "EncodedItem",
    "Session",
    "SessionABC",
    "SessionClosedError",
    "SessionItem",
    "decode_item",
    "encode_item",
    "encode_items",
    "validate_limit",
    "validate_session_id",
]


@runtime_checkable
class Session(Protocol):
    """The conversation-memory protocol, identical to the OpenAI Agents SDK's ``Session``.

    Every agentmem session satisfies it, so it can be passed to ``Runner.run(..., session=...)``.
    """

    session_id: str
    session_settings: Any

    async def get_items(self, limit: int | None = None) -> list[SessionItem]:
        """Return the history oldest first; with ``limit``, only the newest ``limit`` items."""
        ...

    async def add_items(self, items: list[SessionItem]) -> None:
        """Append ``items`` in order, all or nothing."""
        ...

    async def pop_item(self) -> SessionItem | None:
        """Remove and return the newest item, or ``None`` when the history is empty."""
        ...

    async def clear_session(self) -> None:
        """Remove every item of this session."""
        ...


class Closing(ABC):
    """Explicit lifecycle: ``close()`` (idempotent: ``_close`` runs once), ``closed`` and
    ``async with`` (which closes on the way out). Subclasses raise in ``_check_open`` once
    closed."""

    _closed: bool = False

    @abstractmethod
    async def _close(self) -> None:
        """Release what this object owns."""

    @abstractmethod
    def _check_open(self) -> None:
        """Raise :class:`SessionClosedError` once ``close()`` has been called."""

    async def close(self) -> None:
        """Release what this object owns. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._closed

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SessionABC(Closing):
    """Base class of agentmem's sessions: lifecycle (``close``, ``async with``) and settings.

    Subclasses implement the four history operations and ``_close``; they call
    ``self._check_open()`` first thing in each operation.

    Attributes:
        session_id: The conversation's id.
        session_settings: The OpenAI Agents SDK ``SessionSettings`` (or ``None``); its ``limit``
            is the default for ``get_items()`` when no limit is passed, as in the SDK's sessions.
        window_mode: The window of ``get_items`` calls with a limit that pass neither
            ``whole_pairs`` nor ``whole_turns``: ``"items"`` (exactly the newest N, the
            default), ``"pairs"`` or ``"turns"`` (see :mod:`agentmem.windows`).
    """

    session_id: str
    session_settings: Any = None
    window_mode: WindowMode = "items"
    lifecycle: Lifecycle = Lifecycle()
    _closed: bool = False

    def __init__(
        self,
        session_id: str,
        session_settings: Any = None,
        *,
        whole_pairs: bool = False,
        whole_turns: bool = False,
    ) -> None:
        self.session_id = validate_session_id(session_id)
        self.session_settings = _coerce_session_settings(session_settings)
        self.window_mode = resolve_window_mode(whole_pairs, whole_turns)
        self._closed = False

    @abstractmethod
    async def get_items(
        self,
        limit: int | None = None,
        *,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> list[SessionItem]:
        """Return the history oldest first.

        Args:
            limit: Return only the newest ``limit`` items (still oldest first). ``None`` means
                the ``session_settings`` limit if one is set, else everything.
            whole_pairs: With a limit, never split a tool call from its output or a reasoning
                item from the item after it: the window's start moves back (to older items)
                until none is split, so it holds at least the newest ``limit`` items.
            whole_turns: As ``whole_pairs``, and the window starts at a user message.
                Neither given: the session's ``window_mode`` (set by the constructor's
                ``whole_pairs``/``whole_turns``); one given: the flags alone decide. The rule
                is stated in :mod:`agentmem.windows`.

        Raises:
            ValueError: ``limit`` is negative.
            SessionClosedError: the session was closed.
        """

    @abstractmethod
    async def add_items(self, items: list[SessionItem]) -> None:
        """Append ``items`` to the history, in order, atomically.

        Raises:
            TypeError, ValueError: an item is not a JSON object; nothing is written.
            SessionClosedError: the session was closed.
        """

    @abstractmethod
    async def pop_item(self) -> SessionItem | None:
        """Remove and return the newest item; ``None`` when the history is empty."""

    @abstractmethod
    async def clear_session(self) -> None:
        """Remove every item of this session (other sessions are untouched)."""

    @abstractmethod
    async def _close(self) -> None:
        """Release what this session owns (never what it was handed)."""

    async def fork(self, session_id: str, upto: ItemCursor | str | None = None) -> Self:
        """Copy this history into a new session ``session_id`` on the same store, and return it.

        The copy is made by the store in one statement (SQL) or script (Redis); the new session
        records this session's id and the fork point (see :meth:`fork_origin`). Writing to
        either session afterwards never changes the other.

        Args:
            session_id: The new session's id: not stored yet, or stored without items.
            upto: Copy only the items before this cursor (``None``: all of them).

        Raises:
            ValueError: ``session_id`` already holds items (nothing is written), or is this
                session's own id.
            TypeError: a bad ``upto``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot fork")

    async def fork_origin(self) -> ForkOrigin | None:
        """Where this session was forked from; ``None`` if it was not made by :meth:`fork`."""
        raise NotImplementedError(f"{type(self).__name__} does not record forks")

    async def close(self) -> None:
        """Release the connections this session owns. Idempotent.

        A session built on a connection, engine, client or manager that it was given leaves that
        resource open: its owner closes it.
        """
        await super().close()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"{type(self).__name__} {self.session_id!r} is closed")

    def _resolve_window(self, whole_pairs: bool | None, whole_turns: bool | None) -> WindowMode:
        """The window mode of one ``get_items`` call (see :func:`resolve_window_mode`)."""
        return resolve_window_mode(whole_pairs, whole_turns, self.window_mode)

    def _check_fork_target(self, session_id: str) -> str:
        """``session_id`` if a fork of this session may be written there, else raise."""
        validate_session_id(session_id)
        if session_id == self.session_id:
            raise ValueError(f"cannot fork session {session_id!r} onto itself")
        return session_id

    @asynccontextmanager
    async def exclusive(
        self,
        timeout: float | timedelta = DEFAULT_LOCK_TIMEOUT,  # noqa: ASYNC109 (the API)
    ) -> AsyncIterator[None]:
        """Hold this session's lock for the ``async with`` block: one holder at a time, across
        tasks, threads, processes and machines sharing the store.

        Example:
            >>> async with session.exclusive(timeout=30):
            ...     await Runner.run(agent, "Hello", session=session)

        Waiters get the lock in arrival order within a process; across processes as the
        backend allows (see the README, "Safe turns"). The lock is not reentrant: a second
        ``exclusive()`` on the same session inside the block waits for the first.

        Args:
            timeout: Seconds (or a ``timedelta``) to wait for the lock.

        Raises:
            SessionLockTimeout: another holder kept the lock for ``timeout``.
            SessionLockLost: the lock was lost while held (Redis: expired or taken over);
                raised on leaving the block (and by writes under the lost lock).
            SessionClosedError: the session was closed.
        """
        self._check_open()
        lock = self._session_lock()
        await lock.acquire(validate_lock_timeout(timeout))
        try:
            yield
        except BaseException:
            await lock.release()
            raise
        if not await lock.release():
            raise SessionLockLost(
                f"the lock of session {self.session_id!r} was lost while the block ran"
            )

    def _session_lock(self) -> SessionLock:
        """A new hold on this session's lock, for one ``exclusive()`` block: the store's
        shared lock (each backend's own); process-local on a store private to a process."""
        return SessionLock((type(self).__name__, id(self), self.session_id))

    async def info(self) -> SessionInfo | None:
        """What the store knows of this session: owner, title, metadata, item count, times.

        Returns:
            ``None`` when nothing is stored (never written, cleared, deleted or expired).

        Raises:
            SessionClosedError: the session was closed.
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep session info")

    async def update_info(
        self,
        *,
        user_id: str | Unset | None = UNSET,
        title: str | Unset | None = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
    ) -> SessionInfo:
        """Change the given fields of this session's info (``None`` clears one); the others
        stay. A session with no items yet is stored with its info; an expired one starts
        afresh. The write slides the expiry like ``add_items``.

        Returns:
            The info as stored afterwards.

        Raises:
            TypeError, ValueError: a bad field; nothing is written.
            SessionClosedError: the session was closed.
        """
        self._check_open()
        changes: dict[str, Any] = {}
        if not isinstance(user_id, Unset):
            changes["user_id"] = validate_user_id(user_id)
        if not isinstance(title, Unset):
            changes["title"] = validate_title(title)
        if not isinstance(metadata, Unset):
            changes["metadata"] = validate_metadata(metadata)
        return await self._update_info(changes)

    async def _update_info(self, changes: dict[str, Any]) -> SessionInfo:
        """Store ``changes`` (checked: ``user_id``, ``title``, ``metadata``)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep session info")

    async def get_page(self, limit: int = 50, before: str | None = None) -> ItemPage:
        """One page of the history, for scrolling back through it without loading it whole.

        Args:
            limit: The most items the page holds (at least 1).
            before: ``ItemPage.before`` of the newer page; ``None``: the newest page. Cursors
                stay valid while items are appended.

        Returns:
            The items just older than ``before``, oldest first.

        Raises:
            TypeError, ValueError: a bad limit or cursor.
            SessionClosedError: the session was closed.
        """
        self._check_open()
        size = validate_limit(limit)
        if size is None or size < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        return await self._page(size, None if before is None else decode_position(before))

    async def _page(self, limit: int, before: int | None) -> ItemPage:
        """The ``limit`` items before position ``before`` (``None``: the newest)."""
        raise NotImplementedError(f"{type(self).__name__} does not page its history")

    def _resolve_limit(self, limit: int | None) -> int | None:
        """The effective limit: the argument, else ``session_settings.limit``; validated."""
        if limit is None:
            settings = self.session_settings
            limit = (
                settings.get("limit")
                if isinstance(settings, dict)
                else getattr(settings, "limit", None)
            )
        return validate_limit(limit)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(session_id={self.session_id!r})"


def _coerce_session_settings(value: Any) -> Any:
    """Turn a ``dict`` into the SDK's ``SessionSettings`` when the SDK is installed."""
    if value is None or not isinstance(value, dict):
        return value
    try:
        from agents.memory.session_settings import coerce_session_settings
    except ImportError:
        validate_limit(value.get("limit"))
        return dict(value)
    return coerce_session_settings(value)
