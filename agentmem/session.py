"""The Session protocol and the base class every agentmem session builds on.

Core: it imports only agentmem's other core modules (items, records, errors); backends depend on
it, never the reverse.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from contextlib import asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import orjson

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
    "CloseHandle",
    "Closing",
    "EncodedItem",
    "Session",
    "SessionABC",
    "SessionClosedError",
    "SessionItem",
    "decode_item",
    "decode_stored",
    "encode_item",
    "encode_items",
    "validate_limit",
    "validate_session_id",
]

logger = logging.getLogger("agentmem")


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


class CloseHandle(Coroutine[Any, Any, None]):
    """What ``close()`` returns: awaiting it waits until the resources are released.

    ``close()`` marks the object closed at once, whether or not its result is awaited. Called
    inside a running event loop, the release runs as a task of that loop (awaiting the handle
    waits for it and raises its error; unawaited, an error is logged on the ``agentmem``
    logger). Called with no loop running, the release runs in the loop that runs the handle
    (``asyncio.run(session.close())``, ``runner.run(session.close())``), or, when the handle is
    dropped unawaited (the OpenAI Agents SDK's plain ``session.close()``), right then, in a loop
    of its own (an error is logged). The handle is a coroutine that never warns when left
    unawaited.
    """

    __slots__ = ("__weakref__", "_awaited", "_release", "_steps", "_task")

    def __init__(
        self,
        task: asyncio.Task[None] | None = None,
        release: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._task = task
        self._release = release
        self._awaited = False
        self._steps: Generator[Any, None, None] | None = None
        if task is not None:
            task.add_done_callback(self._report)

    def done(self) -> bool:
        """Whether the release is over."""
        return self._release is None and (self._task is None or self._task.done())

    def __await__(self) -> Generator[Any, None, None]:
        self._awaited = True
        if self._release is not None:  # started by the loop that runs this handle
            release, self._release = self._release, None
            self._task = asyncio.ensure_future(release())
        if self._task is not None:
            yield from self._task.__await__()

    def _started(self) -> Generator[Any, None, None]:
        if self._steps is None:
            self._steps = self.__await__()
        return self._steps

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, *args: Any) -> Any:
        return self._started().throw(*args)

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()

    def __del__(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                asyncio.run(release())
            except Exception as error:
                _log_close_error(error)
        else:
            loop.create_task(release()).add_done_callback(self._report)

    def _report(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so asyncio does not report it again
        if error is not None and not self._awaited:
            _log_close_error(error)


def _log_close_error(error: BaseException) -> None:
    logger.error("close() failed: %s: %s", type(error).__name__, error, exc_info=error)


class Closing(ABC):
    """Explicit lifecycle: ``close()`` (idempotent: ``_close`` runs once), ``closed`` and
    ``async with`` (which closes on the way out). Subclasses raise in ``_check_open`` once
    closed."""

    _closed: bool = False
    _closing: Callable[[], CloseHandle | None] | None = None

    @abstractmethod
    async def _close(self) -> None:
        """Release what this object owns."""

    @abstractmethod
    def _check_open(self) -> None:
        """Raise :class:`SessionClosedError` once ``close()`` has been called."""

    def close(self) -> CloseHandle:
        """Release what this object owns. Idempotent; works awaited or called plainly (the
        OpenAI Agents SDK's synchronous style): see :class:`CloseHandle`."""
        if self._closed:
            handle = self._closing() if self._closing is not None else None
            return handle if handle is not None else CloseHandle()
        self._closed = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            handle = CloseHandle(release=self._close)
            self._closing = weakref.ref(handle)  # a dropped handle releases at once
        else:
            handle = CloseHandle(loop.create_task(self._close()))
            self._closing = lambda: handle
        return handle

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
        session_settings: The OpenAI Agents SDK ``SessionSettings``; its ``limit`` is the
            default for ``get_items()`` when no limit is passed, as in the SDK's sessions. When
            none is given it is ``SessionSettings()`` if the SDK is imported, else ``None``.
        window_mode: The window of ``get_items`` calls with a limit that pass neither
            ``whole_pairs`` nor ``whole_turns``: ``"items"`` (exactly the newest N, the
            default), ``"pairs"`` or ``"turns"`` (see :mod:`agentmem.windows`).

    A stored item that is not valid JSON (written by another program) is skipped by reads, with
    a warning on the ``agentmem`` logger naming it; ``pop_item`` removes it and returns the next
    valid item, as the SDK's sessions do.
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

    async def replace_items(
        self,
        items: list[SessionItem],
        *,
        newest: int | None = None,
        if_newest: list[SessionItem] | None = None,
    ) -> bool:
        """Replace the history, or its newest items, with ``items``, atomically (one
        transaction, or one Lua script on Redis): readers see the old history or the new one,
        never a mix, and a failure changes nothing.

        This is what the OpenAI Agents SDK's ``OpenAIResponsesCompactionSession`` uses to swap
        a compacted summary in for the items it summarizes.

        Args:
            items: The new items (checked and encoded before anything is written).
            newest: Replace only the newest ``newest`` items (all of them if fewer are stored);
                ``None`` replaces the whole history. Defaults to ``len(if_newest)`` when
                ``if_newest`` is given.
            if_newest: Replace only if the newest items stored are equal to these, oldest
                first (a compare-and-swap); otherwise nothing changes.

        Returns:
            Whether the history was replaced (false only when ``if_newest`` did not match).

        Raises:
            TypeError, ValueError: a bad item or argument; nothing is written.
            SessionClosedError: the session was closed.
        """
        self._check_open()
        encoded = encode_items(items)
        if if_newest is not None:
            if not isinstance(if_newest, list):
                raise TypeError(f"if_newest must be a list, got {type(if_newest).__name__}")
            if newest is None:
                newest = len(if_newest)
            elif newest != len(if_newest):
                raise ValueError(f"newest={newest} but if_newest holds {len(if_newest)} items")
        if newest is not None:
            newest = validate_limit(newest)
        return await self._replace(encoded, newest, if_newest)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls._replace is SessionABC._replace:
            # No atomic replacement (a subclass older than it): the OpenAI Agents SDK's
            # compaction then clears and adds, as it does for a session without these hooks.
            cls._atomic_replace_items = None  # type: ignore[assignment]
            cls._get_compaction_snapshot = None  # type: ignore[assignment]
        elif cls._atomic_replace_items is None:  # under such a subclass, one that implements it
            cls._atomic_replace_items = SessionABC._atomic_replace_items
            cls._get_compaction_snapshot = SessionABC._get_compaction_snapshot

    async def _replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        """:meth:`replace_items` with checked arguments: a subclass that offers replacement
        implements it atomically (there is no generic atomic default).

        Raises:
            NotImplementedError: the subclass does not implement it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement replace_items(): define "
            f"{type(self).__name__}._replace(items, newest, expected) (atomic; see "
            f"SessionABC._replace)"
        )

    async def _atomic_replace_items(self, items: list[SessionItem]) -> bool:
        # The OpenAI Agents SDK's compaction looks this hook up for whole-history replacement.
        return await self.replace_items(items)

    async def _get_compaction_snapshot(
        self, limit: int, *, prune_prefix: Callable[[SessionItem], bool] | None = None
    ) -> Any:
        """The OpenAI Agents SDK's compaction hook: the newest ``limit`` items and a
        compare-and-swap replacement of a suffix of them (:meth:`replace_items`)."""
        if prune_prefix is not None:  # not offered: the SDK then replaces the whole history
            return None
        from agents.memory.session import _CompactionSnapshot

        fetched = await self.get_items(limit + 1, whole_turns=False)  # exactly the newest
        items = fetched[max(0, len(fetched) - limit) :] if limit else []

        async def replace_suffix(start: int, output: list[SessionItem]) -> bool:
            expected = items[start:]
            if not expected:
                return False
            return await self.replace_items(output, if_newest=expected)

        return _CompactionSnapshot(items, len(fetched) <= limit, replace_suffix)

    async def _read_valid(
        self, fetch: Callable[[int | None], Awaitable[list[Any]]], limit: int | None
    ) -> list[SessionItem]:
        """Decode ``fetch(limit)``'s stored rows; while invalid rows made fewer than ``limit``
        items, read a wider window (``limit`` counts valid items, as in the SDK)."""
        window = limit
        while True:
            rows = await fetch(window)
            items, skipped = decode_stored(rows, self.session_id)
            if not skipped or limit is None or window is None or len(rows) < window:
                return items
            if len(items) >= limit:
                return items[len(items) - limit :]
            window *= 2

    async def _pop_valid(self, pop: Callable[[], Awaitable[Any]]) -> SessionItem | None:
        """``pop()`` until it returns a valid item (invalid ones are removed) or nothing."""
        while True:
            row = await pop()
            if row is None:
                return None
            items, _ = decode_stored([row], self.session_id)
            if items:
                return items[0]

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

    def close(self) -> CloseHandle:
        """Release the connections this session owns. Idempotent.

        Works awaited (``await session.close()``) or called plainly (``session.close()``, as the
        OpenAI Agents SDK's sessions are): see :class:`CloseHandle`. A session built on a
        connection, engine, client or manager that it was given leaves that resource open: its
        owner closes it.
        """
        return super().close()

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


def decode_stored(rows: list[Any], session_id: str) -> tuple[list[SessionItem], int]:
    """Decode stored items, oldest first, skipping those that are not valid JSON.

    Returns:
        The items, and how many rows were skipped (each named in a warning on the ``agentmem``
        logger).
    """
    try:
        return [orjson.loads(row) for row in rows], 0  # the common case: one pass
    except orjson.JSONDecodeError:
        pass
    items: list[SessionItem] = []
    skipped = 0
    for position, row in enumerate(rows):
        try:
            items.append(orjson.loads(row))
        except orjson.JSONDecodeError as exc:
            skipped += 1
            logger.warning(
                "session %r: skipped stored item %d of %d read (oldest first): not valid JSON "
                "(%s): %.80r",
                session_id,
                position,
                len(rows),
                exc,
                row,
            )
    return items, skipped


def _coerce_session_settings(value: Any) -> Any:
    """Turn a ``dict`` into the SDK's ``SessionSettings`` when the SDK is installed; ``None``
    into ``SessionSettings()`` when the SDK is imported (as the SDK's sessions default)."""
    if value is None:
        if "agents" not in sys.modules:
            return None
        try:
            from agents.memory.session_settings import SessionSettings
        except ImportError:
            return None
        return SessionSettings()
    if not isinstance(value, dict):
        return value
    try:
        from agents.memory.session_settings import coerce_session_settings
    except ImportError:
        validate_limit(value.get("limit"))
        return dict(value)
    return coerce_session_settings(value)
