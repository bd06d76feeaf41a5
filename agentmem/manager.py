"""The session-manager interface every backend implements, and the records it returns.

A *store* is where conversations are kept: one SQL database (with a table prefix) or one Redis
keyspace (with key prefixes). A manager hands out sessions of one store that share its
connections, and owns what concerns the store as a whole: listing, inspecting, deleting, and
moving whole conversations with their timestamps (what ``agentmem sessions export/import/copy``
are built on).

Core: it imports only agentmem's other core modules (session, records, items, errors).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import weakref
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson

from agentmem.forks import ForkOrigin, ItemCursor, validate_upto
from agentmem.records import (
    TTL,
    UNSET,
    Lifecycle,
    SessionInfo,
    SessionPage,
    Unset,
    utc,
    validate_max_items,
    validate_metadata,
    validate_title,
    validate_ttl,
    validate_user_id,
)
from agentmem.session import (
    CloseHandle,
    Closing,
    EncodedItem,
    SessionABC,
    SessionClosedError,
    SessionItem,
    encode_items,
    validate_limit,
    validate_session_id,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Conversation",
    "SessionInfo",
    "SessionManagerABC",
    "SessionOptions",
    "SessionPage",
    "decode_cursor",
    "encode_cursor",
    "page_of",
    "page_request",
    "utc",
    "validate_page_size",
]

S = TypeVar("S", bound=SessionABC)

DEFAULT_PAGE_SIZE = 50


@dataclass
class Conversation:
    """A whole stored conversation with its timestamps and lifecycle: the unit of export,
    import, copy and key rotation.

    A copy is the same conversation in another place: it carries the owner, title, metadata,
    the absolute expiry and the fork origin (which names the parent by id; the parent may not
    be in the destination store). A conversation without an expiry gets the writing manager's
    ``default_ttl``, as a new session of that manager does.

    Attributes:
        session_id: The conversation's id.
        items: Its history, oldest first.
        created_at: When it was first written (UTC); ``None``: when it is written.
        updated_at: When it was last written (UTC); ``None``: ``created_at``.
        user_id: Its owner, if any.
        title: Its title, if any.
        metadata: Its metadata (a JSON object; ``{}``: none).
        expires_at: When it expires (UTC); ``None``: the writing manager's ``default_ttl``.
        fork_origin: Where it was forked from, if it was.
    """

    session_id: str
    items: list[SessionItem] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    user_id: str | None = field(default=None, kw_only=True)
    title: str | None = field(default=None, kw_only=True)
    metadata: dict[str, Any] = field(default_factory=dict, kw_only=True)
    expires_at: datetime | None = field(default=None, kw_only=True)
    fork_origin: ForkOrigin | None = field(default=None, kw_only=True)

    @classmethod
    def of(
        cls, info: SessionInfo, items: list[SessionItem], fork_origin: ForkOrigin | None = None
    ) -> Conversation:
        """The conversation of a stored session: its ``info`` (times and lifecycle), its
        ``items`` and where it was forked from."""
        return cls(
            info.session_id,
            items,
            info.created_at,
            info.updated_at,
            user_id=info.user_id,
            title=info.title,
            metadata=info.metadata,
            expires_at=info.expires_at,
            fork_origin=fork_origin,
        )

    def validated(self) -> Conversation:
        """This conversation with its id, items and lifecycle checked and its times in UTC.

        Raises:
            TypeError, ValueError: a bad id, item (the message names the item's index) or
                lifecycle field.
        """
        validate_session_id(self.session_id)
        encode_items(self.items)
        return self._checked()

    def prepared(self) -> tuple[Conversation, list[EncodedItem], datetime, datetime]:
        """What a store writes of this conversation: it with its lifecycle fields checked,
        its items checked and encoded once, and its ``stamped()`` times.

        Raises:
            TypeError, ValueError: a bad id, item (the message names the item's index) or
                lifecycle field.
        """
        validate_session_id(self.session_id)
        checked = self._checked()
        return checked, encode_items(self.items), *self.stamped()

    def _checked(self) -> Conversation:
        origin = self.fork_origin
        if origin is not None:
            if not isinstance(origin, ForkOrigin) or not isinstance(origin.fork_point, ItemCursor):
                raise TypeError(
                    "fork_origin must be a ForkOrigin (its fork_point an ItemCursor) or None, "
                    f"got {origin!r}"
                )
            validate_session_id(origin.parent_id)
        return replace(
            self,
            created_at=None if self.created_at is None else utc(self.created_at),
            updated_at=None if self.updated_at is None else utc(self.updated_at),
            user_id=validate_user_id(self.user_id),
            title=validate_title(self.title),
            metadata=validate_metadata(self.metadata) or {},
            expires_at=None if self.expires_at is None else utc(self.expires_at),
        )

    @property
    def metadata_json(self) -> str | None:
        """``metadata`` as JSON text (``None`` when it is empty)."""
        return orjson.dumps(self.metadata).decode() if self.metadata else None

    def stamped(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """``(created_at, updated_at)`` with the defaults filled in, in UTC."""
        created = utc(self.created_at) if self.created_at is not None else (now or _now())
        updated = utc(self.updated_at) if self.updated_at is not None else created
        return created, updated


def _now() -> datetime:
    return datetime.now(UTC)


def encode_cursor(info: SessionInfo) -> str:
    """An opaque cursor that resumes a listing after ``info``."""
    raw = orjson.dumps([utc(info.updated_at).isoformat(), info.session_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object) -> tuple[datetime, str]:
    """``(updated_at, session_id)`` of the session a cursor resumes after.

    Raises:
        TypeError: not a ``str``.
        ValueError: not a cursor of :func:`encode_cursor`.
    """
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str or None, got {type(cursor).__name__}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, session_id = orjson.loads(raw)
        return utc(datetime.fromisoformat(stamp)), validate_session_id(session_id)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise ValueError(f"not a session listing cursor: {cursor!r}") from None


@dataclass(frozen=True)
class SessionOptions:
    """The checked options of a session a manager hands out (see
    :meth:`SessionManagerABC.get_session`).

    Attributes:
        session_settings: OpenAI Agents SDK ``SessionSettings`` (or a dict of them), or ``None``.
        lifecycle: Its lifecycle, the manager's defaults filled in.
        whole_pairs: Whole-pair windows by default.
        whole_turns: Whole-turn windows by default.
    """

    session_settings: Any
    lifecycle: Lifecycle
    whole_pairs: bool
    whole_turns: bool

    def keywords(self) -> dict[str, Any]:
        """These options as the keywords of ``get_session`` (for a manager that hands out
        sessions of another manager)."""
        life = self.lifecycle
        return {
            "session_settings": self.session_settings,
            "whole_pairs": self.whole_pairs,
            "whole_turns": self.whole_turns,
            "user_id": life.user_id,
            "title": life.title,
            "metadata": life.metadata,
            "ttl": life.ttl,
            "max_items": life.max_items,
        }


class SessionManagerABC(Closing, Generic[S]):
    """Base class of agentmem's session managers: one store, shared connections.

    Subclasses implement the store's operations and ``_release``; they call ``self._check_open()``
    first thing in each public method.
    """

    _sessions: weakref.WeakSet[S] | None = None
    default_ttl: float | None = None
    """Seconds of expiry of the sessions it hands out (``None``: they never expire)."""
    default_max_items: int | None = None
    """The longest history of the sessions it hands out (``None``: unbounded)."""
    touch_on_read: bool = False
    """Whether reads of its sessions slide their expiry too."""

    def _set_lifecycle_defaults(
        self, default_ttl: object, default_max_items: object, touch_on_read: object
    ) -> None:
        """Check and keep the lifecycle defaults of the sessions this manager hands out."""
        lifecycle = Lifecycle.checked(
            ttl=validate_ttl(default_ttl, "default_ttl"),
            max_items=default_max_items,
            touch_on_read=touch_on_read,
        )
        self.default_ttl = lifecycle.ttl
        self.default_max_items = lifecycle.max_items
        self.touch_on_read = lifecycle.touch_on_read

    def _lifecycle(
        self,
        *,
        ttl: TTL | Unset | None,
        max_items: int | Unset | None,
        user_id: str | None,
        title: str | None,
        metadata: dict[str, Any] | None,
    ) -> Lifecycle:
        """A session's lifecycle: the given options, else this manager's defaults."""
        return Lifecycle.checked(
            ttl=self.default_ttl if isinstance(ttl, Unset) else ttl,
            max_items=self.default_max_items
            if isinstance(max_items, Unset)
            else validate_max_items(max_items),
            touch_on_read=self.touch_on_read,
            user_id=user_id,
            title=title,
            metadata=metadata,
        )

    def _handed_out(self, session: S) -> S:
        """Remember ``session`` (weakly) so that ``close()`` closes it too."""
        if self._sessions is None:
            self._sessions = weakref.WeakSet()
        self._sessions.add(session)
        return session

    def get_session(
        self,
        session_id: str,
        *,
        session_settings: Any = None,
        whole_pairs: bool = False,
        whole_turns: bool = False,
        user_id: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        ttl: TTL | Unset | None = UNSET,
        max_items: int | Unset | None = UNSET,
    ) -> S:
        """A session of this store on the manager's connections (never closes them).

        Args:
            session_id: The conversation's id.
            user_id: Its owner, stored with its first write (or filled in if absent).
            title: Its title, likewise.
            metadata: Its metadata (a JSON object), likewise.
            ttl: Its expiry (seconds or ``timedelta``), slid by every write; defaults to the
                manager's ``default_ttl``; ``None`` never expires.
            max_items: The longest history it keeps (a write beyond drops the oldest);
                defaults to the manager's ``default_max_items``.
            session_settings: OpenAI Agents SDK ``SessionSettings`` (or a dict of them).
            whole_pairs: Make whole-pair windows the session's default for ``get_items``
                calls with a limit (see :mod:`agentmem.windows`).
            whole_turns: Make whole-turn windows that default.

        Raises:
            TypeError, ValueError: a bad option.
            SessionClosedError: the manager was closed.
        """
        self._check_open()
        lifecycle = self._lifecycle(
            ttl=ttl, max_items=max_items, user_id=user_id, title=title, metadata=metadata
        )
        options = SessionOptions(session_settings, lifecycle, whole_pairs, whole_turns)
        return self._handed_out(self._make_session(session_id, options))

    def _make_session(self, session_id: str, options: SessionOptions) -> S:
        """A new session of ``session_id`` with checked options (what ``get_session`` hands
        out); a subclass implements it, or ``get_session`` itself."""
        raise NotImplementedError(f"{type(self).__name__} does not make sessions")

    async def fork_session(
        self, session_id: str, new_id: str, upto: ItemCursor | str | None = None
    ) -> ForkOrigin:
        """Fork session ``session_id`` into ``new_id`` (see :meth:`SessionABC.fork`).

        Returns:
            The origin recorded in the new session.

        Raises:
            LookupError: ``session_id`` is not stored.
            ValueError: ``new_id`` already holds items (nothing is written).
        """
        self._check_open()
        cursor = validate_upto(upto)
        if await self.session_info(session_id) is None:
            raise LookupError(f"no session {session_id!r}")
        source = self.get_session(session_id)
        try:
            forked = await source.fork(new_id, cursor)
            try:
                origin = await forked.fork_origin()
            finally:
                await forked.close()
        finally:
            await source.close()
        assert origin is not None
        return origin

    @abstractmethod
    async def list_sessions(self) -> list[str]:
        """The ids of every stored session, sorted."""

    @abstractmethod
    async def delete_session(self, session_id: str) -> bool:
        """Delete one session and its history; whether it existed."""

    @abstractmethod
    async def session_info(self, session_id: str) -> SessionInfo | None:
        """What the store knows of one session; ``None`` if it is not stored."""

    @abstractmethod
    async def find_sessions(
        self,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of the live (unexpired) sessions, most recently updated first (ties by id),
        keyset-paged: page 1,000 costs what page 1 does.

        Args:
            user_id: Only this owner's sessions.
            metadata: Only sessions whose metadata holds these top-level keys with these
                values (``{"topic": "billing"}``); values are str, numbers, bools or None.
            limit: The page size (at least 1).
            cursor: ``next_cursor`` of the previous page (with the same filters); ``None`` for
                the first page.

        Raises:
            TypeError, ValueError: a bad filter, limit or cursor.
        """

    async def count_sessions(self, user_id: str | None = None) -> int:
        """How many live sessions the store holds (only ``user_id``'s, if given)."""
        raise NotImplementedError(f"{type(self).__name__} does not count sessions")

    async def purge_expired(
        self, batch_size: int = 1000, *, on_batch: Callable[[int], None] | None = None
    ) -> int:
        """Delete the expired sessions with their histories, ``batch_size`` at a time, each
        batch its own short transaction; safe to run from several processes at once.

        Args:
            batch_size: Sessions per batch (at least 1).
            on_batch: Called with the number deleted after each batch (a progress bar).

        Returns:
            How many sessions were deleted.

        Raises:
            TypeError, ValueError: a bad batch size.
        """
        self._check_open()
        size = validate_page_size(batch_size)
        total = 0
        while True:
            deleted = await self._purge_batch(size)
            total += deleted
            if on_batch is not None and deleted:
                on_batch(deleted)
            if deleted < size:
                return total

    async def _purge_batch(self, batch_size: int) -> int:
        """Delete up to ``batch_size`` expired sessions; how many went."""
        raise NotImplementedError(f"{type(self).__name__} does not purge")

    @abstractmethod
    async def existing_sessions(self, session_ids: Iterable[str]) -> set[str]:
        """Those of ``session_ids`` that are stored."""

    @abstractmethod
    async def read_conversation(self, session_id: str) -> Conversation | None:
        """One whole conversation, read at one point in time; ``None`` if it is not stored."""

    @abstractmethod
    async def write_conversation(self, conversation: Conversation) -> None:
        """Store ``conversation`` whole with its timestamps and lifecycle (owner, title,
        metadata, expiry, fork origin: see :class:`Conversation`), replacing any session of
        the same id, atomically (all of it or nothing).

        Raises:
            TypeError, ValueError: a bad id, item or lifecycle field; nothing is written.
        """

    async def iter_sessions(self, *, page_size: int = 500) -> AsyncIterator[SessionInfo]:
        """Every stored session, most recently updated first, one page in memory at a time."""
        cursor: str | None = None
        while True:
            page = await self.find_sessions(limit=page_size, cursor=cursor)
            for info in page.items:
                yield info
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    @abstractmethod
    async def _release(self) -> None:
        """Release what this manager owns (never what it was handed)."""

    async def _close(self) -> None:
        errors: list[BaseException] = []
        for session in list(self._sessions or ()):
            try:
                await session.close()
            except Exception as exc:  # close the others, then report the first
                errors.append(exc)
        await self._release()
        if errors:
            raise errors[0]

    def close(self) -> CloseHandle:
        """Close the sessions this manager handed out, then release the connections it owns.
        Idempotent; works awaited or called plainly (see :class:`agentmem.session.CloseHandle`):
        the manager and its sessions are closed at once either way."""
        if not self._closed and _loop_running():
            # Each session's release starts now as a task; _close awaits it (and its error).
            for session in list(self._sessions or ()):
                session.close()
        return super().close()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"{type(self).__name__} is closed")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def page_of(infos: list[SessionInfo], size: int) -> SessionPage:
    """The page of ``size`` from ``infos``, fetched with one more row than the page holds:
    that row's presence says whether a next page exists."""
    if len(infos) <= size:
        return SessionPage(infos, None)
    page = infos[:size]
    return SessionPage(page, encode_cursor(page[-1]))


def page_request(limit: object, cursor: object) -> tuple[int, tuple[datetime, str] | None]:
    """The checked arguments of ``find_sessions``: the page size, and the ``(updated_at,
    session_id)`` the page starts after (``None``: the first page).

    Raises:
        TypeError, ValueError: a bad limit or cursor.
    """
    size = validate_page_size(limit)
    return size, None if cursor is None else decode_cursor(cursor)


def validate_page_size(limit: object) -> int:
    """Return ``limit`` if it is a usable page size (an ``int`` of at least 1).

    Raises:
        TypeError: not an ``int``.
        ValueError: below 1.
    """
    value = validate_limit(limit)
    if value is None or value < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    return value
