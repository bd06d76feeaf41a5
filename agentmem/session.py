"""The Session protocol, the base class every agentmem session builds on, and shared validation.

This module imports nothing else of agentmem: backends depend on it, never the reverse.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, TypeAlias, runtime_checkable

import orjson

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

SessionItem: TypeAlias = Any
"""One history item: a JSON object, such as an OpenAI Agents SDK ``TResponseInputItem``."""

MAX_SESSION_ID_LENGTH = 255
"""Session ids are 1 to 255 characters: it is the width of the SQL key column."""


class SessionClosedError(RuntimeError):
    """Raised when a session (or manager) is used after ``close()``."""


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
    """

    session_id: str
    session_settings: Any = None
    _closed: bool = False

    def __init__(self, session_id: str, session_settings: Any = None) -> None:
        self.session_id = validate_session_id(session_id)
        self.session_settings = _coerce_session_settings(session_settings)
        self._closed = False

    @abstractmethod
    async def get_items(self, limit: int | None = None) -> list[SessionItem]:
        """Return the history oldest first.

        Args:
            limit: Return only the newest ``limit`` items (still oldest first). ``None`` means
                the ``session_settings`` limit if one is set, else everything.

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

    async def close(self) -> None:
        """Release the connections this session owns. Idempotent.

        A session built on a connection, engine, client or manager that it was given leaves that
        resource open: its owner closes it.
        """
        await super().close()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"{type(self).__name__} {self.session_id!r} is closed")

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


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is a usable id, else raise.

    Any string of 1 to 255 characters works and is stored exactly, except NUL characters and
    lone surrogates, which neither PostgreSQL nor UTF-8 can store.

    Raises:
        TypeError: not a ``str``.
        ValueError: empty, longer than 255 characters, or holding NUL or a lone surrogate.
    """
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
    if not session_id:
        raise ValueError("session_id must not be empty")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise ValueError(
            f"session_id is {len(session_id)} characters long; "
            f"the maximum is {MAX_SESSION_ID_LENGTH}"
        )
    if "\x00" in session_id:
        raise ValueError("session_id must not contain NUL characters")
    try:
        session_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("session_id must be valid Unicode (it holds a lone surrogate)") from None
    return session_id


def validate_limit(limit: object) -> int | None:
    """Return ``limit`` if it is ``None`` or a non-negative ``int``, else raise.

    Raises:
        TypeError: not an ``int`` (``bool`` is refused too).
        ValueError: negative.
    """
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit


class EncodedItem(NamedTuple):
    """An item as stored: its JSON text plus the fields extracted for querying."""

    json: str
    role: str | None
    item_type: str | None


_INDEXED_FIELD_MAX = 64
_ENCODE_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_new_encoded = tuple.__new__  # builds an EncodedItem without NamedTuple's argument handling


def _reject_value(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _find_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_find_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_find_non_finite(v) for v in value)
    return False


def encode_item(item: object, index: int = 0) -> EncodedItem:
    """Validate and serialize one item; see :func:`encode_items`."""
    if not isinstance(item, dict):
        raise TypeError(f"item {index} is a {type(item).__name__}, not a dict (a JSON object)")
    try:
        data = orjson.dumps(item, default=_reject_value, option=_ENCODE_OPTIONS)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise TypeError(f"item {index} is not valid JSON: {exc}") from None
    # orjson writes NaN and Infinity as null; JSON has no such numbers, so refuse them instead.
    if b"null" in data and _find_non_finite(item):
        raise ValueError(f"item {index} holds NaN or Infinity, which JSON cannot represent")
    role = item.get("role")
    item_type = item.get("type")
    return _new_encoded(
        EncodedItem,
        (
            data.decode(),
            role if type(role) is str and len(role) <= _INDEXED_FIELD_MAX else None,
            item_type if type(item_type) is str and len(item_type) <= _INDEXED_FIELD_MAX else None,
        ),
    )


def encode_items(items: Iterable[object]) -> list[EncodedItem]:
    """Validate and serialize a batch, before anything is written.

    Items must be dicts of JSON values: ``str`` keys; ``str``, ``int`` (64-bit), ``float``
    (finite), ``bool``, ``None``, lists and dicts as values, nested at most 254 levels deep.
    Tuples are stored as JSON arrays and come back as lists.

    Raises:
        TypeError: ``items`` is not a list, or an item is not a dict of JSON values
            (sets, bytes, datetimes, objects, non-``str`` keys, integers beyond 64 bits).
        ValueError: an item holds NaN or Infinity.
        The message names the index of the offending item in the batch.
    """
    if not isinstance(items, list | tuple):
        raise TypeError(f"items must be a list of dicts, got {type(items).__name__}")
    return [encode_item(item, index) for index, item in enumerate(items)]


def decode_item(data: str | bytes) -> SessionItem:
    """Deserialize one stored item."""
    return orjson.loads(data)
